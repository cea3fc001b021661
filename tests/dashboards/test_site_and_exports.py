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


def test_index_histogram_counts_every_latent_by_log_density(hybrid_dashboards: Path) -> None:
    data = DashboardData(hybrid_dashboards)
    index = (hybrid_dashboards / "site" / "index.html").read_text()
    counts = [int(c) for c in re.findall(r'<rect class="bar"[^>]* data-count="(\d+)"', index)]
    tokens = int(data.meta["tokens"])
    lowest = -4  # the axis starts at the decade of the smallest possible density, 1 / tokens
    assert 1e-4 <= 1 / tokens < 1e-3
    densities = [int(c) / tokens for c in data.stats["count"].tolist()]
    edges = [10 ** (lowest + i / 5) for i in range(-lowest * 5 + 1)]
    expected = [sum(1 for d in densities if low <= d < high or (high == 1 and d == 1))
                for low, high in zip(edges, edges[1:])]
    assert counts == expected
    assert sum(expected) + densities.count(0.0) == data.d_sae and densities.count(0.0) > 0


def test_example_windows_decode_characters_split_over_byte_tokens(hybrid_dashboards: Path) -> None:
    """A page's example rows decode a window's bytes as one text: a character split over two byte tokens shows
    whole on the token that completes it (not U+FFFD twice), and each token's bytes come along for the tooltip."""
    data = DashboardData(hybrid_dashboards)
    assert data.vocab_bytes is not None and len(data.vocab_bytes) == len(data.vocab)
    ascii_ids = [i for i, text in enumerate(data.vocab) if text.isascii() and text][:3]
    first, second = ascii_ids[0], ascii_ids[1]
    data.vocab_bytes[first], data.vocab_bytes[second] = "63 c3", "a9"  # "c" + half of "é", then its other half
    window = data._window_tokens([ascii_ids[2], first, second])
    assert window["tokens"] == [data.vocab[ascii_ids[2]], "c", "é"]
    assert window["token_bytes"][1:] == ["63 c3", "a9"]
    for record in filter(None, (data.record(latent) for latent in range(data.d_sae))):
        for example in record["top_examples"]:
            text = bytes.fromhex(" ".join(example["token_bytes"])).decode("utf-8", errors="replace")
            assert "".join(example["tokens"]) == text and len(example["tokens"]) == len(example["values"])


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


# Neuronpedia's database schema (hijohnnylin/neuronpedia, apps/webapp/prisma/schema.prisma): per table, the
# columns with no default that are neither optional (``?``) nor relations, which its importer passes straight
# to ``createMany`` (so a missing one fails the import), and the list columns whose default is ``[]``.
NEURONPEDIA_REQUIRED = {
    "model.jsonl": {"id", "creatorId", "layers", "neuronsPerLayer", "owner"},
    "source.jsonl": {"id", "modelId", "setName", "creatorId"},
    "sourceset.jsonl": {"modelId", "name", "description", "creatorName", "creatorId"},
    "release.jsonl": {"name", "description", "creatorName", "creatorId"},
    "features": {"modelId", "layer", "index"},
    "activations": {"tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue", "values",
                    "creatorId"},
}
NEURONPEDIA_LIST_DEFAULTS = {"activations": {"dfaValues", "zValues", "lossValues"},
                             "features": {"vector", "topkCosSimIndices", "topkCosSimValues", "neg_str", "pos_str"}}
NEURONPEDIA_MODEL_ID = re.compile(r"^[a-z0-9_-]+$")  # the schema's zod rule for Model.id, lowercased by it


def _jsonl_gz(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def test_neuronpedia_export_has_what_its_schema_requires(hybrid_dashboards: Path) -> None:
    data = DashboardData(hybrid_dashboards)
    [model_dir] = (hybrid_dashboards / "exports" / "neuronpedia").iterdir()
    [source_dir] = model_dir.iterdir()
    tables = {name: [json.loads((source_dir / name).read_text())]
              for name in ("model.jsonl", "source.jsonl", "sourceset.jsonl", "release.jsonl")}
    tables["features"] = _jsonl_gz(source_dir / "features" / "batch-0.jsonl.gz")
    tables["activations"] = _jsonl_gz(source_dir / "activations" / "batch-0.jsonl.gz")
    for table, rows in tables.items():
        for row in rows:
            missing = {f for f in NEURONPEDIA_REQUIRED[table] if row.get(f) is None}
            assert not missing, f"{table}: {sorted(missing)} missing or null"
            nulls = {f for f in NEURONPEDIA_LIST_DEFAULTS.get(table, ()) if not isinstance(row.get(f, []), list)}
            assert not nulls, f"{table}: {sorted(nulls)} must be lists (schema default [])"
    model = tables["model.jsonl"][0]
    # The importer builds the model folder from the id, and every row names its model by the same id.
    assert NEURONPEDIA_MODEL_ID.match(model["id"]) and model_dir.name == model["id"] == "hybrid-sae-ext-tiny-lm"
    assert {r["modelId"] for t in tables.values() for r in t if "modelId" in r} == {model["id"]}
    assert source_dir.name == tables["source.jsonl"][0]["id"]
    assert (model["layers"], model["neuronsPerLayer"], model["owner"]) == (2, 512, "hybrid-sae-ext")
    assert model["tlensId"] == data.meta["model_name"]


def test_saedashboard_bins_mark_the_top_group_and_count_firings_in_quantile_ranges(hybrid_dashboards: Path) -> None:
    data = DashboardData(hybrid_dashboards)
    batch = json.loads((hybrid_dashboards / "exports" / "saedashboard" / "batch-0.json").read_text())
    checked = 0
    for feature in batch["features"]:
        record = data.record(feature["feature_index"])
        n_top = len(record["top_examples"])
        top, quantile = feature["activations"][:n_top], feature["activations"][n_top:]
        for act in top:  # SAEDashboard's "TOP ACTIVATIONS" group: bin_min = bin_contains = -1, bin_max its max
            assert (act["bin_min"], act["bin_contains"]) == (-1, -1)
            assert act["bin_max"] == record["top_examples"][0]["activation"]
        groups: dict[float, list[dict]] = {}
        for example in record["quantile_examples"]:
            groups.setdefault(example["group"], []).append(example)
        for act, example in zip(quantile, record["quantile_examples"]):
            members = groups[example["group"]]
            assert act["bin_min"] == min(e["activation"] for e in members) <= act["bin_max"]
            # The share of this latent's firings between the group's smallest and largest example, from
            # their exact quantiles among the firings (not 1/groups).
            spread = max(e["quantile"] for e in members) - min(e["quantile"] for e in members)
            assert 0 <= act["bin_contains"] <= 1 and act["bin_contains"] == pytest.approx(spread, abs=1e-6)
            checked += 1
    assert checked > 0


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


def test_an_out_with_files_is_refused_unless_overwrite(hybrid_sae_path: Path, tmp_path: Path) -> None:
    """A build never silently replaces an existing site/ (with the user's files in it), vocab.json or exports/."""
    out = tmp_path / "out"
    (out / "site").mkdir(parents=True)
    (out / "site" / "my-notes.txt").write_text("mine")
    (out / "vocab.json").write_text("[]")
    with pytest.raises(ValueError, match=rf"--out='{out}' already holds files \(site, vocab\.json\); pass --overwrite"):
        build_dashboards(dashboard_config(hybrid_sae_path, out))
    assert (out / "site" / "my-notes.txt").read_text() == "mine" and (out / "vocab.json").read_text() == "[]"
    assert sorted(p.name for p in out.iterdir()) == ["site", "vocab.json"]
    assert build_dashboards(dashboard_config(hybrid_sae_path, out, overwrite=True)) is not None
    assert (out / "site" / "index.html").is_file() and not (out / "site" / "my-notes.txt").exists()


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
