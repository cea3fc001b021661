"""Sparse top-k encode and sparse decode with hand-written backward passes.

Why: after the top-k selection only ``k`` of ``d_sae`` latents per token carry signal, yet
autograd through a dense ``batch x d_sae`` code matrix spends five more dense matmuls per step
and ``batch x d_sae`` memory on zeros. These functions keep every tensor after the selection at
``batch x k``:

* forward decode: a gather-weighted sum over the selected decoder rows,
* backward of the codes: selected dot products, only at the selected positions,
* weight gradients: a sparse (``d_sae x batch``, ``batch * k`` non-zeros) times dense product,
  never the ``batch x k x d_in`` outer products that an ``index_add`` backward builds.

The products live in ``primitives`` (PyTorch everywhere, Triton on CUDA) and accumulate in fp32,
so bf16/fp16 storage trains. ``dense.py`` holds the twin that autograd differentiates through
dense tensors; the tests check that values and gradients agree.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.primitives import gather_sum, gathered_dot, latent_sums, scatter_matmul
from hybrid_sae_ext.kernels.selection import select
from hybrid_sae_ext.kernels.types import TopKSelection, check_subtracted_bias


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values, indices, W_dec)
        return gather_sum(values, indices, W_dec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        values, indices, W_dec = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = gathered_dot(grad_out, W_dec.t(), indices).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_W_dec = scatter_matmul(values, indices, grad_out, W_dec.shape[0]).to(W_dec.dtype)
        return grad_values, None, grad_W_dec


def sparse_decode(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "n d_in"]:
    """Decode ``k`` (value, latent) pairs per token: ``sum_j values[:, j] * W_dec[indices[:, j]]``."""
    return _SparseDecode.apply(values, indices, W_dec)  # type: ignore[no-any-return]


def _interleave(first: Tensor, second: Tensor) -> Tensor:
    """Rows ``first[0], second[0], first[1], second[1], ...``."""
    return torch.stack([first, second], dim=1).reshape(2 * first.shape[0], *first.shape[1:])


def _same_table(first: Tensor, second: Tensor) -> bool:
    """Whether two tensors (e.g. ``W`` and ``W.detach()``) are one table in memory."""
    return (
        first.data_ptr() == second.data_ptr() and first.shape == second.shape and first.stride() == second.stride()
    )


class _SparseDecodePair(torch.autograd.Function):
    """Two decodes of one index set on one table: each token's two bags sit side by side, so the second
    reads every decoder row from cache (same sums, in the same order, as two separate decodes)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, values: Tensor, other_values: Tensor, indices: Tensor, W_dec: Tensor, other_W_dec: Tensor
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(values, other_values, indices, W_dec)
        both = gather_sum(_interleave(values, other_values), indices.repeat_interleave(2, dim=0), W_dec)
        first, second = both.view(values.shape[0], 2, -1).unbind(1)
        return first, second

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_other: Tensor):  # type: ignore[override]
        values, other_values, indices, W_dec = ctx.saved_tensors
        grad_out, grad_other = grad_out.contiguous(), grad_other.contiguous()
        grad_values = grad_other_values = grad_W_dec = grad_other_W_dec = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dots = gathered_dot(
                _interleave(grad_out, grad_other), W_dec.t(), indices.repeat_interleave(2, dim=0)
            ).view(values.shape[0], 2, -1)
            grad_values, grad_other_values = dots[:, 0].to(values.dtype), dots[:, 1].to(other_values.dtype)
        if ctx.needs_input_grad[3]:
            grad_W_dec = scatter_matmul(values, indices, grad_out, W_dec.shape[0]).to(W_dec.dtype)
        if ctx.needs_input_grad[4]:
            grad_other_W_dec = scatter_matmul(other_values, indices, grad_other, W_dec.shape[0]).to(W_dec.dtype)
        return grad_values, grad_other_values, None, grad_W_dec, grad_other_W_dec


def sparse_decode_pair(
    values: Float[Tensor, "n k"],
    other_values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    other_W_dec: Float[Tensor, "d_sae d_in"],
) -> tuple[Float[Tensor, "n d_in"], Float[Tensor, "n d_in"]]:
    """``(sparse_decode(values, indices, W_dec), sparse_decode(other_values, indices, other_W_dec))`` in one
    pass over the decoder rows when both decoders are one table (``other_W_dec`` may be ``W_dec.detach()``)."""
    if not _same_table(W_dec, other_W_dec):
        return sparse_decode(values, indices, W_dec), sparse_decode(other_values, indices, other_W_dec)
    return _SparseDecodePair.apply(values, other_values, indices, W_dec, other_W_dec)  # type: ignore[no-any-return]


class _SparseEncode(torch.autograd.Function):
    """``pre = x @ W_enc`` at the selected latents (exact); backward touches only those latents.

    ``subtracted_bias`` is a bias already inside ``x`` (``x = raw - subtracted_bias``, with ``raw``
    needing no gradient): its gradient ``-sum_i dL/dx_i = -W_enc @ (per-latent sums of dL/dpre)`` is one
    matrix-vector product, where the input gradient it replaces is a gather over ``n x k`` encoder columns.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        W_enc: Tensor,
        selection_bias: Tensor,
        k: int,
        aux_mask: Tensor | None,
        k_aux: int,
        selection_dtype: str,
        subtracted_bias: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        main, aux = select(x, W_enc, selection_bias, k, aux_mask, k_aux, selection_dtype)
        aux_indices = aux.indices if aux is not None else main.indices.new_empty((x.shape[0], 0))
        aux_values = aux.values if aux is not None else main.values.new_empty((x.shape[0], 0))
        ctx.save_for_backward(x, W_enc, torch.cat([main.indices, aux_indices], dim=1))
        ctx.mark_non_differentiable(main.indices, aux_indices)
        return main.values, main.indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):  # type: ignore[override]
        x, W_enc, all_indices = ctx.saved_tensors
        grad = torch.cat([grad_values, grad_aux_values], dim=1)
        grad_x = grad_W_enc = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = gather_sum(grad, all_indices, W_enc.t()).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_W_enc = scatter_matmul(grad, all_indices, x, W_enc.shape[1]).t().to(W_enc.dtype)
        if ctx.needs_input_grad[7]:
            sums = latent_sums(grad, all_indices, W_enc.shape[1])
            grad_bias = torch.mv(W_enc.to(sums.dtype), sums).neg_().to(x.dtype)
        return grad_x, grad_W_enc, None, None, None, None, None, grad_bias


def sparse_encode(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    selection_bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None = None,
    k_aux: int = 0,
    selection_dtype: str = "float32",
    subtracted_bias: Float[Tensor, " d_in"] | None = None,
) -> tuple[TopKSelection, TopKSelection | None]:
    """Select the top-k latents of ``x @ W_enc + selection_bias`` and return their pre-activations.

    With ``aux_mask`` (e.g. dead latents) and ``k_aux > 0`` also returns the top-``k_aux``
    pre-activations among the masked latents (the AuxK selection), sharing one matmul.
    The returned values are exact ``x @ W_enc`` *without* the selection bias;
    ``selection_dtype`` is how the candidates are scored (see ``selection``). ``subtracted_bias``:
    a bias already subtracted from ``x`` (which then must not need a gradient itself), to which the
    gradient flows as if through ``x = raw - subtracted_bias``.
    """
    check_subtracted_bias(x, subtracted_bias)
    values, indices, aux_values, aux_indices = _SparseEncode.apply(
        x, W_enc, selection_bias.detach(), k, aux_mask, k_aux, selection_dtype, subtracted_bias
    )
    aux = TopKSelection(aux_values, aux_indices) if aux_indices.shape[1] > 0 else None
    return TopKSelection(values, indices), aux
