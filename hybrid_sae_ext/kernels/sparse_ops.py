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

from hybrid_sae_ext.kernels.primitives import (
    gather_sum,
    gathered_dot,
    latent_sums,
    residual_dots,
    scatter_matmul,
    take,
)
from hybrid_sae_ext.kernels.row_norms import gradient_row_factor
from hybrid_sae_ext.kernels.selection import select
from hybrid_sae_ext.kernels.types import TopKSelection, check_pair_tables, check_subtracted_bias, same_table


def _picked(inverse_norms: Tensor | None, indices: Tensor) -> Tensor | None:
    """``inverse_norms[indices]``: each pick's row scale (taken once per pass, shared by its products)."""
    return None if inverse_norms is None else take(inverse_norms, indices)


def _scaled(values: Tensor, picked: Tensor | None) -> Tensor:
    """The codes a decode with unit-norm rows multiplies the stored rows by: ``values * inverse_norms[indices]``."""
    return values if picked is None else values * picked


def _decode_grads(
    values: Tensor,
    dots: Tensor | None,
    indices: Tensor,
    grad_out: Tensor,
    W_dec: Tensor,
    inverse_norms: Tensor | None,
    picked: Tensor | None,
    need_values: bool,
    need_W_dec: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``out[i] = sum_j values[i, j] * s[m] * W_dec[m]`` (``m = indices[i, j]``; ``s = inverse_norms``,
    or 1; ``picked = _picked(inverse_norms, indices)``) given ``dots[i, j] = grad_out[i] . W_dec[m]``. With
    ``s = 1 / ||W_dec[m]||`` the normalisation's own term, ``W_dec[m] * (-s^3 * sum of values * dots over the picks of m)``, is added in place to the
    sparse product's result: no second ``d_sae x d_in`` gradient to allocate and add."""
    grad_values = grad_W_dec = None
    if need_values:
        assert dots is not None
        grad_values = _scaled(dots, picked).to(values.dtype)
    if need_W_dec:
        grad_W_dec = scatter_matmul(_scaled(values, picked), indices, grad_out, W_dec.shape[0])
        if inverse_norms is not None:
            assert dots is not None
            grad_scales = latent_sums(values * dots, indices, W_dec.shape[0])
            factor = gradient_row_factor(inverse_norms, grad_scales)
            grad_W_dec.addcmul_(W_dec, factor.to(grad_W_dec.dtype).unsqueeze(1))
        grad_W_dec = grad_W_dec.to(W_dec.dtype)
    return grad_values, grad_W_dec


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor, inverse_norms: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(values, indices, W_dec, inverse_norms)
        return gather_sum(_scaled(values, _picked(inverse_norms, indices)), indices, W_dec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        values, indices, W_dec, inverse_norms = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        need_values, need_W_dec = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        dots = None
        if need_values or (need_W_dec and inverse_norms is not None):
            dots = gathered_dot(grad_out, W_dec.t(), indices)
        grad_values, grad_W_dec = _decode_grads(
            values, dots, indices, grad_out, W_dec, inverse_norms, _picked(inverse_norms, indices),
            need_values, need_W_dec,
        )
        return grad_values, None, grad_W_dec, None


def sparse_decode(
    values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "n d_in"]:
    """Decode ``k`` (value, latent) pairs per token: ``sum_j values[:, j] * W_dec[indices[:, j]]``.

    ``inverse_norms``: ``inverse_row_norms(W_dec)``, detached; the decode then uses the unit-norm rows
    ``W_dec[m] / ||W_dec[m]||`` and its gradient to ``W_dec`` runs through the normalisation.
    """
    return _SparseDecode.apply(values, indices, W_dec, _detached(inverse_norms))  # type: ignore[no-any-return]


class _SparseRowDots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, indices: Tensor, W_dec: Tensor, inverse_norms: Tensor | None) -> Tensor:  # type: ignore[override]
        dots = gathered_dot(rows, W_dec.t(), indices)
        ctx.save_for_backward(rows, indices, W_dec, inverse_norms, dots)
        return _scaled(dots, _picked(inverse_norms, indices)).to(rows.dtype)

    @staticmethod
    def backward(ctx, grad_dots: Tensor):  # type: ignore[override]
        rows, indices, W_dec, inverse_norms, dots = ctx.saved_tensors
        picked = _picked(inverse_norms, indices)
        grad_rows = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_rows = gather_sum(_scaled(grad_dots, picked), indices, W_dec).to(rows.dtype)
        if ctx.needs_input_grad[2]:
            # out = s_m * (rows . W_dec[m]) is a decode read backwards: the decode's weight gradient with the
            # output gradient as the codes and ``rows`` as the output gradient, norm term included.
            _, grad_W_dec = _decode_grads(
                grad_dots, dots, indices, rows.contiguous(), W_dec, inverse_norms, picked, False, True
            )
        return grad_rows, None, grad_W_dec, None


def sparse_row_dots(
    rows: Float[Tensor, "n d_in"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "n k"]:
    """``out[i, j] = rows[i] . W_dec[indices[i, j]]`` (unit-norm rows where ``inverse_norms`` is given): the
    transpose of ``sparse_decode``, differentiable in ``rows`` and ``W_dec``, never gathering ``n x k x d_in``."""
    return _SparseRowDots.apply(rows, indices, W_dec, _detached(inverse_norms))  # type: ignore[no-any-return]


def sparse_residual_row_dots(
    centered: Float[Tensor, "n d_in"],
    values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "n k"]:
    """``sparse_row_dots(centered - sparse_decode(values, indices, W_dec, s), indices, W_dec, s)``: each token's
    residual after its decode, dotted with its own picked rows. Where no gradient is wanted it is one fused pass
    (``primitives.residual_dots``); otherwise the two differentiable kernels."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (centered, values, W_dec)):
        decoded = sparse_decode(values, indices, W_dec, inverse_norms)
        return sparse_row_dots(centered - decoded, indices, W_dec, inverse_norms)
    picked = _picked(_detached(inverse_norms), indices)
    dots = residual_dots(_scaled(values.detach(), picked), indices, W_dec.detach(), centered.detach())
    return _scaled(dots, picked).to(values.dtype)


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()


def _interleave(first: Tensor, second: Tensor) -> Tensor:
    """Rows ``first[0], second[0], first[1], second[1], ...``."""
    return torch.stack([first, second], dim=1).reshape(2 * first.shape[0], *first.shape[1:])


class _SparseDecodePair(torch.autograd.Function):
    """Two decodes of one index set on one table: each token's two bags sit side by side, so the second
    reads every decoder row from cache (same sums, in the same order, as two separate decodes)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        values: Tensor,
        other_values: Tensor,
        indices: Tensor,
        W_dec: Tensor,
        other_W_dec: Tensor,
        inverse_norms: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(values, other_values, indices, W_dec, inverse_norms)
        picked = _picked(inverse_norms, indices)
        both = _interleave(_scaled(values, picked), _scaled(other_values, picked))
        first, second = gather_sum(both, indices.repeat_interleave(2, dim=0), W_dec).view(values.shape[0], 2, -1).unbind(1)
        return first, second

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_other: Tensor):  # type: ignore[override]
        values, other_values, indices, W_dec, inverse_norms = ctx.saved_tensors
        grad_out, grad_other = grad_out.contiguous(), grad_other.contiguous()
        need = ctx.needs_input_grad
        dots = other_dots = None
        if need[0] or need[1] or (inverse_norms is not None and (need[3] or need[4])):
            both = gathered_dot(_interleave(grad_out, grad_other), W_dec.t(), indices.repeat_interleave(2, dim=0))
            dots, other_dots = both.view(values.shape[0], 2, -1).unbind(1)
        picked = _picked(inverse_norms, indices)
        grad_values, grad_W_dec = _decode_grads(
            values, dots, indices, grad_out, W_dec, inverse_norms, picked, need[0], need[3]
        )
        grad_other_values, grad_other_W_dec = _decode_grads(
            other_values, other_dots, indices, grad_other, W_dec, inverse_norms, picked, need[1], need[4]
        )
        return grad_values, grad_other_values, None, grad_W_dec, grad_other_W_dec, None


def sparse_decode_pair(
    values: Float[Tensor, "n k"],
    other_values: Float[Tensor, "n k"],
    indices: Int[Tensor, "n k"],
    W_dec: Float[Tensor, "d_sae d_in"],
    other_W_dec: Float[Tensor, "d_sae d_in"],
    inverse_norms: Float[Tensor, " d_sae"] | None = None,
) -> tuple[Float[Tensor, "n d_in"], Float[Tensor, "n d_in"]]:
    """``(sparse_decode(values, indices, W_dec), sparse_decode(other_values, indices, other_W_dec))`` in one
    pass over the decoder rows when both decoders are one table (``other_W_dec`` may be ``W_dec.detach()``).
    ``inverse_norms`` (see ``sparse_decode``) needs both to be one table."""
    same = same_table(W_dec, other_W_dec)
    check_pair_tables(same, inverse_norms)
    if not same:
        return sparse_decode(values, indices, W_dec), sparse_decode(other_values, indices, other_W_dec)
    return _SparseDecodePair.apply(  # type: ignore[no-any-return]
        values, other_values, indices, W_dec, other_W_dec, _detached(inverse_norms)
    )


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
