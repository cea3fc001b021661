"""Fixtures shared across test folders: a tiny comparison results folder made by a real run, the
benchmark scripts loaded by path (they are scripts, not package modules), and the CPU kernels built
once up front."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session", autouse=True)
def _build_native_kernels() -> None:
    """On a fresh machine the first use compiles ``kernels/csrc`` (~25 s): do it here, once, so no test
    with a time limit (a notebook, a subprocess CLI) pays for it; later processes load the cached build."""
    from hybrid_sae_ext.kernels.native import native_kernels

    native_kernels()


@pytest.fixture
def load_benchmark() -> Callable[[str], ModuleType]:
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def tiny_comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("comparison") / "out"
    cfg = ComparisonConfig(  # run_comparison.py --debug --seeds 0 1 2, all architectures, tiny sizes
        n_features=64, tokens=1024, context_size=17, batch_size=4, epochs=1, target_l0=4, seeds=[0, 1, 2],
        search_probes=2, heldout_tokens=512, curve_points=2, eval_batches=1, out=str(out),
    )
    results = run_comparison(cfg)
    write_results(results, out)
    return out, results


@pytest.fixture(scope="session")
def tiny_scaling(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hybrid_sae_ext.experiments.sweep import SweepConfig, derive_scaling_laws

    root = tmp_path_factory.mktemp("scaling")
    derive_scaling_laws(SweepConfig(
        out=str(root / "out"), cache_dir=str(root / "cache"), batch_size=512, widths=[32, 64, 128, 256], ks=[4, 8],
        token_checkpoints=[2048, 4096, 8192, 16384], heldout_tokens=2048, lr=4e-3, n_boot=20, progress=False,
    ))
    return root / "out"
