"""SAELens' own runner trains every comparison architecture offline on the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig

import hybrid_sae_ext  # noqa: F401  (registers "hybrid")
from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.architectures.registry import training_classes
from hybrid_sae_ext.models import CORPUS_DIR, TINY_LM_NAME, load_model
from hybrid_sae_ext.training.saelens_runner import make_saelens_runner

HOOK = "blocks.1.hook_resid_pre"
STEPS, BATCH = 200, 256


def _runner_config(architecture: str, output: Path, hook: str = HOOK, **sae_fields: str) -> LanguageModelSAERunnerConfig:
    _, cfg_cls = training_classes(architecture)
    extra = {"k": 16} if architecture in ("hybrid", "ksparse") else {"l1_coefficient": 2.0}
    return LanguageModelSAERunnerConfig(
        sae=cfg_cls(d_in=128, d_sae=512, **extra, **sae_fields),
        model_name=TINY_LM_NAME,
        hook_name=hook,
        dataset_path=str(CORPUS_DIR),
        is_dataset_tokenized=False,
        streaming=False,
        context_size=128,
        training_tokens=STEPS * BATCH,
        train_batch_size_tokens=BATCH,
        n_batches_in_buffer=4,
        store_batch_size_prompts=8,
        lr=1e-3,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        output_path=str(output),
        checkpoint_path=str(output / "checkpoints"),
        n_batches_for_norm_estimate=10,
        verbose=False,
    )


def _acts_at(hook: str) -> torch.Tensor:
    model = load_model(TINY_LM_NAME)
    tokens = model.to_tokens(["The return value is a list of strings, one per line of the file."] * 2)
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    return cache[hook][:, 1:].reshape(-1, 128)


@pytest.fixture(scope="module")
def held_out_acts() -> torch.Tensor:
    return _acts_at(HOOK)


def _normalized_mse(sae: SAE, acts: torch.Tensor) -> float:
    with torch.no_grad():
        out = sae(acts)
    return float((out - acts).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum())


@pytest.mark.parametrize("architecture", ["hybrid", "ksparse", "vanilla", "gated"])
def test_runner_trains_offline_and_round_trips(architecture: str, tmp_path: Path, held_out_acts: torch.Tensor) -> None:
    runner = make_saelens_runner(_runner_config(architecture, tmp_path / "out"))
    before = _normalized_mse(runner.sae, held_out_acts)
    trained = runner.run()

    saved = tmp_path / "out"
    assert (saved / "cfg.json").exists() and (saved / "sae_weights.safetensors").exists()
    loaded = SAE.load_from_disk(str(saved))
    if architecture == "hybrid":
        assert isinstance(loaded, HybridSAE)
    after = _normalized_mse(loaded, held_out_acts)
    assert after < 0.6 * before, f"{architecture}: normalized MSE {before:.3f} -> {after:.3f}"

    reloaded = SAE.load_from_disk(str(saved))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(held_out_acts), loaded(held_out_acts), rtol=0, atol=0)
        torch.testing.assert_close(reloaded.encode(held_out_acts), loaded.encode(held_out_acts), rtol=0, atol=0)
        torch.testing.assert_close(loaded(held_out_acts), trained(held_out_acts), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", ["hybrid", "ksparse"])
def test_runner_with_estimated_norm_scaling_saves_an_sae_for_raw_activations(architecture: str, tmp_path: Path) -> None:
    """``normalize_activations="expected_average_only_in"`` at ``blocks.0.hook_resid_pre``, where SAELens
    estimates a scaling factor far from 1 (~10) and folds it into the SAE at the end of ``fit()``: the saved
    SAE must reconstruct *raw* activations (the hybrid's fold used to be lost on its unit-norm rows: FVU ~75)."""
    hook = "blocks.0.hook_resid_pre"
    runner = make_saelens_runner(
        _runner_config(architecture, tmp_path / "out", hook, normalize_activations="expected_average_only_in")
    )
    runner.run()
    loaded = SAE.load_from_disk(str(tmp_path / "out"))
    assert loaded.cfg.normalize_activations == "none"
    acts = _acts_at(hook)
    assert acts.norm(dim=-1).mean() < acts.shape[-1] ** 0.5 / 3  # so the factor SAELens folds is far from 1
    assert _normalized_mse(loaded, acts) < 0.6
