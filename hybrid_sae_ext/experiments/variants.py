"""The comparison's variants: one row per variant, each a registered SAELens architecture with the config
fields that define it, the knob that sets its sparsity, and its label in tables and figures.

Why a table here and not in ``architectures/``: the variants are the experiment's choices (which SAELens
defaults to keep, which L0 knob, which init), not properties of an architecture.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens.saes.sae import TrainingSAE

from hybrid_sae_ext.architectures.build import build_training_sae
from hybrid_sae_ext.architectures.hybrid_config import DEFAULT_BATCH_TARGET_FRACTION
from hybrid_sae_ext.training.trainer import Trainer


@dataclass(frozen=True)
class ComparisonVariant:
    """An architecture as the comparison trains it."""

    architecture: str
    """Registered SAELens architecture."""
    sparsity_knob: str
    """``k`` (set to the target L0), ``target_l0`` (the architecture's own L0 target: the hybrid's gate
    threshold, JumpReLU's quadratic penalty), or a loss coefficient searched until the L0 lands on the target."""
    label: str = ""
    """The name tables and figures use (empty: the variant's key)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields that differ from the architecture's SAELens defaults (and why, in VARIANTS)."""
    encoder_init_norm: float | None = None
    """Norm of every W_enc column set after SAELens' init (W_enc stays parallel to W_dec^T); None: SAELens'."""
    first_coefficient: float = 1.0
    """Where the coefficient search starts (coefficient architectures only)."""
    k_cap_factor: float | None = None
    """``target_l0`` variants with a hard per-token cap: k = this x target (None: no k)."""
    nested_fractions: tuple[float, ...] = ()
    """Matryoshka variants: their nested prefixes as fractions of d_sae (``matryoshka_widths``)."""

    @property
    def searched(self) -> bool:
        return self.sparsity_knob not in ("k", "target_l0")


def _batch_refined(cap: float, gate_aux: float | None = None) -> ComparisonVariant:
    """The batch gate with one refinement step, its per-token cap ``cap`` x target (labelled where it is not 2) and,
    where given, a gate auxiliary loss weight."""
    details = (f", k = {cap:g} x target" if cap != 2.0 else "") + (f", gate aux {gate_aux:g}" if gate_aux else "")
    extra = {"gate_aux_coefficient": gate_aux} if gate_aux else {}
    return ComparisonVariant("hybrid", "target_l0", f"hybrid (batch gate, refined{details})",
                             {"gate_rule": "batch", "refine_steps": 1, **extra}, k_cap_factor=cap)


VARIANTS: dict[str, ComparisonVariant] = {
    "vanilla": ComparisonVariant("standard", "l1_coefficient", "vanilla (L1)", first_coefficient=6.0),
    "gated": ComparisonVariant("gated", "l1_coefficient", "gated", first_coefficient=8.0),
    # JumpReLU as Gemma Scope 2 trains it: a quadratic penalty around the target L0 (SAELens'
    # "quadratic" mode, coefficient 1). The L0-coefficient search of the step penalty landed at L0 ~900 of
    # 1024 for every coefficient within the old 129-step budget: the threshold barely moves that early.
    "jumprelu": ComparisonVariant("jumprelu", "target_l0", "JumpReLU", {"jumprelu_sparsity_loss_mode": "quadratic"}),
    # SAELens TopK as users get it: decoder rows at norm 0.1, AuxK weight 1.
    "ksparse": ComparisonVariant("topk", "k", "TopK (SAELens defaults)"),
    # The same TopK with the hybrid's free choices: unit-norm decoder rows, W_enc = 0.1 W_dec^T (what the
    # hybrid's training init gives: SAELens' 0.1 init, decoder renormalised by its reparametrisation), and
    # the hybrid's AuxK weight 1/32 (Gao et al. 2024).
    "ksparse-matched": ComparisonVariant(
        "topk", "k", "TopK (hybrid's init)", {"decoder_init_norm": 1.0, "aux_loss_coefficient": 1 / 32},
        encoder_init_norm=0.1,
    ),
    "batchtopk": ComparisonVariant("batchtopk", "k", "BatchTopK"),
    # SAELens' newest architecture at its defaults; SAELens has no default nesting, so prefixes of 1/8, 1/4,
    # 1/2 and all latents (Bussmann et al. 2025 double the width per level).
    "matryoshka": ComparisonVariant("matryoshka_batchtopk", "k", "Matryoshka BatchTopK",
                                    nested_fractions=(0.125, 0.25, 0.5, 1.0)),
    # The hybrids as they were before refinement became the default (refine_steps=1) pin it off.
    "hybrid": ComparisonVariant("hybrid", "k", "hybrid (fixed k)", {"gate_rule": "token", "refine_steps": 0}),
    "hybrid-adaptive": ComparisonVariant(
        "hybrid", "target_l0", "hybrid (target_l0, k = 2 x target)", {"gate_rule": "token", "refine_steps": 0},
        k_cap_factor=2.0,
    ),
    # Redesigns. The batch gate: BatchTopK's allocation applied to pi_gate (the batch's top n x target of the
    # per-token top-(2 x target) candidates), one calibrated threshold at inference.
    "hybrid-batch": ComparisonVariant(
        "hybrid", "target_l0", "hybrid (batch gate)", {"gate_rule": "batch", "refine_steps": 0}, k_cap_factor=2.0
    ),
    # The batch gate with AuxK as TopK/BatchTopK weigh it (1, not 1/32): dead latents are lost capacity.
    "hybrid-batch-aux": ComparisonVariant(
        "hybrid", "target_l0", "hybrid (batch gate, AuxK 1)", {"gate_rule": "batch", "aux_k_coefficient": 1.0,
                                                                 "refine_steps": 0},
        k_cap_factor=2.0,
    ),
    # Learned per-latent gate thresholds: b_gate learns through a straight-through step (JumpReLU's
    # estimator) from the MSE and a quadratic L0 penalty towards the target; top-(2 x target) cap, no EMA.
    "hybrid-jump": ComparisonVariant(
        "hybrid", "target_l0", "hybrid (learned thresholds)", {"gate_rule": "jump", "aux_k_coefficient": 1.0,
                                                                   "refine_steps": 0},
        k_cap_factor=2.0,
    ),
    # The fixed-k hybrid with TopK's AuxK weight: the dead-latent change alone.
    "hybrid-aux": ComparisonVariant("hybrid", "k", "hybrid (fixed k, AuxK 1)", {"gate_rule": "token",
                                                                                "aux_k_coefficient": 1.0,
                                                                                "refine_steps": 0}),
    # Refinement of the magnitude path: one (or two) learned steps along the reconstruction's gradient on
    # each token's own open latents, so the chosen latents' values fit jointly (``refine_steps``). The default
    # of sessions 3-5.
    "hybrid-refine": ComparisonVariant("hybrid", "k", "hybrid (fixed k, refined)", {"gate_rule": "token",
                                                                                   "refine_steps": 1}),
    # The adaptive token gate (EMA threshold towards target_l0, k = 2 x target) with the refined magnitude path.
    "hybrid-adaptive-refine": ComparisonVariant(
        "hybrid", "target_l0", "hybrid (target_l0, k = 2 x target, refined)", {"gate_rule": "token", "refine_steps": 1},
        k_cap_factor=2.0,
    ),
    "hybrid-batch-refine": _batch_refined(cap=2.0),
    # The default since session 6: the batch gate with refinement and a per-token cap of 1.25 x the target (the
    # config's DEFAULT_BATCH_TARGET_FRACTION). At cap 2 x target the gate-threshold hybrids collapse at L0 64
    # (k = 2 x 64 = d_in here); the L0 64 screen tried tighter caps and a lighter gate auxiliary loss (the
    # loss that trains the shared encoder towards a code of all k candidates): docs/comparison.md.
    "hybrid-batch-refine-cap1.25": _batch_refined(cap=1 / DEFAULT_BATCH_TARGET_FRACTION),
    "hybrid-batch-refine-cap1.125": _batch_refined(cap=1.125),
    "hybrid-batch-refine-cap1.5": _batch_refined(cap=1.5),
    "hybrid-batch-refine-gate0.1": _batch_refined(cap=2.0, gate_aux=0.1),
    "hybrid-batch-refine-cap1.5-gate0.1": _batch_refined(cap=1.5, gate_aux=0.1),
    "hybrid-batch-refine-cap1.25-gate0.1": _batch_refined(cap=1.25, gate_aux=0.1),
    "hybrid-refine2": ComparisonVariant("hybrid", "k", "hybrid (fixed k, 2 refine steps)", {"gate_rule": "token",
                                                                                          "refine_steps": 2}),
    "hybrid-batch-refine2": ComparisonVariant(
        "hybrid", "target_l0", "hybrid (batch gate, 2 refine steps)", {"gate_rule": "batch", "refine_steps": 2},
        k_cap_factor=2.0,
    ),
}
"""Every variant of the comparison, by the name its tables use."""


def label(name: str) -> str:
    """A variant's table label (an unknown name stands for itself)."""
    return VARIANTS[name].label or name if name in VARIANTS else name


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
    """The training SAE of ``variant`` at ``settings``: the one builder, with the variant's fields and init."""
    nested = {"matryoshka_widths": [round(f * d_sae) for f in variant.nested_fractions]} if variant.nested_fractions else {}
    return build_training_sae(variant.architecture, d_in, d_sae, device=device, seed=seed,
                              encoder_init_norm=variant.encoder_init_norm, **variant.overrides, **nested, **settings)


def run_config(trainer: Trainer, variant: ComparisonVariant) -> dict[str, Any]:
    """Everything that defines a run: the trainer's config and the SAE's full SAELens config."""
    sae_cfg = {k: v for k, v in trainer.sae.cfg.to_dict().items() if k != "metadata"}
    train_cfg = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(trainer.cfg).items()}
    return {"train": train_cfg, "sae": sae_cfg, "encoder_init_norm": variant.encoder_init_norm}
