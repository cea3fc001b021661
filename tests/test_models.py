"""The embedded default model is real and trained; hub names stay real and fail clearly offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from sae_lens import HookedSAETransformer

from hybrid_sae_ext.models import (
    CONFIG_FILE,
    CORPUS_DIR,
    TINY_LM_DIR,
    TINY_LM_NAME,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
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
    written = json.loads((tmp_path / "copy" / CONFIG_FILE).read_text())["hooked_transformer_config"]
    assert "tokenizer_name" not in written and "trust_remote_code" not in written
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


def _evil_tokenizer_folder(folder: Path, marker: Path) -> Path:
    """The embedded tokenizer with an ``auto_map`` naming ``evil.py``, which writes ``marker`` when imported
    and otherwise is a working tokenizer (so the old loader ran it and loaded the model without complaint)."""
    if not folder.exists():
        shutil.copytree(TINY_LM_DIR / TOKENIZER_DIR, folder)
    (folder / "evil.py").write_text(
        "from pathlib import Path\n\nfrom transformers import PreTrainedTokenizerFast\n\n"
        f"Path({str(marker)!r}).write_text('pwned')\n\n\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    config_file.write_text(json.dumps(config))
    return folder


def _model_folder(folder: Path, hooked_transformer_config: dict) -> Path:
    """A model folder with the embedded weights (symlinked) and the given config; no tokenizer/ subfolder."""
    folder.mkdir(parents=True)
    (folder / WEIGHTS_FILE).symlink_to(TINY_LM_DIR / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps({"hooked_transformer_config": hooked_transformer_config}))
    return folder


def test_config_naming_a_remote_code_tokenizer_is_refused_and_runs_no_code(tmp_path) -> None:
    marker = tmp_path / "marker"
    evil = _evil_tokenizer_folder(tmp_path / "evil-tokenizer", marker)
    embedded = json.loads((TINY_LM_DIR / CONFIG_FILE).read_text())["hooked_transformer_config"]
    folder = _model_folder(tmp_path / "model", {**embedded, "tokenizer_name": str(evil), "trust_remote_code": True})
    with pytest.raises(ValueError) as err:
        load_model(str(folder))
    message = str(err.value)
    assert "\n" not in message and str(folder / CONFIG_FILE) in message
    assert "not allowed: tokenizer_name, trust_remote_code (" in message and "allowed: " in message
    assert not marker.exists()


def test_unknown_config_key_is_refused(tmp_path) -> None:
    embedded = json.loads((TINY_LM_DIR / CONFIG_FILE).read_text())["hooked_transformer_config"]
    folder = _model_folder(tmp_path / "model", {**embedded, "n_devices": 2})
    with pytest.raises(ValueError, match="not allowed: n_devices "):
        load_model(str(folder))


def test_tokenizer_subfolder_naming_custom_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "marker"
    folder = _model_folder(tmp_path / "model", {})
    shutil.copy(TINY_LM_DIR / CONFIG_FILE, folder / CONFIG_FILE)
    _evil_tokenizer_folder(folder / TOKENIZER_DIR, marker)
    with pytest.raises(ValueError, match=r"tokenizer_config.json: 'auto_map' names custom tokenizer code") as err:
        load_model(str(folder))
    assert "\n" not in str(err.value)
    assert not marker.exists()
