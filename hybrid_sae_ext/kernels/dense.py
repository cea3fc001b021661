"""Dense twin of ``sparse_ops``: the same math, differentiated by autograd through dense tensors.

Why: it is the reference the sparse kernels are tested against, and the baseline the
benchmarks compare with. It builds ``batch x d_sae`` tensors on purpose.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.sparse_ops import encoder_scores, gather_pre, select_topk
from hybrid_sae_ext.kernels.types import TopKSelection


def dense_encode(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    selection_bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None = None,
    k_aux: int = 0,
) -> tuple[TopKSelection, TopKSelection | None]:
    """Same contract as ``sparse_encode``; gradients flow through the dense ``x @ W_enc``."""
    scores = encoder_scores(x, W_enc, selection_bias)
    indices, aux_indices = select_topk(scores.detach(), selection_bias, k, aux_mask, k_aux)
    aux = None
    if aux_indices is not None:
        aux = TopKSelection(gather_pre(scores, selection_bias, aux_indices), aux_indices)
    return TopKSelection(gather_pre(scores, selection_bias, indices), indices), aux


def dense_decode(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "n d_in"]:
    """Scatter the codes into a dense ``n x d_sae`` matrix and multiply by the decoder."""
    codes = torch.zeros(
        values.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device
    ).scatter(1, indices, values)
    return codes @ W_dec
