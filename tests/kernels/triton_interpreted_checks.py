"""Checks of the Triton kernels, run by Triton's CPU interpreter, against the PyTorch path (fp32, bf16).

Not collected on its own (the name does not start with ``test_``): ``test_triton_ops.py`` runs it in
a subprocess with ``TRITON_INTERPRET=1``, which must be set before Triton itself is imported (its
own ``tl.zeros`` & co. are ``@triton.jit`` functions), so it cannot be switched on inside a test
process that may already have imported Triton (sparsify does).
"""

import os
import sys
from types import ModuleType

import pytest
import torch

from hybrid_sae_ext.kernels import get_kernels, primitives

pytest.importorskip("triton")
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def interpreted() -> ModuleType:
    """The kernels module, imported in a process that set ``TRITON_INTERPRET=1`` before importing Triton."""
    if not os.environ.get("TRITON_INTERPRET"):
        pytest.skip("runs in the interpreter subprocess of test_triton_ops.py")
    from hybrid_sae_ext.kernels import triton_ops

    assert triton_ops.INTERPRET
    return triton_ops


def _problem(dtype: torch.dtype, n: int = 6, d: int = 150, m: int = 24, k: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=gen).to(dtype)
    table = torch.randn(m, d, generator=gen).to(dtype)
    values = torch.randn(n, k, generator=gen).to(dtype)
    indices = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)]).sort(dim=-1).values
    indices[0, 1] = indices[0, 0] = 3  # duplicates must add up
    return rows, table, values, indices


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[torch.bfloat16 if got.dtype == torch.bfloat16 else torch.float32]
    torch.testing.assert_close(got.float(), expected.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_sum_matches_torch(interpreted: ModuleType, dtype: torch.dtype) -> None:
    _, table, values, indices = _problem(dtype)
    _close(interpreted.gather_sum(values, indices, table), primitives.gather_sum(values, indices, table))
    strided = table.t().contiguous().t()  # same values, column-major: the encoder's W_enc.t()
    _close(interpreted.gather_sum(values, indices, strided), primitives.gather_sum(values, indices, table))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gathered_dot_matches_torch(interpreted: ModuleType, dtype: torch.dtype) -> None:
    rows, table, _, indices = _problem(dtype)
    for columns in (table.t(), table.t().contiguous()):  # the decoder's W_dec.t() and an encoder-like W_enc
        got = interpreted.gathered_dot(rows, columns, indices)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, primitives.gathered_dot(rows, columns, indices), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_segment_sum_matches_torch_and_is_deterministic(interpreted: ModuleType, dtype: torch.dtype) -> None:
    rows, table, values, indices = _problem(dtype)
    m = table.shape[0]
    got = interpreted.scatter_matmul(values, indices, rows, m)
    _close(got, primitives.scatter_matmul(values, indices, rows, m))
    assert (got[torch.bincount(indices.reshape(-1), minlength=m) == 0] == 0).all()  # empty segments are zero
    assert torch.equal(got, interpreted.scatter_matmul(values, indices, rows, m))


def test_sparse_step_gradients_through_triton_match_torch(interpreted: ModuleType, monkeypatch) -> None:
    """A whole encode + decode + backward with the interpreted kernels in place of the PyTorch ones."""
    gen = torch.Generator().manual_seed(3)
    x, W_enc, W_dec = (torch.randn(*s, generator=gen) for s in ((5, 12), (12, 20), (20, 12)))
    bias = torch.randn(20, generator=gen)
    dead = torch.arange(20) % 3 == 0

    def step() -> list[torch.Tensor]:
        params = [t.clone().requires_grad_() for t in (x, W_enc, W_dec)]
        kernels = get_kernels("sparse")
        sel, aux = kernels.encode(params[0], params[1], bias, 4, dead, 2)
        loss = kernels.decode(torch.relu(sel.values), sel.indices, params[2]).pow(2).sum()
        loss = loss + kernels.decode(aux.values, aux.indices, params[2]).pow(2).sum()
        return [loss.detach(), *torch.autograd.grad(loss, params)]

    reference = step()
    monkeypatch.setattr(primitives, "use_triton", lambda *tensors: True)
    monkeypatch.setitem(sys.modules, "hybrid_sae_ext.kernels.triton_ops", interpreted)
    for got, expected in zip(step(), reference):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_out_of_range_latents_are_named(interpreted: ModuleType) -> None:
    _, table, values, indices = _problem(torch.float32)
    with pytest.raises(IndexError, match=r"\[0, 24\)"):
        interpreted.gather_sum(values, indices + 24, table)
