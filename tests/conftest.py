"""Session fixtures shared across test folders: a tiny comparison results folder made by a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results


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
