"""Triton kernels for the three sparse products (CUDA only; tested on CPU by Triton's interpreter).

Why: the PyTorch sparse ops are generic; these know the SAE's shapes. Each accumulates in fp32
whatever the storage dtype, and none uses float atomics, so results are deterministic:

* ``gather_sum``: one program per (token, block of d) sums ``k`` weighted table rows,
* ``gathered_dot``: one program per (token, block of k) dots the token's row with ``k`` columns,
* ``scatter_matmul``: the weight gradient as a latent-sorted segment sum: entries are stably sorted
  by latent, and one program per (latent, block of d) adds up its segment in a fixed order.

Import this module only where Triton is installed. Under ``TRITON_INTERPRET=1`` (set before the
import) the kernels run on CPU tensors: out-of-range loads go unnoticed there, so the wrappers
check index ranges in that mode; on CUDA such a load faults.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRET = triton.knobs.runtime.interpret
"""Read once at import, like ``@triton.jit`` does: the interpreter needs a single autotune config."""


def _configs(*block_sizes: dict[str, int]) -> list[triton.Config]:
    chosen = block_sizes[:1] if INTERPRET else block_sizes
    return [triton.Config(dict(sizes), num_warps=4) for sizes in chosen]


@triton.autotune(configs=_configs({"BLOCK_D": 128}, {"BLOCK_D": 64}, {"BLOCK_D": 256}), key=["d", "k"])
@triton.jit
def _gather_sum_kernel(values, indices, table, out, k, d, stride_tm, stride_td, BLOCK_D: tl.constexpr):
    token = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = offs < d
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j in range(k):
        latent = tl.load(indices + token * k + j).to(tl.int64)
        weight = tl.load(values + token * k + j).to(tl.float32)
        row = tl.load(table + latent * stride_tm + offs * stride_td, mask=in_d, other=0.0)
        acc += weight * row.to(tl.float32)
    tl.store(out + token * d + offs, acc.to(out.dtype.element_ty), mask=in_d)


@triton.autotune(
    configs=_configs({"BLOCK_K": 16, "BLOCK_D": 64}, {"BLOCK_K": 32, "BLOCK_D": 64}, {"BLOCK_K": 16, "BLOCK_D": 128}),
    key=["d", "k"],
)
@triton.jit
def _gathered_dot_kernel(
    rows, columns, indices, out, k, d, stride_rn, stride_rd, stride_cd, stride_cm,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    in_k = offs_k < k
    latents = tl.load(indices + token * k + offs_k, mask=in_k, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        offs_d = start + tl.arange(0, BLOCK_D)
        in_d = offs_d < d
        x = tl.load(rows + token * stride_rn + offs_d * stride_rd, mask=in_d, other=0.0).to(tl.float32)
        w = tl.load(
            columns + offs_d[None, :] * stride_cd + latents[:, None] * stride_cm,
            mask=in_k[:, None] & in_d[None, :], other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * x[None, :], axis=1)  # elementwise + sum: exact fp32, no bf16 tl.dot
    tl.store(out + token * k + offs_k, acc, mask=in_k)


@triton.autotune(configs=_configs({"BLOCK_D": 128}, {"BLOCK_D": 64}, {"BLOCK_D": 256}), key=["d"])
@triton.jit
def _segment_sum_kernel(
    values, order, segment_starts, rows, out, k, d, stride_rn, stride_rd, BLOCK_D: tl.constexpr
):
    latent = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    in_d = offs < d
    start = tl.load(segment_starts + latent)
    end = tl.load(segment_starts + latent + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for entry in range(start, end):
        flat = tl.load(order + entry)
        weight = tl.load(values + flat).to(tl.float32)
        row = tl.load(rows + (flat // k) * stride_rn + offs * stride_rd, mask=in_d, other=0.0)
        acc += weight * row.to(tl.float32)
    tl.store(out + latent * d + offs, acc.to(out.dtype.element_ty), mask=in_d)


def _check_indices(indices: Tensor, n_latents: int) -> None:
    if INTERPRET and indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < n_latents):
        raise IndexError(
            f"latent ids must lie in [0, {n_latents}); got [{int(indices.min())}, {int(indices.max())}]"
        )


def gather_sum(values: Tensor, indices: Tensor, table: Tensor) -> Tensor:
    """``out[i] = sum_j values[i, j] * table[indices[i, j]]`` in ``table.dtype``, fp32 accumulation."""
    n, k = indices.shape
    m, d = table.shape
    _check_indices(indices, m)
    out = torch.empty(n, d, dtype=table.dtype, device=table.device)
    grid = lambda meta: (n, triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
    _gather_sum_kernel[grid](
        values.contiguous(), indices.contiguous(), table, out, k, d, table.stride(0), table.stride(1)
    )
    return out


def gathered_dot(rows: Tensor, columns: Tensor, indices: Tensor) -> Tensor:
    """``out[i, j] = rows[i] . columns[:, indices[i, j]]`` in fp32."""
    n, k = indices.shape
    d, m = columns.shape
    _check_indices(indices, m)
    out = torch.empty(n, k, dtype=torch.float32, device=rows.device)
    grid = lambda meta: (n, triton.cdiv(k, meta["BLOCK_K"]))  # noqa: E731
    _gathered_dot_kernel[grid](
        rows, columns, indices.contiguous(), out, k, d,
        rows.stride(0), rows.stride(1), columns.stride(0), columns.stride(1),
    )
    return out


def scatter_matmul(values: Tensor, indices: Tensor, rows: Tensor, n_out: int) -> Tensor:
    """``S^T @ rows`` (``S``: ``n x n_out`` with ``values`` at ``indices``) in ``rows.dtype``, deterministic."""
    n, k = indices.shape
    d = rows.shape[1]
    _check_indices(indices, n_out)
    flat = indices.reshape(-1)
    order = torch.argsort(flat, stable=True)
    segment_starts = torch.zeros(n_out + 1, dtype=torch.int64, device=rows.device)
    segment_starts[1:] = torch.cumsum(torch.bincount(flat, minlength=n_out), 0)
    out = torch.empty(n_out, d, dtype=rows.dtype, device=rows.device)
    grid = lambda meta: (n_out, triton.cdiv(d, meta["BLOCK_D"]))  # noqa: E731
    _segment_sum_kernel[grid](
        values.contiguous().reshape(-1), order, segment_starts, rows, out, k, d, rows.stride(0), rows.stride(1)
    )
    return out
