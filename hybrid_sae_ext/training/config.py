"""The training configuration, validated at construction so mistakes surface before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import simple_parsing

from hybrid_sae_ext.architectures.registry import resolve_architecture


@dataclass
class TrainConfig:
    """One SAE training run. Every entry point (Python, CLI, scripts) builds this, so all get the same checks."""

    architecture: str = "hybrid"
    """A registered SAELens architecture or a comparison name (vanilla, gated, ksparse, hybrid)."""
    d_sae: int = 4096
    """Number of latents (the SAE's width)."""
    k: int = 32
    """Latents per token for k-sparse architectures (hybrid: the most that may fire)."""
    l1_coefficient: float | None = None
    """L1 sparsity penalty (vanilla, gated; for the hybrid it lets L0 adapt below k); None: the architecture's default."""
    target_l0: float | None = None
    """Hybrid only: mean latents per token the adaptive gate settles at (0 < target_l0 <= k; k stays the cap)."""
    lr: float = 4e-4
    """Peak Adam learning rate."""
    lr_warmup_steps: int = 50
    """Linear warmup from lr/warmup to lr."""
    lr_decay_steps: int = 0
    """Linear decay to 0 over the last this many steps (0: constant after warmup)."""
    batch_size: int = simple_parsing.field(default=4096, alias="--batch_tokens")
    """Tokens (activation rows) per optimizer step, over all ranks and micro-batches."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; must divide batch_size (per rank)."""
    total_steps: int = 1000
    """Optimizer steps."""
    clip_grad_norm: float = 1.0
    """Gradient norm clip (0 disables)."""
    dead_after_tokens: int = 100_000
    """A latent that has not fired for this many tokens counts as dead (and gets AuxK gradient)."""
    checkpoint_dir: Path | None = None
    """Where checkpoints go; None disables checkpointing."""
    checkpoint_every: int = 100
    """Steps between checkpoints."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept on disk."""
    skip_nonfinite_batches: bool = False
    """On a non-finite loss or gradient, skip that batch instead of stopping the run."""
    seed: int = 0
    """Seeds the SAE's initialisation and the data order."""
    device: str = "cpu"
    """Device for the SAE (cpu, cuda, cuda:1, ...)."""
    log_every: int = 10
    """Steps between progress-bar and wandb updates."""
    wandb_project: str | None = None
    """Log to this wandb project (set WANDB_MODE=offline to log without network); None disables."""
    progress_bar: bool = simple_parsing.field(default=True, alias=["--progress"])
    """Show a progress bar (a line every 30 s when stderr is not a terminal); ``--progress false`` as in the other
    commands."""

    def __post_init__(self) -> None:
        self.architecture = resolve_architecture(self.architecture)
        positive = ("d_sae", "k", "batch_size", "grad_accum_steps", "total_steps", "checkpoint_every",
                    "keep_checkpoints", "log_every", "dead_after_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got lr={self.lr}")
        for name in ("lr_warmup_steps", "lr_decay_steps", "l1_coefficient", "clip_grad_norm"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)}")
        if self.k > self.d_sae:
            raise ValueError(f"k must satisfy 1 <= k <= d_sae={self.d_sae}, got k={self.k}")
        if self.target_l0 is not None:
            if self.architecture != "hybrid":
                raise ValueError(f"target_l0 is only supported by architecture='hybrid', got {self.architecture!r}")
            if not 0 < self.target_l0 <= self.k:
                raise ValueError(f"target_l0 must be in (0, k={self.k}], got target_l0={self.target_l0}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"grad_accum_steps={self.grad_accum_steps} must divide batch_size={self.batch_size}"
            )
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Rows per forward pass on one rank; raises if the batch does not split evenly."""
        if self.batch_size % (self.grad_accum_steps * world_size):
            raise ValueError(
                f"batch_size={self.batch_size} must be divisible by grad_accum_steps={self.grad_accum_steps} "
                f"x world_size={world_size}"
            )
        return self.batch_size // (self.grad_accum_steps * world_size)

    def learning_rate(self, step: int) -> float:
        """Warmup then constant, then linear decay to 0 over the last ``lr_decay_steps``."""
        scale = 1.0
        if self.lr_warmup_steps:
            scale = min(scale, (step + 1) / self.lr_warmup_steps)
        if self.lr_decay_steps:
            scale = min(scale, (self.total_steps - step) / self.lr_decay_steps)
        return self.lr * scale
