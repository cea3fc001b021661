"""Checks of the Triton kernels against the PyTorch path (fp32, bf16): under Triton's CPU interpreter in
CI, and on a real GPU where there is one (``benchmarks/gpu_check.sh`` runs this file there).

Not collected on its own (the name does not start with ``test_``): ``test_triton_ops.py`` runs it in
a subprocess with ``TRITON_INTERPRET=1``, which must be set before Triton itself is imported (its
own ``tl.zeros`` & co. are ``@triton.jit`` functions), so it cannot be switched on inside a test
process that may already have imported Triton (sparsify does). The references are always the
PyTorch sparse ops on CPU tensors, which share no code with the kernels.
"""

import os
import sys
from types import ModuleType
from typing import NamedTuple

import pytest
import torch

from hybrid_sae_ext.kernels import get_kernels, primitives

pytest.importorskip("triton")
DTYPES = [torch.float32, torch.bfloat16]


class Kernels(NamedTuple):
    module: ModuleType
    device: str
    """``cpu`` under the interpreter, ``cuda`` on a GPU."""


@pytest.fixture(scope="module")
def kernels() -> Kernels:
    """The kernels module and the device its checks run on: interpreted on CPU, or compiled on CUDA."""
    interpreting = bool(os.environ.get("TRITON_INTERPRET"))
    if not interpreting and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 (the subprocess of test_triton_ops.py) or a CUDA device")
    from hybrid_sae_ext.kernels import triton_ops

    assert triton_ops.INTERPRET == interpreting
    return Kernels(triton_ops, "cpu" if interpreting else "cuda")


def _problem(dtype: torch.dtype, n: int = 6, d: int = 150, m: int = 24, k: int = 5, seed: int = 0):
    """CPU tensors with random values (never zeros) and sorted latent ids, duplicates included."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=gen).to(dtype)
    table = torch.randn(m, d, generator=gen).to(dtype)
    values = torch.randn(n, k, generator=gen).to(dtype)
    indices = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)]).sort(dim=-1).values
    indices[0, 1] = indices[0, 0] = 3  # duplicates must add up
    return rows, table, values, indices


def _on(device: str, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device) for t in tensors]


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[torch.bfloat16 if got.dtype == torch.bfloat16 else torch.float32]
    torch.testing.assert_close(got.cpu().float(), expected.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_sum_matches_torch(kernels: Kernels, dtype: torch.dtype) -> None:
    _, table, values, indices = _problem(dtype)
    expected = primitives.gather_sum(values, indices, table)
    v, i, t = _on(kernels.device, values, indices, table)
    _close(kernels.module.gather_sum(v, i, t), expected)
    strided = t.t().contiguous().t()  # same values, column-major: the encoder's W_enc.t()
    _close(kernels.module.gather_sum(v, i, strided), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gathered_dot_matches_torch(kernels: Kernels, dtype: torch.dtype) -> None:
    rows, table, _, indices = _problem(dtype)
    for columns in (table.t(), table.t().contiguous()):  # the decoder's W_dec.t() and an encoder-like W_enc
        expected = primitives.gathered_dot(rows, columns, indices)
        got = kernels.module.gathered_dot(*_on(kernels.device, rows, columns, indices))
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_sum_matches_torch_and_is_deterministic(kernels: Kernels, dtype: torch.dtype) -> None:
    rows, table, values, indices = _problem(dtype)
    m = table.shape[0]
    v, i, r = _on(kernels.device, values, indices, rows)
    got = kernels.module.scatter_matmul(v, i, r, m)
    _close(got, primitives.scatter_matmul(values, indices, rows, m))
    assert (got.cpu()[torch.bincount(indices.reshape(-1), minlength=m) == 0] == 0).all()  # empty segments are zero
    assert torch.equal(got, kernels.module.scatter_matmul(v, i, r, m))


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return ((got.cpu().double() - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_at_training_shape_on_cuda(kernels: Kernels, dtype: torch.dtype) -> None:
    """At the GPU benchmark's shape (too slow for the interpreter), against fp64 references on CPU:
    fp32 storage within 1e-5 relative error (fp32 accumulation), bf16 within bf16 output rounding."""
    if kernels.device != "cuda":
        pytest.skip("the interpreter is too slow at this shape")
    n, d, m, k = 4096, 768, 32768, 128
    gen = torch.Generator().manual_seed(7)
    rows, table = torch.randn(n, d, generator=gen).to(dtype), torch.randn(m, d, generator=gen).to(dtype)
    values = torch.randn(n, k, generator=gen).to(dtype)
    indices = torch.randint(0, m, (n, k), generator=gen).sort(dim=-1).values
    v, i, r, t = _on("cuda", values, indices, rows, table)
    v64, r64, t64 = values.double(), rows.double(), table.double()
    bound = 1e-5 if dtype == torch.float32 else 8e-3
    assert _relative_error(kernels.module.gather_sum(v, i, t), primitives.gather_sum(v64, indices, t64)) < bound
    assert _relative_error(kernels.module.gather_sum(v, i, t.t().contiguous().t()),
                           primitives.gather_sum(v64, indices, t64)) < bound
    dot_reference = primitives.gathered_dot(r64, t64.t(), indices)
    assert _relative_error(kernels.module.gathered_dot(r, t.t(), i), dot_reference) < 1e-5
    assert _relative_error(kernels.module.gathered_dot(r, t.t().contiguous(), i), dot_reference) < 1e-5
    weight_gradient = kernels.module.scatter_matmul(v, i, r, m)
    assert _relative_error(weight_gradient, primitives.scatter_matmul(v64, indices, r64, m)) < bound
    assert torch.equal(weight_gradient, kernels.module.scatter_matmul(v, i, r, m))  # no float atomics


def test_sparse_step_gradients_through_triton_match_torch(kernels: Kernels, monkeypatch) -> None:
    """A whole encode + decode + backward through the kernels, against the PyTorch path on CPU."""
    gen = torch.Generator().manual_seed(3)
    x, W_enc, W_dec = (torch.randn(*s, generator=gen) for s in ((5, 12), (12, 20), (20, 12)))
    bias = torch.randn(20, generator=gen)
    dead = torch.arange(20) % 3 == 0

    def step(device: str) -> list[torch.Tensor]:
        params = [t.to(device).requires_grad_() for t in (x, W_enc, W_dec)]
        ops = get_kernels("sparse")
        sel, aux = ops.encode(params[0], params[1], bias.to(device), 4, dead.to(device), 2)
        loss = ops.decode(torch.relu(sel.values), sel.indices, params[2]).pow(2).sum()
        loss = loss + ops.decode(aux.values, aux.indices, params[2]).pow(2).sum()
        return [t.cpu() for t in (loss.detach(), *torch.autograd.grad(loss, params))]

    reference = step("cpu")
    if kernels.device == "cpu":  # route the CPU tensors through the interpreted kernels
        monkeypatch.setattr(primitives, "use_triton", lambda *tensors: True)
        monkeypatch.setitem(sys.modules, "hybrid_sae_ext.kernels.triton_ops", kernels.module)
    else:
        assert primitives.use_triton(torch.zeros(1, device="cuda"))
    for got, expected in zip(step(kernels.device), reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_out_of_range_latents_are_named(kernels: Kernels) -> None:
    if kernels.device != "cpu":
        pytest.skip("range checks are the interpreter's (on CUDA an out-of-range load faults)")
    _, table, values, indices = _problem(torch.float32)
    with pytest.raises(IndexError, match=r"\[0, 24\)"):
        kernels.module.gather_sum(values, indices + 24, table)
