"""Dense twin of ``sparse_ops``: the same math, differentiated by autograd through dense tensors.

Why: it is the reference the sparse kernels are tested against, and the baseline the
benchmarks compare with. It builds ``batch x d_sae`` tensors on purpose.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.row_norms import NORM_FLOOR
from hybrid_sae_ext.kernels.selection import select
from hybrid_sae_ext.kernels.types import TopKSelection, check_pair_tables, check_subtracted_bias, same_table


def dense_encode(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    selection_bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None = None,
    k_aux: int = 0,
    selection_dtype: str = "float32",
    subtracted_bias: Float[Tensor, " d_in"] | None = None,
) -> tuple[TopKSelection, TopKSelection | None]:
    """Same contract as ``sparse_encode`` (same selection); gradients flow through the dense ``x @ W_enc``."""
    check_subtracted_bias(x, subtracted_bias)
    if subtracted_bias is not None:
        x = x + (subtracted_bias.detach() - subtracted_bias)  # the same values; d x / d bias = -1
    main, aux = select(x, W_enc, selection_bias, k, aux_mask, k_aux, selection_dtype)
    pre = x @ W_enc
    dense_aux = None if aux is None else TopKSelection(pre.gather(1, aux.indices), aux.indices)
    return TopKSelection(pre.gather(1, main.indices), main.indices), dense_aux


def _unit_rows(W_dec: Tensor) -> Tensor:
    """``W_dec`` with unit-norm rows, differentiated by autograd through torch's own norm."""
    return W_dec / torch.linalg.vector_norm(W_dec, dim=-1, keepdim=True).clamp_min(NORM_FLOOR)


def dense_decode(
    values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "n d_in"]:
    """Scatter the codes into a dense ``n x d_sae`` matrix and multiply by the decoder (by its unit-norm
    rows where ``inverse_norms`` is given, as ``sparse_decode``; they are recomputed here through autograd)."""
    codes = torch.zeros(
        values.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device
    ).scatter(1, indices, values)
    return codes @ (W_dec if inverse_norms is None else _unit_rows(W_dec))


def dense_decode_pair(
    values: Float[Tensor, "n k"],
    other_values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    other_W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> tuple[Float[Tensor, "n d_in"], Float[Tensor, "n d_in"]]:
    """Same contract as ``sparse_decode_pair``: two dense decodes."""
    check_pair_tables(same_table(W_dec, other_W_dec), inverse_norms)
    return (
        dense_decode(values, indices, W_dec, inverse_norms),
        dense_decode(other_values, indices, other_W_dec, inverse_norms),
    )


def dense_row_dots(
    rows: Float[Tensor, "n d_in"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "n k"]:
    """Same contract as ``sparse_row_dots``: every row's dot with every decoder row, then the picks."""
    return (rows @ (W_dec if inverse_norms is None else _unit_rows(W_dec)).t()).gather(1, indices)


def dense_residual_row_dots(
    centered: Float[Tensor, "n d_in"],
    values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "n k"]:
    """Same contract as ``sparse_residual_row_dots``: the dense decode, then the dense row dots."""
    return dense_row_dots(centered - dense_decode(values, indices, W_dec, inverse_norms), indices, W_dec, inverse_norms)
