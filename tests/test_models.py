"""The embedded default model is real and trained; hub names stay real and fail clearly offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
from sae_lens import HookedSAETransformer

from hybrid_sae_ext.models import (
    CONFIG_FILE,
    CORPUS_DIR,
    TINY_LM_DIR,
    TINY_LM_NAME,
    ModelUnavailableError,
    load_model,
    save_model_folder,
)


def test_embedded_model_beats_the_unigram_baseline_on_held_out_text() -> None:
    metrics = json.loads((TINY_LM_DIR / CONFIG_FILE).read_text())["metrics"]
    model = load_model(TINY_LM_NAME)
    texts = datasets.load_dataset(str(CORPUS_DIR), split="validation")["text"][:16]
    rows = [model.to_tokens(text)[:, : model.cfg.n_ctx] for text in texts]  # unpadded, one document each
    assert all(row[0, 0] == model.tokenizer.bos_token_id for row in rows)
    total = sum(float(model(row, return_type="loss")) * (row.shape[1] - 1) for row in rows)
    loss = total / sum(row.shape[1] - 1 for row in rows)
    assert loss < metrics["unigram_validation_loss"] - 1.0
    assert metrics["validation_loss"] < metrics["unigram_validation_loss"] - 1.0


def test_local_folder_round_trip_and_sae_transformer_class(tmp_path) -> None:
    model = load_model(TINY_LM_NAME)
    save_model_folder(model, tmp_path / "copy")
    copy = load_model(str(tmp_path / "copy"), model_class=HookedSAETransformer)
    assert isinstance(copy, HookedSAETransformer)
    tokens = model.to_tokens("def read(path): return open(path).read()")
    assert float(copy(tokens, return_type="loss")) == pytest.approx(float(model(tokens, return_type="loss")))


def test_hub_model_offline_fails_naming_the_embedded_default() -> None:
    code = (
        "from hybrid_sae_ext.models import load_model, ModelUnavailableError\n"
        "try:\n    load_model('gpt2')\nexcept ModelUnavailableError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "could not load model 'gpt2'" in out.stdout
    assert TINY_LM_NAME in out.stdout and "save_model_folder" in out.stdout


def test_missing_local_folder_is_not_silently_replaced(tmp_path) -> None:
    with pytest.raises(ModelUnavailableError, match="could not load model"):
        load_model(str(tmp_path / "no-such-model"))


def test_pretrained_sae_offline_fails_clearly() -> None:
    code = (
        "from hybrid_sae_ext.models import load_pretrained_sae, ModelUnavailableError\n"
        "try:\n    load_pretrained_sae('gpt2-small-res-jb', 'blocks.6.hook_resid_pre')\n"
        "except ModelUnavailableError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "could not download SAE 'blocks.6.hook_resid_pre' of release 'gpt2-small-res-jb'" in out.stdout, out.stderr[-2000:]
    assert "SAE.load_from_disk" in out.stdout
