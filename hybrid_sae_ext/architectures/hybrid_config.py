"""Configs of the hybrid SAE (SAELens dataclasses), validated at construction.

``HybridSAEConfig`` is what a saved SAE's ``cfg.json`` holds; ``HybridTrainingSAEConfig`` adds the
training knobs. SAELens copies the fields the two share (``k``, ``selection_dtype``) from a training
config into the inference config it saves.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig
from typing_extensions import override

from hybrid_sae_ext.architectures.checks import validate_coefficients, validate_sizes
from hybrid_sae_ext.kernels import KERNEL_BACKENDS
from hybrid_sae_ext.kernels.selection import SELECTION_DTYPES

# Normalizations applied inside the SAE's forward would put the AuxK residual and the MSE target
# in different spaces; "expected_average_only_in" is applied by the data pipeline, so it is safe.
_TRAINING_NORMALIZATIONS = ("none", "expected_average_only_in")
GATE_RULES = ("token", "batch", "jump")
MAX_REFINE_STEPS = 8
"""A cap on ``refine_steps``: each step costs a decode and its transpose per token."""


def _validate_selection_dtype(selection_dtype: str) -> None:
    if selection_dtype not in SELECTION_DTYPES:
        raise ValueError(f"selection_dtype={selection_dtype!r} is not one of {SELECTION_DTYPES}")


DEFAULT_REFINE_STEPS = 1
"""One step: in the 3-seed comparison the refined fixed-k hybrid has lower FVU and KL than the unrefined one."""


def _validate_refine_steps(refine_steps: int) -> None:
    if not 0 <= refine_steps <= MAX_REFINE_STEPS:
        raise ValueError(f"refine_steps must be in [0, {MAX_REFINE_STEPS}], got refine_steps={refine_steps}")


DEFAULT_BATCH_TARGET_FRACTION = 0.8
"""The batch gate's mean L0 where ``target_l0`` is unset: 0.8 k, so the per-token cap k is 1.25 x the mean. Why 1.25:
at a cap of 2 x the mean the gate-threshold hybrids collapsed at L0 64; 1.25 beat 1.5 and 2 there and at L0 32
(``docs/comparison.md``, "The capped batch gate")."""


def _validate_target_l0(target_l0: float | None, k: int) -> None:
    if target_l0 is not None and not 0 < target_l0 <= k:
        raise ValueError(f"target_l0 must be None or in (0, k={k}], got target_l0={target_l0}")


@dataclass
class HybridSAEConfig(SAEConfig):
    """Inference config of the hybrid SAE."""

    k: int = 64
    """Most latents that may fire per token (the gate's top-k)."""
    selection_dtype: str = "auto"
    """How ``encode_sparse`` scores the top-k candidates, as in training (see ``HybridTrainingSAEConfig``);
    the dense SAE-API ``encode`` always selects on its exact pre-activations."""
    refine_steps: int = DEFAULT_REFINE_STEPS
    """Refinement steps of the magnitude path (see ``HybridTrainingSAEConfig``), as trained."""

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_sizes(self.d_in, self.d_sae, self.k)
        _validate_selection_dtype(self.selection_dtype)
        _validate_refine_steps(self.refine_steps)

    @override
    @classmethod
    def architecture(cls) -> str:
        return "hybrid"


@dataclass
class HybridTrainingSAEConfig(TrainingSAEConfig):
    """Training config of the hybrid SAE (SAELens field names; extra fields are hybrid-specific)."""

    k: int = 64
    """Most latents that may fire per token (the gate's top-k)."""
    l1_coefficient: float = 0.0
    """L1 on ``relu(pi_gate)`` of the candidates; > 0 pushes L0 further below k."""
    l1_warm_up_steps: int = 0
    """Steps over which the L1 coefficient ramps up from 0."""
    gate_aux_coefficient: float = 1.0
    """Weight of the gated auxiliary reconstruction that trains the gate threshold."""
    aux_k_coefficient: float = 1 / 32
    """Weight of the AuxK loss on dead latents (Gao et al. 2024)."""
    k_aux: int | None = None
    """Dead latents used by AuxK per token; None means d_in // 2."""
    kernel_backend: str = "sparse"
    """"sparse" (fast path, batch x k tensors only) or "dense" (autograd reference)."""
    selection_dtype: str = "auto"
    """How the top-k candidates are scored: "float32" (exact), "bfloat16" (top k + margin in bf16, rescored
    exactly; values and gradients stay exact), "auto" (bf16 where a one-time timing shows it faster)."""
    target_l0: float | None = None
    """Mean latents per token to settle at (0 < target_l0 <= k); k stays the per-token cap. None: 0.8 x k with
    the batch gate (``DEFAULT_BATCH_TARGET_FRACTION``, set at construction), a fixed k with the token gate."""
    gate_rule: str = "batch"
    """How the gate opens (see ``hybrid.py``): "batch" (the default: BatchTopK's batch-level allocation of
    target_l0 latents per token on average, at most k per token), "token" (per-token top-k, EMA threshold with
    target_l0), "jump" (learned per-latent thresholds through a straight-through step and a quadratic L0 penalty,
    needs target_l0)."""
    l0_coefficient: float = 1.0
    """Weight of the "jump" gate's quadratic L0 penalty around target_l0."""
    gate_bandwidth: float = 0.05
    """Width of the "jump" gate's straight-through estimator (JumpReLU's bandwidth)."""
    refine_steps: int = DEFAULT_REFINE_STEPS
    """Refinement steps of the magnitude path: each moves the open latents' values one learned step along
    the reconstruction's gradient on that token's own picks (``relu(v + rate * D_S (x - x_hat))``), so the
    values fit the chosen latents jointly. Costs a decode and its transpose per step (batch x k); 0: off.
    Default 1: the best hybrid of the comparison (``docs/comparison.md``)."""
    use_sparse_activations: bool = False
    """As SAELens' TopK training SAE (same name, same default): False gives ``training_forward_pass`` a dense
    ``feature_acts`` ``[batch, d_sae]`` that user code can compare and ``.abs()``; it costs ``batch x d_sae``
    values per step (4096 tokens x 32768 latents in float32: 512 MiB) on top of the sparse forward, which
    never needs it. True gives the sparse COO tensor (``batch x k`` entries) that SAELens' trainer accepts."""

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_sizes(self.d_in, self.d_sae, self.k)
        if self.gate_rule == "batch" and self.target_l0 is None:
            self.target_l0 = DEFAULT_BATCH_TARGET_FRACTION * self.k
        _validate_target_l0(self.target_l0, self.k)
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(
                f"kernel_backend={self.kernel_backend!r} is not one of {KERNEL_BACKENDS}"
            )
        _validate_selection_dtype(self.selection_dtype)
        if self.k_aux is not None and not 1 <= self.k_aux <= self.d_sae:
            raise ValueError(f"k_aux must be None or in [1, d_sae={self.d_sae}], got {self.k_aux}")
        if self.gate_rule not in GATE_RULES:
            raise ValueError(f"gate_rule={self.gate_rule!r} is not one of {GATE_RULES}")
        if self.gate_rule == "jump" and self.target_l0 is None:
            raise ValueError("gate_rule='jump' learns its thresholds towards target_l0: set target_l0")
        _validate_refine_steps(self.refine_steps)
        if not self.gate_bandwidth > 0:
            raise ValueError(f"gate_bandwidth must be > 0, got {self.gate_bandwidth}")
        validate_coefficients(self)
        if self.normalize_activations not in _TRAINING_NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={self.normalize_activations!r} is not supported for "
                f"training the hybrid SAE; allowed: {_TRAINING_NORMALIZATIONS}"
            )

    @property
    def effective_k_aux(self) -> int:
        return min(self.k_aux or self.d_in // 2, self.d_sae)

    @override
    @classmethod
    def architecture(cls) -> str:
        return "hybrid"
