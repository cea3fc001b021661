"""Typed results shared by the kernel backends."""

from typing import NamedTuple

from jaxtyping import Float, Int
from torch import Tensor


class TopKSelection(NamedTuple):
    """The latents chosen for each token and their encoder pre-activations."""

    values: Float[Tensor, "n k"]
    """Pre-activations ``x @ W_enc`` at the chosen latents (differentiable)."""

    indices: Int[Tensor, "n k"]
    """Chosen latent ids, sorted ascending within each row."""
