"""Sparse top-k encode and sparse decode with hand-written backward passes.

Why: after the top-k selection only ``k`` of ``d_sae`` latents per token carry signal, yet
autograd through a dense ``batch x d_sae`` code matrix spends five more dense matmuls per step
and ``batch x d_sae`` memory on zeros. These functions keep every tensor after the selection at
``batch x k``:

* forward decode: ``embedding_bag`` over the selected decoder rows,
* backward of the codes: a sampled dense-dense product (SDDMM), only at the selected positions,
* weight gradients: a sparse (``d_sae x batch``, ``batch * k`` non-zeros) times dense product,
  never the ``batch x k x d_in`` outer products that an ``index_add`` backward builds.

Every primitive is plain PyTorch, so the same code is sparse on CPU and on CUDA.
``dense.py`` holds the twin that autograd differentiates through dense tensors; the tests check
that values and gradients agree.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.types import TopKSelection

# CSR tensors are only a transient index pattern for ``sampled_addmm`` here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _row_index_csr(indices: Int[Tensor, "n k"], n_cols: int, values: Tensor) -> Tensor:
    """A ``n x n_cols`` CSR matrix with ``k`` entries per row at ``indices`` (sorted per row)."""
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, device=indices.device, dtype=torch.int64)
    return torch.sparse_csr_tensor(
        crow, indices.reshape(-1), values.reshape(-1), (n, n_cols), check_invariants=False
    )


def gathered_dot(
    rows: Float[Tensor, "n d"], table: Float[Tensor, "m d"], indices: Int[Tensor, "n k"]
) -> Float[Tensor, "n k"]:
    """``out[i, j] = rows[i] . table[indices[i, j]]`` without gathering ``n x k x d``."""
    pattern = _row_index_csr(indices, table.shape[0], rows.new_zeros(indices.numel()))
    product = torch.sparse.sampled_addmm(pattern, rows, table.t(), beta=0.0)
    return product.values().view(indices.shape)


def scatter_matmul(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "n d"], n_out: int
) -> Float[Tensor, "m d"]:
    """``S^T @ rows`` for the sparse ``n x m`` matrix ``S`` with ``values`` at ``indices``.

    This is the weight gradient of both the encoder and the decoder; duplicate indices add up.
    """
    n, k = indices.shape
    token = torch.arange(n, device=indices.device).repeat_interleave(k)
    s_transposed = torch.sparse_coo_tensor(
        torch.stack([indices.reshape(-1), token]),
        values.reshape(-1).to(rows.dtype),
        (n_out, n),
        check_invariants=False,
    )
    return torch.sparse.mm(s_transposed, rows)


def gather_sum(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], table: Float[Tensor, "m d"]
) -> Float[Tensor, "n d"]:
    """``out[i] = sum_j values[i, j] * table[indices[i, j]]`` (the sparse decode)."""
    return F.embedding_bag(
        indices, table, per_sample_weights=values.to(table.dtype), mode="sum"
    )


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
            grad_values = gathered_dot(grad_out, W_dec, indices).to(values.dtype)
        if ctx.needs_input_grad[2]:
            grad_W_dec = scatter_matmul(values, indices, grad_out, W_dec.shape[0])
        return grad_values, None, grad_W_dec


def sparse_decode(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], W_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "n d_in"]:
    """Decode ``k`` (value, latent) pairs per token: ``sum_j values[:, j] * W_dec[indices[:, j]]``."""
    return _SparseDecode.apply(values, indices, W_dec)  # type: ignore[no-any-return]


def _select(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores per row, sorted by latent id (CSR-ready)."""
    return scores.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values


def select_topk(
    scores: Float[Tensor, "n d_sae"],
    selection_bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None,
    k_aux: int,
) -> tuple[Tensor, Tensor | None]:
    """Top-k of ``scores = pre + selection_bias`` and, if asked, top-``k_aux`` of ``pre`` over ``aux_mask``.

    Shared by both backends so they select exactly the same latents.
    """
    with torch.no_grad():
        indices = _select(scores, k)
        aux_indices = None
        if aux_mask is not None and k_aux > 0:
            masked = (scores - selection_bias).masked_fill_(~aux_mask, float("-inf"))
            aux_indices = _select(masked, k_aux)
    return indices, aux_indices


def encoder_scores(
    x: Float[Tensor, "n d_in"], W_enc: Float[Tensor, "d_in d_sae"], selection_bias: Float[Tensor, " d_sae"]
) -> Float[Tensor, "n d_sae"]:
    """``x @ W_enc + selection_bias`` in one GEMM (the bias rides along for free)."""
    return torch.addmm(selection_bias.detach(), x, W_enc)


def gather_pre(scores: Tensor, selection_bias: Tensor, indices: Tensor) -> Tensor:
    """Pre-activations ``x @ W_enc`` at ``indices``, recovered from the biased scores."""
    return scores.gather(1, indices) - selection_bias.detach()[indices]


class _SparseEncode(torch.autograd.Function):
    """``pre = x @ W_enc`` gathered at selected latents; backward touches only those latents."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        W_enc: Tensor,
        selection_bias: Tensor,
        k: int,
        aux_mask: Tensor | None,
        k_aux: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        scores = encoder_scores(x, W_enc, selection_bias)
        indices, aux_indices = select_topk(scores, selection_bias, k, aux_mask, k_aux)
        if aux_indices is None:
            aux_indices = indices.new_empty((x.shape[0], 0))
        all_indices = torch.cat([indices, aux_indices], dim=1)
        values = gather_pre(scores, selection_bias, all_indices)
        del scores
        ctx.save_for_backward(x, W_enc, all_indices)
        ctx.mark_non_differentiable(indices, aux_indices)
        return values[:, :k], indices, values[:, k:], aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):  # type: ignore[override]
        x, W_enc, all_indices = ctx.saved_tensors
        grad = torch.cat([grad_values, grad_aux_values], dim=1)
        grad_x = grad_W_enc = None
        if ctx.needs_input_grad[0]:
            # embedding_bag is ~10x slower on a transposed view than copy + contiguous call
            grad_x = gather_sum(grad, all_indices, W_enc.t().contiguous())
        if ctx.needs_input_grad[1]:
            grad_W_enc = scatter_matmul(grad, all_indices, x, W_enc.shape[1]).t()
        return grad_x, grad_W_enc, None, None, None, None


def sparse_encode(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    selection_bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None = None,
    k_aux: int = 0,
) -> tuple[TopKSelection, TopKSelection | None]:
    """Select the top-k latents of ``x @ W_enc + selection_bias`` and return their pre-activations.

    With ``aux_mask`` (e.g. dead latents) and ``k_aux > 0`` also returns the top-``k_aux``
    pre-activations among the masked latents (the AuxK selection), sharing one matmul.
    The returned values are ``x @ W_enc`` *without* the selection bias.
    """
    values, indices, aux_values, aux_indices = _SparseEncode.apply(
        x, W_enc, selection_bias.detach(), k, aux_mask, k_aux
    )
    aux = TopKSelection(aux_values, aux_indices) if aux_indices.shape[1] > 0 else None
    return TopKSelection(values, indices), aux
