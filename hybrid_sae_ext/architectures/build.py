"""One builder of a training SAE for every caller (the trainer, the comparison variants, the sweeps).

Why one: two builders drifted before (one set ``target_l0``, the other an encoder init). Whatever a caller
wants beyond SAELens' defaults is a config field of the registered class, checked here by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

from hybrid_sae_ext.architectures.checks import validate_training_config
from hybrid_sae_ext.architectures.registry import training_classes


def config_fields(architecture: str) -> set[str]:
    """The field names of ``architecture``'s registered training config."""
    return {f.name for f in dataclasses.fields(training_classes(architecture)[1])}


def training_config(architecture: str, d_in: int, d_sae: int, *, device: str = "cpu", **fields: Any) -> TrainingSAEConfig:
    """``architecture``'s registered training config with ``fields`` over SAELens' defaults, validated by its own
    checks and by ``checks.validate_training_config`` (sizes and loss weights, which SAELens' configs leave)."""
    known = config_fields(architecture)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"{architecture!r} SAEs have no config field {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(known - {'d_in', 'd_sae', 'device'}))}"
        )
    cfg = training_classes(architecture)[1](d_in=d_in, d_sae=d_sae, device=device, **fields)
    validate_training_config(cfg)
    return cfg


def build_training_sae(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    device: str = "cpu",
    seed: int = 0,
    encoder_init_norm: float | None = None,
    **fields: Any,
) -> TrainingSAE[Any]:
    """The registered training SAE of ``architecture`` with ``fields`` over SAELens' defaults, initialised
    under ``seed``; ``encoder_init_norm`` then sets every ``W_enc`` column's norm (its direction kept)."""
    cfg = training_config(architecture, d_in, d_sae, device=device, **fields)
    torch.manual_seed(seed)
    sae: TrainingSAE[Any] = training_classes(architecture)[0](cfg)
    if encoder_init_norm is not None:
        with torch.no_grad():
            sae.W_enc.data *= encoder_init_norm / sae.W_enc.norm(dim=0, keepdim=True)
    return sae
