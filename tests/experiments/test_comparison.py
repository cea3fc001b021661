"""The comparison experiment runs end to end on the embedded default and writes its table and figures."""

from __future__ import annotations

import json
from pathlib import Path

from sae_lens import SAE

from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results


def test_comparison_end_to_end(tmp_path: Path) -> None:
    cfg = ComparisonConfig(
        n_features=128, tokens=4096, context_size=33, batch_size=4, epochs=1, k=[4, 8, 16],
        l1_coefficient=[1.0, 10.0], eval_batches=2, out=str(tmp_path / "out"),
    )
    results = run_comparison(cfg)
    write_results(results, tmp_path / "out")

    table = {row["architecture"]: row for row in results["table"]}
    assert set(table) == {"vanilla", "gated", "ksparse", "hybrid"}
    assert table["ksparse"]["time_vs_ksparse"] == 1.0
    assert table["ksparse"]["k"] == 8 and table["hybrid"]["l0"] <= 8
    assert len(results["runs"]) == 3 + 3 + 2 + 2
    for row in results["runs"]:
        assert 0.0 <= row["fvu"] and row["train_seconds"] > 0 and len(row["curve"]) == results["steps"]
        loaded = SAE.load_from_disk(str(tmp_path / "out" / "saes" / row["run"]))
        assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"

    out = tmp_path / "out"
    assert json.loads((out / "comparison.json").read_text())["table"]
    assert "| hybrid | k=8 |" in (out / "comparison.md").read_text()
    for figure in ("frontier_l0_fvu", "frontier_l0_ce_recovered", "training_curves"):
        assert (out / f"{figure}.png").stat().st_size > 10_000 and (out / f"{figure}.svg").exists()
