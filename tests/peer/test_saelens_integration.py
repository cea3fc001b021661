"""Every trainable registered architecture (``hybrid`` included) through SAELens' own machinery on the embedded
model: its training runner end to end, ``HookedSAETransformer`` splicing with and without the error term,
and ``run_evals``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE, HookedSAETransformer, LanguageModelSAERunnerConfig, LoggingConfig, registry
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore

from hybrid_sae_ext.models import CORPUS_DIR, TINY_LM_NAME
from hybrid_sae_ext.training.saelens_runner import make_saelens_runner
from tests.peer.conftest import HOOK, K, TRAINABLE, inference_sae, training_config

STEPS, BATCH, CONTEXT = 3, 32, 16
NO_CODE_HOOK = {"matching_pursuit"}
"""SAELens' matching-pursuit ``encode`` runs no ``hook_sae_acts_post`` (its greedy loop builds the codes)."""
RUNS = [(a, {}) for a in TRAINABLE] + [("hybrid", {"use_sparse_activations": True})]


@pytest.mark.parametrize(("architecture", "fields"), RUNS, ids=[a + ("-sparse" if f else "") for a, f in RUNS])
def test_saelens_runner_trains_and_saves_every_architecture(
    architecture: str, fields: dict[str, Any], tmp_path: Path, acts: torch.Tensor
) -> None:
    """A few steps of SAELens' ``LanguageModelSAETrainingRunner`` (its ``SAETrainer``, dead-latent stats, the
    scaling-factor estimate and fold, the final inference save) and a reload of what it wrote."""
    cfg = LanguageModelSAERunnerConfig(
        sae=training_config(architecture, normalize_activations="expected_average_only_in", **fields),
        model_name=TINY_LM_NAME, hook_name=HOOK, dataset_path=str(CORPUS_DIR), is_dataset_tokenized=False,
        streaming=False, context_size=CONTEXT, training_tokens=STEPS * BATCH, train_batch_size_tokens=BATCH,
        n_batches_in_buffer=2, store_batch_size_prompts=4, n_batches_for_norm_estimate=2, lr=1e-3, device="cpu",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, output_path=str(tmp_path / "out"),
        checkpoint_path=str(tmp_path / "checkpoints"), verbose=False,
    )
    runner = make_saelens_runner(cfg)
    trained = runner.run()
    loaded = SAE.load_from_disk(str(tmp_path / "out"))
    inference_arch = cfg.sae.get_inference_config_class().architecture()
    assert type(loaded) is registry.get_sae_class(inference_arch)[0]
    assert loaded.cfg.normalize_activations == "none"  # the estimated scale was folded in
    with torch.no_grad():
        out = loaded(acts)
        assert out.shape == acts.shape and torch.isfinite(out).all()
        if inference_arch == architecture:  # batch-level selection trains a different inference rule
            torch.testing.assert_close(out, trained(acts), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_hooked_sae_transformer_splices_with_and_without_the_error_term(
    architecture: str, tmp_path: Path, sae_model: HookedSAETransformer, model_tokens: torch.Tensor
) -> None:
    sae = inference_sae(architecture, tmp_path)
    with torch.no_grad():
        clean, cache = sae_model.run_with_cache(model_tokens, names_filter=HOOK)
        # With the error term the splice is exact: the model's own output, and the SAE's hooks still fire.
        exact, sae_cache = sae_model.run_with_cache_with_saes(model_tokens, saes=[sae], use_error_term=True)
        torch.testing.assert_close(exact, clean, rtol=1e-4, atol=1e-4)
        if architecture in NO_CODE_HOOK:
            assert f"{HOOK}.hook_sae_acts_post" not in sae_cache
        else:
            codes = sae_cache[f"{HOOK}.hook_sae_acts_post"]
            torch.testing.assert_close(codes, sae.encode(cache[HOOK]), rtol=1e-5, atol=1e-5)
            if "k" in sae.cfg.to_dict() and architecture not in {"batchtopk", "matryoshka_batchtopk"}:
                assert int((codes > 0).sum(-1).max()) <= K
        # Without it the model runs on the reconstruction: what patching the hook with sae(x) gives.
        spliced = sae_model.run_with_saes(model_tokens, saes=[sae])
        patched = sae_model.run_with_hooks(model_tokens, fwd_hooks=[(HOOK, lambda act, hook: sae(act))])
        torch.testing.assert_close(spliced, patched, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(spliced, clean, atol=1e-3)
    assert not sae_model.acts_to_saes  # run_with_saes leaves the model as it was


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_run_evals_reports_finite_metrics(
    architecture: str, tmp_path: Path, sae_model: HookedSAETransformer, model_tokens: torch.Tensor
) -> None:
    sae = inference_sae(architecture, tmp_path)
    store = ActivationsStore.from_sae(
        sae_model, sae, dataset=Dataset.from_dict({"tokens": model_tokens.tolist()}),
        context_size=model_tokens.shape[1], streaming=False, store_batch_size_prompts=2,
        total_tokens=model_tokens.numel(),
    )
    eval_config = EvalConfig(
        n_eval_reconstruction_batches=1, compute_kl=True, compute_ce_loss=True, n_eval_sparsity_variance_batches=1,
        compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
    )
    metrics, _ = run_evals(sae, store, sae_model, ActivationScaler(), eval_config, exclude_special_tokens=False)
    sparsity = metrics["sparsity"]
    assert 0 < sparsity["l0"] <= sae.cfg.d_sae
    if "k" in sae.cfg.to_dict() and architecture not in {"batchtopk", "matryoshka_batchtopk"}:
        assert sparsity["l0"] <= K
    for group in ("model_behavior_preservation", "model_performance_preservation", "reconstruction_quality"):
        for name, value in metrics[group].items():
            assert value == value and abs(value) != float("inf"), f"{group}.{name} = {value}"
