"""Every bad training input is refused at construction with a message naming the value (README table)."""

from __future__ import annotations

import re

import pytest
import torch

from hybrid_sae_ext.training import TensorActivationSource, TrainConfig, Trainer, build_training_sae
from hybrid_sae_ext.training.multi import ModelActivationSource

BAD_TRAIN_CONFIGS = [
    ({"k": 0}, "k must satisfy 1 <= k <= d_sae=4096, got k=0"),
    ({"k": 65, "d_sae": 64}, "k must satisfy 1 <= k <= d_sae=64, got k=65"),
    ({"d_sae": 0}, "d_sae must be >= 1, got d_sae=0"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got lr=0.0"),
    ({"lr": -1e-3}, "lr must be a finite number > 0, got lr=-0.001"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got lr=inf"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got lr=nan"),
    ({"batch_size": 0}, "batch_size must be >= 1, got batch_size=0"),
    ({"batch_size": 100, "grad_accum_steps": 3}, "grad_accum_steps=3 must divide batch_size=100"),
    ({"total_steps": 0}, "total_steps must be >= 1, got total_steps=0"),
    ({"architecture": "topk2"}, "Unknown SAE architecture 'topk2'; allowed: "),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps must be >= 0, got lr_warmup_steps=-1"),
    ({"l1_coefficient": -0.5}, "l1_coefficient must be >= 0, got -0.5"),
    ({"architecture": "standard", "l1_coefficient": -0.5}, "l1_coefficient must be >= 0, got -0.5"),
    ({"architecture": "topk", "k": 65, "d_sae": 64}, "k must satisfy 1 <= k <= d_sae=64, got k=65"),
    ({"target_l0": 40.0}, "target_l0 must be None or in (0, k=32], got target_l0=40.0"),
    ({"architecture": "topk", "target_l0": 8.0}, "'topk' SAEs have no config field target_l0; allowed: "),
    ({"sae_overrides": {"gate_rule": "jump"}}, "gate_rule='jump' learns its thresholds towards target_l0: set target_l0"),
    ({"sae_overrides": {"gate_rul": "batch"}}, "'hybrid' SAEs have no config field gate_rul; allowed: "),
    ({"sae_overrides": {"k": 8}}, "sae_overrides sets k: set it with its own option, not in sae_overrides"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_TRAIN_CONFIGS)
def test_bad_train_config(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**overrides)  # type: ignore[arg-type]


def test_target_l0_and_overrides_reach_any_architecture_whose_config_has_them() -> None:
    """``target_l0`` is a field of SAELens' JumpReLU config too; other fields pass through ``sae_overrides``."""
    jumprelu = build_training_sae(TrainConfig(architecture="jumprelu", d_sae=64, target_l0=4.0), d_in=16)
    assert jumprelu.cfg.target_l0 == 4.0
    hybrid = build_training_sae(
        TrainConfig(d_sae=64, k=8, target_l0=4.0, sae_overrides={"gate_rule": "batch", "k_aux": 3}), d_in=16
    )
    assert (hybrid.cfg.k, hybrid.cfg.target_l0, hybrid.cfg.gate_rule, hybrid.cfg.k_aux) == (8, 4.0, "batch", 3)


def test_batch_must_split_over_ranks() -> None:
    with pytest.raises(ValueError, match=re.escape("batch_size=64 must be divisible by grad_accum_steps=1 x world_size=3")):
        TrainConfig(batch_size=64).micro_batch_size(world_size=3)


def test_activations_of_another_width_are_refused() -> None:
    cfg = TrainConfig(d_sae=64, k=4, batch_size=8)
    trainer = Trainer(cfg, TensorActivationSource(torch.randn(32, 16)))
    with pytest.raises(ValueError, match=re.escape("the SAE has d_in=16 but the activations have d_in=24")):
        Trainer(cfg, TensorActivationSource(torch.randn(32, 24)), sae=trainer.sae)


def test_unknown_hook_lists_close_names() -> None:
    from hybrid_sae_ext.models import TINY_LM_NAME, load_model

    model = load_model(TINY_LM_NAME)
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_pr.*blocks\.1\.hook_resid_pre"):
        ModelActivationSource(model, ["blocks.1.hook_resid_pr"], torch.zeros(2, 8, dtype=torch.long))
