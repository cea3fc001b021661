"""The evaluation CLI path: a HybridSAE saved by SAELens is loaded, evaluated and written as JSON."""

import json
import shutil

import pytest
import torch

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.evals.cli import EvaluateSAEConfig, evaluate_from_config
from hybrid_sae_ext.io import write_json_atomic
from hybrid_sae_ext.models import ModelUnavailableError, save_model_folder

from .conftest import HOOK, MODEL_NAME


def test_evaluate_saved_hybrid_sae(tmp_path) -> None:
    torch.manual_seed(0)
    sae = HybridSAE(d_model=128, n_features=256, k_sparse=8)
    sae.cfg.metadata.hook_name = HOOK
    sae.save_model(tmp_path / "sae")
    cfg = EvaluateSAEConfig(
        sae_path=str(tmp_path / "sae"), model_name=MODEL_NAME, context_size=32, batch_size=2, n_batches=2
    )
    result = evaluate_from_config(cfg)
    assert (result.hook_name, result.n_sequences, result.context_size) == (HOOK, 4, 32)
    written = json.loads((tmp_path / "sae" / "splice_eval.json").read_text())
    assert written["config"]["sae_path"] == cfg.sae_path
    assert written["ce_loss_recovered"] == result.ce_loss_recovered
    assert written["l0_mean"] <= 8 and len(written["feature_density"]) == 256


def test_evaluate_uses_the_model_the_sae_names(tmp_path, model) -> None:
    """The SAE's ``metadata.model_name`` is the model evaluated on (a missing one is an error naming it), never
    silently the embedded default; ``--model_name`` given explicitly overrides it."""
    torch.manual_seed(0)
    sae = HybridSAE(d_model=128, n_features=64, k_sparse=4)
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = str(save_model_folder(model, tmp_path / "its-model"))
    sae.save_model(tmp_path / "sae")
    settings = dict(sae_path=str(tmp_path / "sae"), context_size=16, batch_size=2, n_batches=1)
    evaluate_from_config(EvaluateSAEConfig(**settings))
    assert json.loads((tmp_path / "sae" / "splice_eval.json").read_text())["model_name"] == str(tmp_path / "its-model")
    shutil.rmtree(tmp_path / "its-model")
    with pytest.raises(ModelUnavailableError, match="its-model"):
        evaluate_from_config(EvaluateSAEConfig(**settings))
    evaluate_from_config(EvaluateSAEConfig(**settings, model_name=MODEL_NAME))
    assert json.loads((tmp_path / "sae" / "splice_eval.json").read_text())["model_name"] == MODEL_NAME


def test_json_output_is_strict_even_for_a_nan_metric(tmp_path) -> None:
    """``jq`` and browsers reject bare ``NaN``: a non-finite number is written as null."""
    write_json_atomic(tmp_path / "out.json", {"fvu": float("nan"), "kl": [1.0, float("inf")], "l0": 3})

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    assert json.loads((tmp_path / "out.json").read_text(), parse_constant=refuse) == {"fvu": None, "kl": [1.0, None], "l0": 3}
