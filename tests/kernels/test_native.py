"""The C++ gathered dot and residual dots (``csrc/cpu_kernels.cpp``) against float64 einsums, and the primitives
sending exactly the fp32 cases to them. (The native top-k is tested in ``test_topk.py``.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hybrid_sae_ext.kernels import native, primitives

pytestmark = pytest.mark.skipif(
    native.disabled() or (shutil.which("c++") is None and shutil.which("g++") is None),
    reason="no C++ compiler (or HYBRID_SAE_NATIVE=0): the native kernels are not built here",
)


def _kernels():
    kernels = native.native_kernels()
    assert kernels is not None, "the native kernels failed to build"
    return kernels


def _reference(rows: torch.Tensor, table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nd,nkd->nk", rows.double(), table.double()[indices])


@pytest.mark.parametrize("block_rows", [0, 1, 7, 1000])
@pytest.mark.parametrize(("n", "d", "m", "k"), [(50, 64, 300, 7), (33, 20, 40, 40), (9, 1, 5, 3), (64, 515, 128, 16)])
def test_gathered_dot_matches_float64(n: int, d: int, m: int, k: int, block_rows: int) -> None:
    """Widths below, at and above the 16 lanes (a tail), every latent picked (k = m) and repeated picks;
    token order (0), token blocks of one row, of seven (the last one short) and one block for all rows."""
    gen = torch.Generator().manual_seed(n + d)
    rows, table = torch.randn(n, d, generator=gen), torch.randn(m, d, generator=gen)
    indices = torch.randint(0, m, (n, k), generator=gen)
    indices[0] = indices[0, 0]  # one row picks the same latent k times
    got = _kernels().gathered_dot(rows, table, indices, block_rows)
    torch.testing.assert_close(got.double(), _reference(rows, table, indices), rtol=1e-5, atol=1e-5)


def test_gathered_dot_of_empty_inputs_and_bad_arguments() -> None:
    kernels = _kernels()
    assert kernels.gathered_dot(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, 0, dtype=torch.long), 2).shape == (3, 0)
    assert kernels.gathered_dot(torch.zeros(0, 4), torch.zeros(5, 4), torch.zeros(0, 2, dtype=torch.long), 2).shape == (0, 2)
    with pytest.raises(RuntimeError, match=r"outside \[0, m\)"):
        kernels.gathered_dot(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([[0, 5], [1, 2]]), 2)
    with pytest.raises(RuntimeError, match=r"outside \[0, m\)"):
        kernels.gathered_dot(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([[0, 5], [1, 2]]), 0)
    with pytest.raises(RuntimeError, match="block_rows must be 0"):
        kernels.gathered_dot(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([[0, 4], [1, 2]]), -1)


def test_primitives_send_only_fp32_latent_major_columns_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _kernels()
    calls = []
    counting = SimpleNamespace(gathered_dot=lambda *a: calls.append(a[-1]) or kernels.gathered_dot(*a))
    monkeypatch.setattr(primitives, "native_kernels", lambda: counting)
    monkeypatch.setattr(primitives, "NATIVE_BLOCK_BYTES", 5 * 24 * 4)  # blocks of 5 of the 12 rows of 24 floats
    gen = torch.Generator().manual_seed(0)
    rows, latent_major = torch.randn(12, 24, generator=gen), torch.randn(40, 24, generator=gen)
    indices = torch.randint(0, 40, (12, 5), generator=gen)
    want = _reference(rows, latent_major, indices)
    table_bytes = 40 * 24 * 4
    for columns, order_limit, block_rows in [
        (latent_major.t(), table_bytes, [0]),  # W_enc / W_dec.t() as the hybrid stores them; fits: token order
        (latent_major.t(), table_bytes - 1, [5]),  # a table above the limit: blocks of 5 rows
        (latent_major.t().contiguous(), table_bytes, []),  # columns strided: the PyTorch path
    ]:
        monkeypatch.setattr(primitives, "NATIVE_TOKEN_ORDER_TABLE_BYTES", order_limit)
        calls.clear()
        got = primitives.gathered_dot(rows, columns, indices)
        assert calls == block_rows
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    calls.clear()
    got = primitives.gathered_dot(rows.double(), latent_major.double().t(), indices)  # float64: PyTorch path
    assert not calls
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _residual_reference(codes, indices, table, centered) -> torch.Tensor:
    picked = table.double()[indices]
    residual = centered.double() - torch.einsum("nk,nkd->nd", codes.double(), picked)
    return torch.einsum("nd,nkd->nk", residual, picked)


@pytest.mark.parametrize(("n", "d", "m", "k"), [(50, 64, 300, 7), (33, 20, 40, 40), (9, 1, 5, 3), (40, 515, 128, 16)])
def test_residual_dots_match_float64(n: int, d: int, m: int, k: int) -> None:
    """Widths below, at and above the 16 lanes, every latent picked (k = m) and one row picking a latent k times."""
    gen = torch.Generator().manual_seed(n + d)
    codes, table = torch.randn(n, k, generator=gen), torch.randn(m, d, generator=gen)
    centered, indices = torch.randn(n, d, generator=gen), torch.randint(0, m, (n, k), generator=gen)
    indices[0] = indices[0, 0]
    got = _kernels().residual_dots(codes, indices, table, centered)
    torch.testing.assert_close(got.double(), _residual_reference(codes, indices, table, centered), rtol=1e-4, atol=1e-4)


def test_residual_dots_refuse_bad_arguments() -> None:
    kernels = _kernels()
    codes, table, centered = torch.zeros(2, 2), torch.zeros(5, 4), torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match=r"outside \[0, m\)"):
        kernels.residual_dots(codes, torch.tensor([[0, 5], [1, 2]]), table, centered)
    with pytest.raises(RuntimeError, match="shaped like codes"):
        kernels.residual_dots(codes, torch.tensor([[0, 1, 2], [1, 2, 3]]), table, centered)
    with pytest.raises(RuntimeError, match="centered must be"):
        kernels.residual_dots(codes, torch.tensor([[0, 1], [1, 2]]), table, torch.zeros(2, 3))


def test_primitive_residual_dots_use_the_kernel_for_fp32_only(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = _kernels()
    calls = []
    counting = SimpleNamespace(residual_dots=lambda *a: calls.append(1) or kernels.residual_dots(*a))
    monkeypatch.setattr(primitives, "native_kernels", lambda: counting)
    gen = torch.Generator().manual_seed(1)
    codes, table = torch.randn(12, 5, generator=gen), torch.randn(40, 24, generator=gen)
    centered, indices = torch.randn(12, 24, generator=gen), torch.randint(0, 40, (12, 5), generator=gen)
    want = _residual_reference(codes, indices, table, centered)
    torch.testing.assert_close(primitives.residual_dots(codes, indices, table, centered).double(), want,
                               rtol=1e-5, atol=1e-5)
    assert calls == [1]
    got = primitives.residual_dots(codes.double(), indices, table.double(), centered.double())  # PyTorch path
    assert calls == [1]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_csr_by_latent_equals_the_sorted_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ counting sort gives exactly the stable sort's CSR (rows by latent, token order within a row,
    duplicates kept), and int32 indices take the sort."""
    gen = torch.Generator().manual_seed(2)
    values, indices = torch.randn(30, 6, generator=gen), torch.randint(0, 50, (30, 6), generator=gen)
    indices[0] = indices[0, 0]  # one token picks the same latent six times
    native_csr = primitives._csr_by_latent(values, indices, 50)
    monkeypatch.setattr(primitives, "native_kernels", lambda: None)
    sorted_csr = primitives._csr_by_latent(values, indices, 50)
    for got, want in zip(native_csr, sorted_csr, strict=True):
        assert torch.equal(got, want)
    monkeypatch.undo()
    for got, want in zip(primitives._csr_by_latent(values, indices.int(), 50), sorted_csr, strict=True):
        assert torch.equal(got.long() if not got.is_floating_point() else got, want)


def test_a_first_build_says_so_on_one_line_and_a_cached_one_is_silent(tmp_path) -> None:
    """A fresh extension cache: one line before the ~40 s compile; the same cache again: nothing at all."""
    load = "from hybrid_sae_ext.kernels.native import native_kernels; assert native_kernels() is not None"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}
    first, second = (subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True,
                                    timeout=900, check=True) for _ in range(2))
    assert first.stderr.splitlines() == ["hybrid_sae_ext: building the C++ kernels (once per machine, ~40 s)"]
    assert second.stderr == ""
