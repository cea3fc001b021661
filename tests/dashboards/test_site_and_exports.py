"""The static site (self-contained, small pages), the exports' field mapping, and the build's input checks."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_sae_ext.dashboards.build import build_dashboards
from hybrid_sae_ext.dashboards.config import DashboardConfig
from hybrid_sae_ext.folders import folder_lock
from hybrid_sae_ext.dashboards.records import DashboardData
from hybrid_sae_ext.dashboards.render import PAGE_LIMIT_BYTES
from tests.dashboards.conftest import dashboard_config

REPO = Path(__file__).resolve().parents[2]


def test_site_pages_are_small_and_reference_only_local_files(hybrid_dashboards: Path) -> None:
    site = hybrid_dashboards / "site"
    pages = [site / "index.html", *sorted((site / "latents").glob("*.html"))]
    assert len(pages) == 1 + DashboardData(hybrid_dashboards).d_sae
    for page in pages:
        text = page.read_text()
        assert len(text.encode()) < PAGE_LIMIT_BYTES
        for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
            assert not re.match(r"[a-z]+://|//", ref), f"{page.name} refers to {ref}"
            if not ref.startswith("data:"):
                assert (page.parent / ref).resolve().is_file(), f"{page.name}: {ref} is missing"
    for script in (site / "assets").glob("*.js"):
        assert not re.search(r"https?://", script.read_text()), script.name


def test_saedashboard_and_neuronpedia_exports_map_the_record_fields(hybrid_dashboards: Path) -> None:
    data = DashboardData(hybrid_dashboards)
    latent = int(data.stats["count"].argmax())
    record = data.record(latent)
    batch = json.loads((hybrid_dashboards / "exports" / "saedashboard" / "batch-0.json").read_text())
    assert batch["model_id"] == data.meta["model_name"] and batch["layer"] == 1
    feature = next(f for f in batch["features"] if f["feature_index"] == latent)
    assert feature["frac_nonzero"] == pytest.approx(record["density"])
    assert feature["freq_hist_data_bar_heights"] == record["histogram"]["counts"]
    assert feature["pos_str"] == [t["token"] for t in record["logits"]["positive"]]
    assert feature["neg_values"] == [t["value"] for t in record["logits"]["negative"]]
    assert len(feature["activations"]) == len(record["top_examples"]) + len(record["quantile_examples"])
    first = feature["activations"][0]
    assert first["tokens"] == record["top_examples"][0]["tokens"]
    assert first["values"][first["qualifying_token_index"]] == record["top_examples"][0]["activation"]
    source = hybrid_dashboards / "exports" / "neuronpedia" / "hybrid-sae-ext-tiny-lm" / f"1-hybrid-{data.d_sae}"
    for name in ("model.jsonl", "source.jsonl", "sourceset.jsonl", "release.jsonl"):
        assert json.loads((source / name).read_text())
    rows = [json.loads(line) for line in gzip.decompress((source / "features" / "batch-0.jsonl.gz").read_bytes()).splitlines()]
    row = next(r for r in rows if r["index"] == str(latent))
    assert row["maxActApprox"] == record["max"]
    assert row["topkCosSimIndices"] == [n["latent"] for n in record["decoder_neighbours"]]
    acts = [json.loads(line) for line in gzip.decompress((source / "activations" / "batch-0.jsonl.gz").read_bytes()).splitlines()]
    mine = [a for a in acts if a["index"] == str(latent)]
    assert len(mine) == len(feature["activations"]) and mine[0]["maxValue"] == max(first["values"])


def test_bad_build_inputs_are_refused_before_any_work(hybrid_sae_path: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "no-sae").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{not json")
    cases = [
        (dict(tokens=0), "tokens must be >= 1, got tokens=0"),
        (dict(sample_size=4), "sample_size=4 must be >= quantile_groups x examples_per_group=8"),
        (dict(out=""), "out must be a path|the path is empty"),
        (dict(out=str(tmp_path / "a-file" / "out")), "a-file. is a file, not a folder"),
        (dict(out="/proc/self/dashboards"), "cannot create files in"),
        (dict(sae_path=str(tmp_path / "no-sae")), "no SAE config here"),
        (dict(sae_path=str(tmp_path / "broken")), "broken/cfg.json: not valid JSON"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            build_dashboards(dashboard_config(overrides.pop("sae_path", hybrid_sae_path),
                                              overrides.pop("out", tmp_path / "out"), **overrides))
    assert not (tmp_path / "out" / "stats.safetensors").exists()


def test_a_second_builder_on_a_locked_folder_is_refused(hybrid_sae_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "dashboard folder"):
        with pytest.raises(ValueError, match=rf"dashboard folder '{out}' is in use by pid {os.getpid()}"):
            build_dashboards(dashboard_config(hybrid_sae_path, out))
    assert not (out / "stats.safetensors").exists()


def test_cli_prints_one_line_error_for_bad_input(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hybrid_sae_ext", "dashboards", "--sae_path",
                             str(tmp_path), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'cfg.json'}: no SAE config here; "
                                                  "--sae_path must be a folder written by save_inference_model"]


def test_config_is_validated_at_construction() -> None:
    with pytest.raises(ValueError, match="dense_density must be in"):
        DashboardConfig(sae_path="x", out="y", dense_density=0)
