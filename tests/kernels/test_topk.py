"""topk_indices (native, halving and grouped top-k) against torch.topk: the same set on tie-free rows, the
same values with ties, infinities and NaN, at widths that take several halving levels (or native groups,
with and without a partial last round) and widths that cannot."""

from __future__ import annotations

import shutil
import types
import warnings
from pathlib import Path

import pytest
import torch

from hybrid_sae_ext.kernels import native, topk
from hybrid_sae_ext.kernels.topk import GROUP, GROUPED_MIN_WIDTH, HALVING_MIN_WIDTH, sorted_topk_indices, topk_indices

METHODS = ["native", "halving", "grouped"]
HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


@pytest.fixture(autouse=True)
def _native_must_be_built(request: pytest.FixtureRequest) -> None:
    """A ``native`` test must run the kernel, not the halving fallback (where a compiler exists, a failed
    build is a failure; without one the native cases are skipped)."""
    if "native" in request.node.name:
        if not HAS_COMPILER or native.disabled():
            pytest.skip("no C++ compiler (or HYBRID_SAE_NATIVE=0): the native top-k is not built here")
        assert native.native_kernels() is not None, "the native top-k kernel failed to build"


def _check_same_top_values(scores: torch.Tensor, k: int, method: str) -> torch.Tensor:
    """The chosen entries are k distinct positions holding exactly the k largest values of each row."""
    indices = topk_indices(scores, k, method)
    assert indices.shape == (scores.shape[0], k)
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all(), "an index is chosen twice"
    chosen = scores.gather(1, indices).float().sort(-1, descending=True).values
    expected = scores.topk(k, dim=-1).values.float()
    torch.testing.assert_close(chosen, expected, rtol=0, atol=0, equal_nan=True)
    return indices


@pytest.mark.parametrize(
    ("width", "k"),
    [(1024, 8), (1024, 3), (768, 6), (4096, 40), (2 * HALVING_MIN_WIDTH * 5, 5), (1000, 7), (999, 5), (64, 64),
     (GROUPED_MIN_WIDTH * 5, 5), (GROUP * 300, 60)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_same_indices_as_torch_topk_without_ties(width: int, k: int, dtype: torch.dtype, method: str) -> None:
    scores = torch.randn(37, width, generator=torch.Generator().manual_seed(width + k), dtype=dtype)
    indices = _check_same_top_values(scores, k, method)
    expected = scores.topk(k, dim=-1).indices.sort(-1).values
    assert torch.equal(indices.sort(-1).values, expected)


@pytest.mark.parametrize("method", METHODS)
def test_the_top_values_of_a_row_may_all_share_one_pair_or_one_half(method: str) -> None:
    """Adversarial layouts: the k largest at j and j + width/2, all in one half or one group, or in
    every other position (each group then holds several)."""
    width, k = 1024, 8
    scores = torch.randn(4, width, generator=torch.Generator().manual_seed(0))
    scores[0, :4] = scores[0, width // 2 : width // 2 + 4] = 10.0 + torch.arange(4.0)
    scores[1, width // 2 : width // 2 + k] = 5.0 + torch.arange(float(k))
    scores[2, 1::2] += 100.0  # every large score in an odd position
    scores[3] = torch.arange(float(width)).flip(0)  # strictly decreasing: the top k share one group
    _check_same_top_values(scores, k, method)
    expected = scores.topk(k, dim=-1).indices.sort(-1).values
    assert torch.equal(topk_indices(scores, k, method).sort(-1).values, expected)


def _nan_with_sign_bit(dtype: torch.dtype) -> torch.Tensor:
    """(Arithmetic negation may return the positive NaN, e.g. in bf16.)"""
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[dtype]
    nan = torch.tensor([float("nan")], dtype=dtype).view(bits)
    return (nan | torch.tensor([torch.iinfo(bits).min], dtype=bits)).view(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("method", METHODS)
def test_ties_infinities_and_nan_give_the_same_values_as_torch_topk(dtype: torch.dtype, method: str) -> None:
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 12, (64, 2048), generator=gen).to(dtype)  # many ties at the k-th place
    scores[:8] = float("-inf")
    scores[:8, :3] = 1.0  # fewer finite scores than k: the rest of the top is -inf
    scores[8:16, 100:110] = float("inf")
    scores[16:20, 7] = float("nan")  # counts as the largest, as in torch.topk
    scores[20:24, 9] = _nan_with_sign_bit(dtype)  # so does a NaN with its sign bit set
    assert torch.signbit(scores[20, 9])
    for k in (1, 16, 100):
        _check_same_top_values(scores, k, method)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_native_indices_come_out_ascending_and_sorted_topk_sorts_the_others(dtype: torch.dtype) -> None:
    scores = torch.randn(33, 3000, generator=torch.Generator().manual_seed(2)).to(dtype)
    if HAS_COMPILER and not native.disabled():
        assert (topk_indices(scores, 40, "native").diff(dim=-1) > 0).all()
    expected = scores.topk(40, dim=-1).values.float()
    for method in METHODS:
        got = sorted_topk_indices(scores, 40, method)
        assert (got.diff(dim=-1) > 0).all()
        chosen = scores.gather(1, got).float().sort(-1, descending=True).values
        torch.testing.assert_close(chosen, expected, rtol=0, atol=0)


def test_without_the_kernel_native_falls_back_to_halving(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert native.native_kernels() is None
    halving_calls = []
    real_best_members = topk._best_members
    monkeypatch.setattr(topk, "_best_members", lambda *a: halving_calls.append(1) or real_best_members(*a))
    _check_same_top_values(torch.randn(5, 1024), 8, "native")
    _check_same_top_values(torch.randn(5, 1024), 8, "auto")
    assert len(halving_calls) >= 2


def test_a_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torch.utils import cpp_extension

    def no_compiler(**_: object) -> None:
        raise RuntimeError("no C++ compiler here")

    native._build.cache_clear()
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)  # the build must be attempted here
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: nothing built to load
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    try:
        with pytest.warns(RuntimeWarning, match="could not be built .*no C\\+\\+ compiler here"):
            assert native.native_kernels() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert native.native_kernels() is None  # the failure is remembered: no second warning
            _check_same_top_values(torch.randn(5, 1024), 8, "auto")
    finally:
        native._build.cache_clear()


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PyTorch's build lock is a plain file; a build killed mid-way leaves it and ``load`` would wait forever."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    stale_lock = native._build_directory(native.build_name()) / "lock"
    stale_lock.touch()
    loaded = types.ModuleType("built")

    def load(**_: object) -> types.ModuleType:
        assert not stale_lock.exists(), "the stale lock was still there when the build started"
        return loaded

    monkeypatch.setattr(cpp_extension, "load", load)
    native._build.cache_clear()
    try:
        assert native.native_kernels() is loaded
    finally:
        native._build.cache_clear()


def test_a_cached_build_loads_without_the_build_machinery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built library is imported directly: no lock, no ninja (which would recompile for a copy of the
    package at another path, as in the mutation check and spawned workers)."""
    from torch.utils import cpp_extension

    if native.disabled() or not native.is_built(native.build_name()):
        pytest.skip("no cached native build here (HYBRID_SAE_NATIVE=0 or no compiler)")

    def load(**_: object) -> None:
        raise AssertionError("cpp_extension.load was called for a cached build")

    monkeypatch.setattr(cpp_extension, "load", load)
    native._build.cache_clear()
    try:
        kernels = native.native_kernels()
        assert kernels is not None and hasattr(kernels, "sorted_topk_indices")
    finally:
        native._build.cache_clear()


def test_the_build_name_changes_with_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache shared by two machines must not load a binary built with another CPU's -march=native."""
    here = native.build_name()
    monkeypatch.setattr(native, "_cpu_signature", lambda: "flags: sse2")
    assert native.build_name() != here


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"k must be in \[0, width=8\], got k=9"):
        topk_indices(torch.zeros(2, 8), 9)
    with pytest.raises(ValueError, match="scores must be 2-D"):
        topk_indices(torch.zeros(8), 2)
    with pytest.raises(ValueError, match="method='radix' is not one of"):
        topk_indices(torch.zeros(2, 8), 2, "radix")
