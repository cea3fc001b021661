"""The training configuration, validated at construction so mistakes surface before any work."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simple_parsing

from hybrid_sae_ext.architectures.build import config_fields, training_config
from hybrid_sae_ext.architectures.registry import resolve_architecture

_OWN_FIELDS = ("d_in", "d_sae", "device", "k", "l1_coefficient", "target_l0")
"""SAE config fields the run sets itself (the activations give d_in), so ``sae_overrides`` may not."""


def json_object(text: str) -> dict[str, Any]:
    """``--sae_overrides``' parser: a JSON object such as ``'{"gate_rule": "batch"}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not a JSON object ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"not a JSON object: {text!r}")
    return value


_JSON_FLAG = {"type": json_object, "metavar": "JSON"}
"""How the command line reads ``sae_overrides`` (simple_parsing's own dict parsing takes no JSON)."""


@dataclass
class TrainConfig:
    """One SAE training run. Every entry point (Python, CLI, scripts) builds this, so all get the same checks."""

    architecture: str = "hybrid"
    """A registered SAELens architecture or a comparison name (vanilla, gated, ksparse, hybrid)."""
    d_sae: int = 4096
    """Number of latents (the SAE's width)."""
    k: int = 32
    """Latents per token, for architectures whose config has ``k`` (ignored by the others)."""
    l1_coefficient: float | None = None
    """L1 sparsity penalty, for architectures whose config has it (ignored by the others); None: its default."""
    target_l0: float | None = None
    """Mean latents per token to settle at, for architectures whose config has ``target_l0`` (refused by the
    others); None: the architecture's default."""
    sae_overrides: dict[str, Any] = simple_parsing.field(default_factory=dict, **_JSON_FLAG)
    """Other fields of the architecture's training config, e.g. '{"gate_rule": "batch"}' (a JSON object)."""
    lr: float = 4e-4
    """Peak Adam learning rate."""
    lr_warmup_steps: int = 50
    """Linear warmup from lr/warmup to lr."""
    lr_decay_steps: int = 0
    """Linear decay to 0 over the last this many steps (0: constant after warmup)."""
    batch_size: int = simple_parsing.field(default=4096, alias="--batch_tokens")
    """Tokens (activation rows) per optimizer step, over all ranks and micro-batches."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; must divide batch_size (per rank). A batch-level allocation (the hybrid's
    default batch gate, BatchTopK) allocates within each micro-batch, so for those it is not the large batch exactly."""
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
        positive = ("batch_size", "grad_accum_steps", "total_steps", "checkpoint_every",
                    "keep_checkpoints", "log_every", "dead_after_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got lr={self.lr}")
        for name in ("lr_warmup_steps", "lr_decay_steps", "clip_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"grad_accum_steps={self.grad_accum_steps} must divide batch_size={self.batch_size}"
            )
        if self.checkpoint_dir is not None:
            self.checkpoint_dir = Path(self.checkpoint_dir)
        if not isinstance(self.sae_overrides, dict):
            raise ValueError(f"sae_overrides must be a dict of config fields, got {self.sae_overrides!r}")
        own = sorted(set(self.sae_overrides) & set(_OWN_FIELDS))
        if own:
            raise ValueError(f"sae_overrides sets {', '.join(own)}: set it with its own option, not in sae_overrides")
        # The architecture's config checks its fields, here before any capture: the activations' d_in is not
        # known yet, so it is built at d_in=1 (the trainer builds it again at the real d_in).
        training_config(self.architecture, 1, self.d_sae, device=self.device, **self.sae_fields())

    def sae_fields(self) -> dict[str, Any]:
        """The architecture config's fields this run sets: ``k`` and ``l1_coefficient`` where the config has
        them, ``target_l0`` when given (a config without it refuses it), and ``sae_overrides``."""
        names = config_fields(self.architecture)
        fields: dict[str, Any] = {"k": self.k} if "k" in names else {}
        if self.l1_coefficient is not None and "l1_coefficient" in names:
            fields["l1_coefficient"] = self.l1_coefficient
        if self.target_l0 is not None:
            fields["target_l0"] = self.target_l0
        return {**fields, **self.sae_overrides}

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
