"""The C++ gathered dot (``csrc/cpu_kernels.cpp``) against a float64 einsum, and ``primitives.gathered_dot``
sending exactly the fp32, latent-major case to it. (The native top-k is tested in ``test_topk.py``.)"""

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


@pytest.mark.parametrize("block_rows", [1, 7, 1000])
@pytest.mark.parametrize(("n", "d", "m", "k"), [(50, 64, 300, 7), (33, 20, 40, 40), (9, 1, 5, 3), (64, 515, 128, 16)])
def test_gathered_dot_matches_float64(n: int, d: int, m: int, k: int, block_rows: int) -> None:
    """Widths below, at and above the 16 lanes (a tail), every latent picked (k = m) and repeated picks;
    token blocks of one row, of seven (the last one short) and one block for all rows."""
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
    with pytest.raises(RuntimeError, match="block_rows must be at least 1"):
        kernels.gathered_dot(torch.zeros(2, 4), torch.zeros(5, 4), torch.tensor([[0, 4], [1, 2]]), 0)


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
    for columns, native_used in [
        (latent_major.t(), True),  # W_enc / W_dec.t() as the hybrid stores them
        (latent_major.t().contiguous(), False),  # columns strided: the PyTorch path
    ]:
        calls.clear()
        got = primitives.gathered_dot(rows, columns, indices)
        assert calls == ([5] if native_used else [])
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    calls.clear()
    got = primitives.gathered_dot(rows.double(), latent_major.double().t(), indices)  # float64: PyTorch path
    assert not calls
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_first_build_says_so_on_one_line_and_a_cached_one_is_silent(tmp_path) -> None:
    """A fresh extension cache: one line before the ~40 s compile; the same cache again: nothing at all."""
    load = "from hybrid_sae_ext.kernels.native import native_kernels; assert native_kernels() is not None"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[2])}
    first, second = (subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True,
                                    timeout=900, check=True) for _ in range(2))
    assert first.stderr.splitlines() == ["hybrid_sae_ext: building the C++ kernels (once per machine, ~40 s)"]
    assert second.stderr == ""
