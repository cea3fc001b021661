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
