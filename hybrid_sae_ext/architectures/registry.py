"""Registration of the project's architectures in SAELens' registry, and name resolution.

Why: users write ``architecture="hybrid"`` in SAELens configs; SAELens finds classes through
``sae_lens.registry``. Registration must survive re-imports and ``importlib.reload``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import registry
from sae_lens.saes.sae import TrainingSAE

from hybrid_sae_ext.architectures.hybrid import HybridSAE, HybridTrainingSAE
from hybrid_sae_ext.architectures.hybrid_config import HybridSAEConfig, HybridTrainingSAEConfig

if TYPE_CHECKING:  # the trainer's config imports this module
    from hybrid_sae_ext.training.trainer import Trainer

COMPARISON_ARCHITECTURES: dict[str, str] = {
    "vanilla": "standard",
    "gated": "gated",
    "ksparse": "topk",
    "hybrid": "hybrid",
}
"""Friendly names that are plain aliases of a SAELens architecture (its defaults, nothing changed)."""


@dataclass(frozen=True)
class ComparisonVariant:
    """An architecture as the comparison trains it: a SAELens architecture, the config fields that define
    the variant, and the one knob that sets its sparsity."""

    architecture: str
    """Registered SAELens architecture."""
    sparsity_knob: str
    """``k`` (set to the target L0), ``target_l0`` (the architecture's own L0 target: the hybrid's gate
    threshold, JumpReLU's quadratic penalty), or a loss coefficient searched until the L0 lands on the target."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields that differ from the architecture's SAELens defaults (and why, in COMPARISON_VARIANTS)."""
    encoder_init_norm: float | None = None
    """Norm of every W_enc column set after SAELens' init (W_enc stays parallel to W_dec^T); None: SAELens'."""
    first_coefficient: float = 1.0
    """Where the coefficient search starts (coefficient architectures only)."""
    k_cap_factor: float | None = None
    """``target_l0`` variants with a hard per-token cap: k = this x target (None: no k)."""

    @property
    def searched(self) -> bool:
        return self.sparsity_knob not in ("k", "target_l0")


COMPARISON_VARIANTS: dict[str, ComparisonVariant] = {
    "vanilla": ComparisonVariant("standard", "l1_coefficient", first_coefficient=6.0),
    "gated": ComparisonVariant("gated", "l1_coefficient", first_coefficient=8.0),
    # JumpReLU as Gemma Scope 2 trains it: a quadratic penalty around the target L0 (SAELens'
    # "quadratic" mode, coefficient 1). The L0-coefficient search of the step penalty landed at L0 ~900 of
    # 1024 for every coefficient within the old 129-step budget: the threshold barely moves that early.
    "jumprelu": ComparisonVariant("jumprelu", "target_l0", {"jumprelu_sparsity_loss_mode": "quadratic"}),
    # SAELens TopK as users get it: decoder rows at norm 0.1, AuxK weight 1.
    "ksparse": ComparisonVariant("topk", "k"),
    # The same TopK with the hybrid's free choices: unit-norm decoder rows, W_enc = 0.1 W_dec^T (what the
    # hybrid's training init gives: SAELens' 0.1 init, decoder renormalised by its reparametrisation), and
    # the hybrid's AuxK weight 1/32 (Gao et al. 2024).
    "ksparse-matched": ComparisonVariant(
        "topk", "k", {"decoder_init_norm": 1.0, "aux_loss_coefficient": 1 / 32}, encoder_init_norm=0.1
    ),
    "batchtopk": ComparisonVariant("batchtopk", "k"),
    "hybrid": ComparisonVariant("hybrid", "k"),
    "hybrid-adaptive": ComparisonVariant("hybrid", "target_l0", k_cap_factor=2.0),
}
"""Every architecture of the comparison, by the name its tables use."""

_PROJECT_CLASSES: dict[str, tuple[tuple[type, type], tuple[type, type]]] = {
    "hybrid": ((HybridSAE, HybridSAEConfig), (HybridTrainingSAE, HybridTrainingSAEConfig)),
}


def _same_class(a: type, b: type) -> bool:
    """True for the same class, also across ``importlib.reload`` (which creates a new object)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(table: dict[str, tuple[Any, Any]], name: str, entry: tuple[type, type]) -> None:
    current = table.get(name)
    if current is not None and not _same_class(current[0], entry[0]):
        raise ValueError(
            f"SAELens architecture {name!r} is already registered to "
            f"{current[0].__module__}.{current[0].__qualname__}; refusing to replace it"
        )
    table[name] = entry


def register_architectures() -> None:
    """Register the project's architectures with SAELens (idempotent)."""
    for name, (inference, training) in _PROJECT_CLASSES.items():
        _register(registry.SAE_CLASS_REGISTRY, name, inference)
        _register(registry.SAE_TRAINING_CLASS_REGISTRY, name, training)


def resolve_architecture(name: str) -> str:
    """Map a friendly name (``vanilla``, ``ksparse``...) or a SAELens name to a registered one."""
    resolved = COMPARISON_ARCHITECTURES.get(name, name)
    if resolved not in registry.SAE_TRAINING_CLASS_REGISTRY:
        allowed = sorted(set(COMPARISON_ARCHITECTURES) | set(registry.SAE_TRAINING_CLASS_REGISTRY))
        raise ValueError(f"Unknown SAE architecture {name!r}; allowed: {', '.join(allowed)}")
    return resolved


def training_classes(name: str) -> tuple[type, type]:
    """The (TrainingSAE class, TrainingSAEConfig class) registered for ``name``."""
    return registry.get_sae_training_class(resolve_architecture(name))


def comparison_variant(name: str) -> ComparisonVariant:
    """The comparison variant called ``name``; the error lists the allowed names."""
    if name not in COMPARISON_VARIANTS:
        raise ValueError(f"Unknown comparison architecture {name!r}; allowed: {', '.join(COMPARISON_VARIANTS)}")
    return COMPARISON_VARIANTS[name]


def settings_at(variant: ComparisonVariant, l0: float, coefficient: float | None = None) -> dict[str, float]:
    """The architecture knobs that aim ``variant`` at mean L0 ``l0`` (``coefficient``: searched variants only)."""
    if variant.sparsity_knob == "k":
        return {"k": max(1, round(l0))}
    if variant.sparsity_knob == "target_l0":
        cap = {} if variant.k_cap_factor is None else {"k": max(1, round(variant.k_cap_factor * l0))}
        return {**cap, "target_l0": float(l0)}
    if coefficient is None:
        raise ValueError(f"{variant.architecture} sets its sparsity by {variant.sparsity_knob}: pass a coefficient")
    return {variant.sparsity_knob: coefficient}


def build_variant_sae(variant: ComparisonVariant, settings: dict[str, float], d_in: int, d_sae: int,
                      device: str, seed: int) -> TrainingSAE[Any]:
    """The training SAE of ``variant`` as every experiment builds it: SAELens' class and defaults, the variant's
    overrides and ``settings``, initialised under ``seed``, then the variant's encoder init."""
    sae_cls, cfg_cls = training_classes(variant.architecture)
    torch.manual_seed(seed)
    sae: TrainingSAE[Any] = sae_cls(cfg_cls(d_in=d_in, d_sae=d_sae, device=device, **variant.overrides, **settings))
    if variant.encoder_init_norm is not None:
        with torch.no_grad():
            sae.W_enc.data *= variant.encoder_init_norm / sae.W_enc.norm(dim=0, keepdim=True)
    return sae


def run_config(trainer: Trainer, variant: ComparisonVariant) -> dict[str, Any]:
    """Everything that defines a run: the trainer's config and the SAE's full SAELens config."""
    sae_cfg = {k: v for k, v in trainer.sae.cfg.to_dict().items() if k != "metadata"}
    train_cfg = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(trainer.cfg).items()}
    return {"train": train_cfg, "sae": sae_cfg, "encoder_init_norm": variant.encoder_init_norm}
