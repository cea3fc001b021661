"""The adaptive gate: ``target_l0`` sets the mean L0 (k stays the per-token cap), through our trainer
and through SAELens' own runner, and survives saving for inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig

import hybrid_sae_ext  # noqa: F401  (registers "hybrid")
from hybrid_sae_ext.architectures.hybrid import HybridTrainingSAE
from hybrid_sae_ext.architectures.hybrid_config import HybridTrainingSAEConfig
from hybrid_sae_ext.models import CORPUS_DIR, TINY_LM_NAME, load_model
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import TensorActivationSource, unit_energy_scale
from hybrid_sae_ext.training.saelens_runner import make_saelens_runner
from hybrid_sae_ext.training.trainer import Trainer

HOOK = "blocks.1.hook_resid_pre"
K, TARGET = 64, 32.0


@pytest.fixture(scope="module")
def acts() -> torch.Tensor:
    """Embedded-model activations of the corpus' validation text, at unit energy."""
    from hybrid_sae_ext.evals import load_eval_tokens

    model = load_model(TINY_LM_NAME)
    tokens = load_eval_tokens(model, context_size=64, n_rows=160)
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    x = cache[HOOK][:, 1:].reshape(-1, 128)
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))]  # held-out rows: same distribution
    return x * unit_energy_scale(x)


def _per_token_l0(sae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    sae.eval()
    with torch.no_grad():
        return (sae.encode(x) != 0).sum(-1).float()


@pytest.mark.parametrize("bad", [0.0, -1.0, 64.5, 100.0])
def test_bad_target_l0_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match=rf"target_l0 must be None or in \(0, k=64\], got target_l0={bad}"):
        HybridTrainingSAEConfig(d_in=8, d_sae=128, k=64, target_l0=bad)
    with pytest.raises(ValueError, match=rf"target_l0 must be None or in \(0, k=64\], got target_l0={bad}"):
        TrainConfig(architecture="hybrid", d_sae=128, k=64, target_l0=bad)  # the same check, run by the config


def test_target_l0_is_refused_by_an_architecture_without_it() -> None:
    with pytest.raises(ValueError, match="'topk' SAEs have no config field target_l0; allowed: "):
        TrainConfig(architecture="ksparse", d_sae=128, k=64, target_l0=32.0)


@pytest.mark.parametrize("gate_rule", ["batch", "token"])
def test_our_trainer_settles_at_target_and_inference_matches(acts: torch.Tensor, tmp_path: Path, gate_rule: str) -> None:
    cfg = TrainConfig(architecture="hybrid", d_sae=512, k=K, target_l0=TARGET, lr=1e-3, batch_size=512,
                      total_steps=150, lr_warmup_steps=5, progress_bar=False,
                      sae_overrides={"gate_rule": gate_rule})
    trainer = Trainer(cfg, TensorActivationSource(acts[:-2048]))
    history = trainer.train().history
    train_l0 = sum(m.l0 for m in history[-30:]) / 30
    assert abs(train_l0 / TARGET - 1) < 0.05, f"mean training L0 {train_l0:.2f} is not within 5% of {TARGET}"

    held_out = acts[-2048:]
    l0 = _per_token_l0(trainer.sae, held_out)
    print(f"held-out per-token L0: mean {l0.mean():.2f} std {l0.std():.2f} min {l0.min():.0f} max {l0.max():.0f}")
    assert abs(float(l0.mean()) / TARGET - 1) < 0.1
    assert l0.max() <= K and l0.std() > 3 and l0.min() < TARGET < l0.max()  # L0 adapts per token, capped at k

    trainer.sae.save_inference_model(str(tmp_path / "sae"))
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    assert "gate_threshold" not in loaded.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(held_out), trainer.sae.encode(held_out), rtol=1e-5, atol=1e-5)


def test_the_default_is_the_batch_gate_at_0_8_k_capped_at_k() -> None:
    cfg = HybridTrainingSAEConfig(d_in=8, d_sae=64, k=10)
    assert (cfg.gate_rule, cfg.target_l0, cfg.k) == ("batch", 8.0, 10)
    assert HybridTrainingSAEConfig(d_in=8, d_sae=64, k=10, target_l0=3.0).target_l0 == 3.0
    assert HybridTrainingSAEConfig(d_in=8, d_sae=64, k=10, gate_rule="token").target_l0 is None  # fixed k


def test_threshold_is_state_and_fixed_k_is_unchanged() -> None:
    adaptive = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=64, k=8, target_l0=4.0))
    fixed = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=64, k=8, gate_rule="token"))
    assert "gate_threshold" in adaptive.state_dict() and "gate_threshold" not in fixed.state_dict()
    adaptive.train()
    adaptive.hybrid_forward(torch.randn(32, 8))
    assert float(adaptive.gate_threshold) != 0.0
    adaptive.eval()
    before = adaptive.gate_threshold.clone()
    adaptive.hybrid_forward(torch.randn(32, 8))
    assert torch.equal(adaptive.gate_threshold, before)  # evaluation never moves it


def test_saelens_runner_settles_at_target(acts: torch.Tensor, tmp_path: Path) -> None:
    steps, batch = 300, 256
    cfg = LanguageModelSAERunnerConfig(
        sae=HybridTrainingSAEConfig(d_in=128, d_sae=512, k=K, target_l0=TARGET),
        model_name=TINY_LM_NAME, hook_name=HOOK, dataset_path=str(CORPUS_DIR), is_dataset_tokenized=False,
        streaming=False, context_size=128, training_tokens=steps * batch, train_batch_size_tokens=batch,
        n_batches_in_buffer=4, store_batch_size_prompts=8, lr=1e-3, device="cpu",
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, output_path=str(tmp_path / "out"),
        checkpoint_path=str(tmp_path / "checkpoints"), n_batches_for_norm_estimate=10, verbose=False,
    )
    runner = make_saelens_runner(cfg)
    trained = runner.run()
    fresh = torch.cat([runner.activations_store.next_batch().squeeze(1) for _ in range(8)])
    l0 = _per_token_l0(trained, fresh.to(trained.dtype))
    print(f"SAETrainer per-token L0: mean {l0.mean():.2f} std {l0.std():.2f} min {l0.min():.0f} max {l0.max():.0f}")
    assert abs(float(l0.mean()) / TARGET - 1) < 0.05, f"mean L0 {float(l0.mean()):.2f} is not within 5% of {TARGET}"
    assert l0.max() <= K and l0.std() > 3
