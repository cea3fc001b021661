"""Typed results and argument checks shared by the kernel backends."""

from typing import NamedTuple

from jaxtyping import Float, Int
from torch import Tensor


class TopKSelection(NamedTuple):
    """The latents chosen for each token and their encoder pre-activations."""

    values: Float[Tensor, "n k"]
    """Pre-activations ``x @ W_enc`` at the chosen latents (differentiable)."""

    indices: Int[Tensor, "n k"]
    """Chosen latent ids, sorted ascending within each row."""


def check_subtracted_bias(x: Tensor, subtracted_bias: Tensor | None) -> None:
    """The encoders' contract for ``subtracted_bias``: ``x`` comes detached, its gradient goes to the bias only."""
    if subtracted_bias is not None and x.requires_grad:
        raise ValueError("with subtracted_bias, pass x detached: its gradient goes to the bias only")


def same_table(first: Tensor, second: Tensor) -> bool:
    """Whether two tensors (e.g. ``W`` and ``W.detach()``) are one table in memory."""
    return (
        first.data_ptr() == second.data_ptr() and first.shape == second.shape and first.stride() == second.stride()
    )


def check_pair_tables(one_table: bool, inverse_norms: Tensor | None) -> None:
    """The decode pairs' contract for ``inverse_norms``: the norms of one table, so both decodes share it."""
    if inverse_norms is not None and not one_table:
        raise ValueError("decode_pair with inverse_norms needs other_W_dec to be W_dec (or W_dec.detach())")
