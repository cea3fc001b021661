"""The comparison experiment runs end to end on the embedded default and writes its table and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sae_lens import SAE

from hybrid_sae_ext.experiments.comparison import ComparisonConfig


def test_comparison_end_to_end(tiny_comparison: tuple[Path, dict[str, Any]]) -> None:
    out, results = tiny_comparison

    table = {row["architecture"]: row for row in results["table"]}
    assert set(table) == {"vanilla", "gated", "ksparse", "hybrid"}
    assert table["ksparse"]["time_vs_ksparse"] == 1.0
    assert table["ksparse"]["k"] == 8 and table["hybrid"]["l0"] <= 8
    assert len(results["runs"]) == 3 + 3 + 2 + 2
    clean, zero = results["eval"]["ce_loss_clean"], results["eval"]["ce_loss_zero_ablation"]
    assert clean < table["hybrid"]["ce_loss_with_sae"] < zero  # a trained hybrid spliced in
    for row in results["runs"]:
        assert 0.0 <= row["fvu"] and row["train_seconds"] > 0 and len(row["curve"]) == results["steps"]
        loaded = SAE.load_from_disk(str(out / "saes" / row["run"]))
        assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"

    assert json.loads((out / "comparison.json").read_text())["table"]
    assert "| hybrid | k=8 |" in (out / "comparison.md").read_text()
    for figure in ("frontier_l0_fvu", "frontier_l0_ce_recovered", "training_curves"):
        assert (out / f"{figure}.png").stat().st_size > 10_000 and (out / f"{figure}.svg").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architectures": ["hybird"]}, "Unknown SAE architecture 'hybird'; allowed: .*hybrid"),
        ({"k": [0, 8]}, r"1 <= k <= n_features=4096, got \[0, 8\]"),
        ({"n_features": 0}, "n_features must be >= 1, got 0"),
        ({"context_size": 1}, "context_size must be >= 2, got 1"),
    ],
)
def test_bad_comparison_config_is_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ComparisonConfig(**overrides)
