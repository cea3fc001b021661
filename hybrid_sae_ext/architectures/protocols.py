"""What an SAE can do, asked by capability instead of by architecture name.

Why: the trainer, the benchmark and the dashboards used to branch on ``isinstance(sae, HybridTrainingSAE)``,
so an architecture with its own sparse step had to edit each of them. They now ask for a protocol, which any
class with the method satisfies (``runtime_checkable`` checks that the method exists, not its signature).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol, runtime_checkable

from jaxtyping import Float, Int
from torch import Tensor


class SparseCodes(NamedTuple):
    """Codes of a batch in sparse form: at most ``k`` (value, latent) pairs per token."""

    values: Float[Tensor, "... k"]
    """Code values; zero where the latent stayed off."""
    indices: Int[Tensor, "... k"]
    """Latent ids of the top-k candidates."""


class SparseStep(NamedTuple):
    """One sparse training forward, as a trainer needs it."""

    loss: Tensor
    """The total (weighted) loss to backpropagate."""
    sae_out: Float[Tensor, "n d_in"]
    """Reconstruction of the flattened input."""
    codes: SparseCodes
    """``[n, k]`` codes; a latent fired where its value is non-zero."""


@runtime_checkable
class SparseTrainingStep(Protocol):
    """A training SAE that steps through its own sparse forward instead of SAELens' ``training_forward_pass``
    (whose codes are a dense ``batch x d_sae`` tensor)."""

    def sparse_training_step(
        self, x: Float[Tensor, "... d_in"], dead_mask: Tensor | None, coefficients: Mapping[str, float]
    ) -> SparseStep:
        """The step's loss, reconstruction and codes; ``dead_mask`` ([d_sae] bool) marks dead latents and
        ``coefficients`` holds the current values of ``get_coefficients()`` (warm-ups applied)."""
        ...


class CandidateCodes(NamedTuple):
    """Every top-k candidate of each token with its gate pre-activation (gated top-k SAEs)."""

    values: Float[Tensor, "... k"]
    """Code values; zero where the gate stayed closed."""
    indices: Int[Tensor, "... k"]
    """Latent ids of the candidates."""
    gate: Float[Tensor, "... k"]
    """The gate's pre-activation; the gate opens where it is > 0."""


@runtime_checkable
class GateCandidateEncoder(Protocol):
    """An SAE whose top-k candidates pass a gate that may stay closed (what the dashboards' gate statistics read)."""

    def encode_candidates(self, x: Float[Tensor, "... d_in"]) -> CandidateCodes:
        """Candidates, gates and codes of ``x``, encoded exactly as the SAE's own sparse encode does."""
        ...
