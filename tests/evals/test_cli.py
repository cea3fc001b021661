"""The evaluation CLI path: a HybridSAE saved by SAELens is loaded, evaluated and written as JSON."""

import json

import torch

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.evals.cli import EvaluateSAEConfig, evaluate_from_config

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
