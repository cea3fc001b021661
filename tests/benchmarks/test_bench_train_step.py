"""The train-step benchmark runs end to end at toy size and writes a full JSON + markdown report."""

import importlib.util
import json
import math
from pathlib import Path

import torch


def test_benchmark_reports_every_sae(tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("bench_train_step")
    k, d_sae = 4, 64
    args = ["--d-in", "16", "--d-sae", str(d_sae), "--k", str(k), "--batch", "32", "--steps", "3",
            "--warmup", "1", "--inference-batch", "64", "--inference-reps", "1", "--device", "cpu",
            "--out", str(tmp_path)]
    json_path = bench.main(args)

    assert json_path.parent == tmp_path
    assert json_path.name.endswith("-d16-s64-k4-b32.json")
    report = json.loads(json_path.read_text())
    expected = set(bench.ALL_LABELS)
    if importlib.util.find_spec("sparsify") is None:
        expected.discard("sparsify")
    train = {row["label"]: row for row in report["train"]}
    assert set(train) == expected
    for label, row in train.items():
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0, label
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0, label
        assert math.isfinite(row["peak_mem_mib"]), label
        assert math.isfinite(row["nmse"]) and row["nmse"] >= 0, label
        assert 0 <= row["l0"] <= d_sae, label
        assert row["tokens_per_s_vs_topk"] > 0, label
    for label in ("hybrid", "hybrid-dense-reference", "topk"):
        assert train[label]["l0"] <= k
    assert train["topk"]["tokens_per_s_vs_topk"] == 1.0

    inference = {row["label"]: row for row in report["inference"]}
    assert {"hybrid", "topk"} <= set(inference)
    for label, row in inference.items():
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0, label
    assert report["versions"]["torch"] == torch.__version__
    assert report["versions"]["sae-lens"] != "not installed"

    markdown = (tmp_path / (json_path.name[: -len(".json")] + ".md")).read_text()
    assert "| SAE | tokens/s | ms/step |" in markdown
    for label in expected:
        assert f"| {label} |" in markdown
