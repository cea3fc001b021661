"""Session fixtures shared across test folders: a tiny comparison results folder made by a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results


@pytest.fixture(scope="session")
def tiny_comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("comparison") / "out"
    cfg = ComparisonConfig(
        n_features=128, tokens=4096, context_size=33, batch_size=4, epochs=1, k=[4, 8, 16],
        l1_coefficient=[1.0, 10.0], eval_batches=2, out=str(out),
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
