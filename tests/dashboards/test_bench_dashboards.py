"""The dashboards benchmark runs end to end on a tiny SAE and reports what it measured, consistently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid_sae_ext.dashboards.records import META_FILE


def test_benchmark_reports_what_it_measured(hybrid_sae_path: Path, tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("bench_dashboards")
    out, results = tmp_path / "dashboards", tmp_path / "results"
    result = bench.main(["--sae_path", str(hybrid_sae_path), "--tokens", "600", "--out", str(out),
                         "--results", str(results), "--repeats", "3"])
    assert json.loads((results / f"{result['device']}-dashboards.json").read_text()) == result
    meta = json.loads((out / META_FILE).read_text())
    assert (result["d_sae"], result["tokens"]) == (48, meta["tokens"]) and result["tokens"] >= 600
    pages = [out / "site" / "index.html", *(out / "site" / "latents").glob("*.html")]
    assert len(pages) == 49 and result["largest_page_bytes"] == max(p.stat().st_size for p in pages)
    assert result["build_vs_floor"] == pytest.approx(result["build_seconds"] / result["floor_seconds_one_pass"])
    assert 0 < result["phase_seconds"]["statistics"] < result["build_seconds"]
    latency = result["api_activations"]
    assert latency["tokens"] == 128 and 0 < latency["http_median_ms"] <= latency["http_p95_ms"]
    assert result["peak_rss_mib"] > 0 and "load average" in result["load"]
    table = (results / f"{result['device']}-dashboards.md").read_text()
    assert f"| largest page | {result['largest_page_bytes']:,} bytes |" in table
    assert f"{latency['http_median_ms']:.1f} ms | < 100 ms |" in table
