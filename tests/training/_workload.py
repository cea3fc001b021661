"""A small deterministic training workload shared by the trainer tests and their subprocess worker."""

from __future__ import annotations

from pathlib import Path

import torch

from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import TensorActivationSource
from hybrid_sae_ext.training.trainer import Trainer

D_IN = 16


def activations(rows: int = 2048, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(D_IN, D_IN, generator=generator)
    codes = torch.relu(torch.randn(rows, D_IN, generator=generator) - 0.5)
    return codes @ basis


def config(checkpoint_dir: Path | None = None, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = dict(
        architecture="hybrid", d_sae=64, k=4, batch_size=64, total_steps=30, lr=3e-3, lr_warmup_steps=5,
        lr_decay_steps=10, dead_after_tokens=256, checkpoint_dir=checkpoint_dir, checkpoint_every=1,
        keep_checkpoints=2, progress_bar=False,
    )
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def trainer(cfg: TrainConfig, acts: torch.Tensor | None = None) -> Trainer:
    return Trainer(cfg, TensorActivationSource(activations() if acts is None else acts, seed=cfg.seed))
