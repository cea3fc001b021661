"""The three sparse products every top-k SAE step needs, accumulated in fp32 whatever the storage dtype.

* ``gather_sum``: the sparse decode (and the encoder's input gradient),
* ``gathered_dot``: selected dot products (the code gradient and the exact encoder values),
* ``scatter_matmul``: the weight gradients of encoder and decoder.

On CPU (and on CUDA without Triton) they are plain PyTorch sparse ops, except the fp32 gathered dot on
CPU, which runs the C++ kernel of ``native`` where it is built; on CUDA with Triton installed they run
the kernels in ``triton_ops`` (deterministic, no float atomics). The PyTorch path is the reference the
Triton and C++ kernels are tested against.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.native import native_kernels

# CSR tensors are only a transient index pattern for ``sampled_addmm`` here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

_HAS_TRITON = importlib.util.find_spec("triton") is not None


TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
NATIVE_BLOCK_BYTES = 2**20
"""Token rows per block of the C++ gathered dot: half of a 2 MiB L2, so a block's rows stay in the
core's cache while the weight rows stream past (measured: docs/performance.md#measurements-behind-the-defaults)."""
NATIVE_TOKEN_ORDER_TABLE_BYTES = 24 * 2**20
"""Tables up to this size take the C++ gathered dot in token order (no ordering pass): while the table stays in
the last-level cache that is faster than the blocked order (docs/performance.md#measurements-behind-the-defaults)."""


def _native_applies(rows: Tensor, columns: Tensor) -> bool:
    """The C++ gathered dot: fp32 CPU tensors, each column of ``columns`` contiguous (latent-major)."""
    return (
        rows.device.type == "cpu" and rows.dtype == columns.dtype == torch.float32
        and columns.t().is_contiguous() and native_kernels() is not None
    )


def use_triton(*tensors: Tensor) -> bool:
    """The Triton kernels run only on CUDA tensors of fp32/bf16/fp16, and only when Triton is installed."""
    return _HAS_TRITON and all(t.is_cuda and t.dtype in TRITON_DTYPES for t in tensors)


def accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32 for bf16/fp16 storage, the widest input dtype otherwise."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def take(vector: Float[Tensor, " m"], indices: Int[Tensor, "n k"]) -> Float[Tensor, "n k"]:
    """``vector[indices]`` (per-latent parameters at the selected latents), with the faster backward.

    On CPU ``index_select``'s backward (``index_add_``) is faster than advanced indexing's; on CUDA
    advanced indexing stays: its sort-based backward is deterministic, ``index_add_``'s float atomics are
    not (measured: docs/performance.md#measurements-behind-the-defaults).
    """
    if vector.is_cuda:
        return vector[indices]
    return vector.index_select(0, indices.reshape(-1)).view(indices.shape)


def latent_sums(values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], n_latents: int) -> Float[Tensor, " m"]:
    """``out[m] = sum of values[i, j] where indices[i, j] == m``, in the accumulation dtype.

    CPU: ``index_add_`` (fast there); CUDA: accumulating ``index_put_``, whose sort-based kernel is
    deterministic where ``index_add_``'s float atomics are not.
    """
    dtype = accumulation_dtype(values)
    out = values.new_zeros(n_latents, dtype=dtype)
    flat_values, flat_indices = values.reshape(-1).to(dtype), indices.reshape(-1)
    if values.is_cuda:
        return out.index_put_((flat_indices,), flat_values, accumulate=True)
    return out.index_add_(0, flat_indices, flat_values)


def gathered_dot(
    rows: Float[Tensor, "n d"], columns: Float[Tensor, "d m"], indices: Int[Tensor, "n k"]
) -> Float[Tensor, "n k"]:
    """``out[i, j] = rows[i] . columns[:, indices[i, j]]`` (fp32 or wider), never gathering ``n x k x d``."""
    if use_triton(rows, columns):
        from hybrid_sae_ext.kernels import triton_ops

        return triton_ops.gathered_dot(rows, columns, indices)
    if _native_applies(rows, columns):
        kernels = native_kernels()
        assert kernels is not None
        token_order = columns.numel() * columns.element_size() <= NATIVE_TOKEN_ORDER_TABLE_BYTES
        block_rows = 0 if token_order else max(1, NATIVE_BLOCK_BYTES // (rows.shape[1] * rows.element_size()))
        return kernels.gathered_dot(rows.contiguous(), columns.t(), indices.contiguous(), block_rows)  # type: ignore[no-any-return]
    dtype = accumulation_dtype(rows, columns)
    n, k = indices.shape
    crow = torch.arange(0, n * k + 1, k, device=indices.device, dtype=torch.int64)
    pattern = torch.sparse_csr_tensor(
        crow, indices.reshape(-1), rows.new_zeros(n * k, dtype=dtype), (n, columns.shape[1]),
        check_invariants=False,
    )
    product = torch.sparse.sampled_addmm(pattern, rows.to(dtype), columns.to(dtype), beta=0.0)
    return product.values().view(indices.shape)


def scatter_matmul(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "n d"], n_out: int
) -> Float[Tensor, "m d"]:
    """``S^T @ rows`` for the sparse ``n x m`` matrix ``S`` with ``values`` at ``indices``, in ``rows.dtype``.

    This is the weight gradient of both the encoder and the decoder; duplicate indices add up.
    """
    if use_triton(values, rows):
        from hybrid_sae_ext.kernels import triton_ops

        return triton_ops.scatter_matmul(values, indices, rows, n_out)
    dtype = accumulation_dtype(values, rows)
    n, k = indices.shape
    if k == 0:
        return rows.new_zeros(n_out, rows.shape[1])
    # S^T as CSR, one row per latent: the in-place addmm with beta=0 then writes every output row once into
    # uninitialised memory, where COO sparse.mm zero-fills it twice first and the out-of-place addmm copies it.
    crow, columns, sorted_values = _csr_by_latent(values.to(dtype), indices, n_out)
    s_transposed = torch.sparse_csr_tensor(crow, columns, sorted_values, (n_out, n), check_invariants=False)
    out = rows.new_empty(n_out, rows.shape[1], dtype=dtype)
    return out.addmm_(s_transposed, rows.to(dtype), beta=0.0).to(rows.dtype)


def _csr_by_latent(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], n_out: int
) -> tuple[Int[Tensor, " m_plus_1"], Int[Tensor, " nk"], Float[Tensor, " nk"]]:
    """``(crow, columns, values)`` of ``S^T`` in CSR form, rows by latent, each row's picks in token order.

    fp32 on CPU: the C++ counting sort; elsewhere a stable sort by latent (int32 sorts twice as fast).
    """
    k = indices.shape[1]
    native = values.device.type == "cpu" and values.dtype == torch.float32 and indices.dtype == torch.int64
    if native and (kernels := native_kernels()) is not None:
        crow, columns, sorted_values = kernels.csr_by_latent(values.contiguous(), indices.contiguous(), n_out)
        return crow, columns, sorted_values
    flat = indices.reshape(-1)
    order = flat.to(torch.int32).sort(stable=True).indices
    crow = torch.bincount(flat, minlength=n_out).cumsum(0)
    return torch.cat([crow.new_zeros(1), crow]), order // k, values.reshape(-1)[order]


def gather_sum(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], table: Float[Tensor, "m d"]
) -> Float[Tensor, "n d"]:
    """``out[i] = sum_j values[i, j] * table[indices[i, j]]`` in ``table.dtype`` (the sparse decode).

    The Triton kernel reads a strided ``table`` in place; the PyTorch path copies it contiguous.
    ``embedding_bag`` accumulates bf16/fp16 in fp32 on CPU and CUDA (checked in the tests).
    """
    if use_triton(values, table):
        from hybrid_sae_ext.kernels import triton_ops

        return triton_ops.gather_sum(values, indices, table)
    # embedding_bag is ~10x slower on a strided table (e.g. W_enc.t()) than copy + contiguous call
    return F.embedding_bag(indices, table.contiguous(), per_sample_weights=values.to(table.dtype), mode="sum")


def residual_dots(
    codes: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], table: Float[Tensor, "m d"], centered: Float[Tensor, "n d"]
) -> Float[Tensor, "n k"]:
    """``out[i, j] = (centered[i] - gather_sum(codes, indices, table)[i]) . table[indices[i, j]]``, no gradient.

    On fp32 CPU tensors the C++ kernel does it in one pass per token (the decode's rows come back from
    cache for the dots); elsewhere it is the decode, then the gathered dot.
    """
    if _native_applies(centered, table.t()) and codes.dtype == torch.float32 and indices.dtype == torch.int64:
        kernels = native_kernels()
        assert kernels is not None
        return kernels.residual_dots(codes.contiguous(), indices.contiguous(), table, centered.contiguous())  # type: ignore[no-any-return]
    return gathered_dot(centered - gather_sum(codes, indices, table), table.t(), indices)
