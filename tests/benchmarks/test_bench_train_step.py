"""The train-step benchmark runs end to end at toy size and reports what it claims to report."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ARGS = ["--keep-freed-memory", "false",  # mallopt would change this test process's allocator for good
        "--d-in", "16", "--d-sae", "64", "--k", "4", "--batch", "32", "--steps", "3", "--warmup", "1",
        "--inference-batch", "64", "--inference-reps", "1", "--device", "cpu"]


def test_benchmark_reports_every_sae(tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("bench_train_step")
    k, batch = 4, 32
    json_path = bench.main([*ARGS, "--out", str(tmp_path)])

    assert json_path.parent == tmp_path
    assert json_path.name.endswith("-d16-s64-k4-b32.json")
    report = json.loads(json_path.read_text())
    assert report["allocator"] == "default" and "Allocator: default." in json_path.with_suffix(".md").read_text()
    expected = set(bench.DEFAULT_LABELS)
    if importlib.util.find_spec("sparsify") is None:
        expected = {label for label in expected if not label.startswith("sparsify")}
    assert {"hybrid", "hybrid@sel-float32", "hybrid@sel-bfloat16", "topk@bf16-autocast"} <= expected
    train = {row["label"]: row for row in report["train"]}
    assert set(train) == expected
    for label, row in train.items():
        for timing in (row["step"], row["step_auxk"]):
            assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"], label
        # throughput and ms/step come from the same statistic
        assert row["tokens_per_s"] == pytest.approx(1e3 * batch / row["step"]["median_ms"]), label
        assert 0 <= row["fvu"] < 2 and 0 <= row["l0"] <= 64, label
    for label in ("topk", "topk@bf16-autocast"):
        assert train[label]["l0"] <= k
    for label in ("hybrid", "hybrid@sel-bfloat16"):  # the default's cap: 1.25 x k, its mean L0 k once trained
        assert train[label]["l0"] <= bench.hybrid_sizes(bench.HYBRIDS[label], k)["k"] == 5

    peers = [label for label in bench.PEER_LABELS if label in train]
    fastest = max(train[p]["tokens_per_s"] for p in peers)
    sparsify = [train[p]["tokens_per_s"] for p in ("sparsify", "sparsify@bf16-autocast") if p in train]
    for label, row in train.items():
        assert row["vs_fastest_peer"] == pytest.approx(row["tokens_per_s"] / fastest), label
        assert row["vs_topk"] == pytest.approx(row["tokens_per_s"] / train["topk"]["tokens_per_s"]), label
        if sparsify:
            assert row["vs_sparsify"] == pytest.approx(row["tokens_per_s"] / max(sparsify)), label
    assert max(train[p]["vs_fastest_peer"] for p in peers) == pytest.approx(1.0)

    inference = {row["label"]: row for row in report["inference"]}
    assert {"hybrid", "topk"} <= set(inference)
    for label, row in inference.items():
        assert row["tokens_per_s"] == pytest.approx(1e3 * 64 / row["batch"]["median_ms"]), label
    assert report["versions"]["torch"] == torch.__version__
    assert "load average" in report["load"] and "indicative" in report["memory_metric"]

    markdown = (tmp_path / (json_path.name[: -len(".json")] + ".md")).read_text()
    assert "| SAE | ms/step | ms/step, AuxK active | tokens/s | peak RSS MiB (indicative) |" in markdown
    for label in expected:
        assert f"| {label} |" in markdown


def test_benchmark_runs_in_bfloat16_storage(tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("bench_train_step")
    json_path = bench.main([*ARGS, "--dtype", "bfloat16", "--only", "hybrid,topk", "--inference-batch", "0",
                            "--out", str(tmp_path)])
    assert json_path.name.endswith("-b32-bfloat16.json")
    train = {row["label"]: row for row in json.loads(json_path.read_text())["train"]}
    assert set(train) == {"hybrid", "topk"}
    assert math.isfinite(train["hybrid"]["fvu"]) and train["hybrid"]["fvu"] < 2


def test_dead_mask_reaches_each_sae(load_benchmark) -> None:
    """The AuxK timing is real: with latents marked dead, a step updates encoder columns of latents
    outside the top-k (AuxK's), which a step without dead latents never does."""
    bench = load_benchmark("bench_train_step")
    cfg = bench.BenchConfig(d_in=16, d_sae=64, k=2, batch=8, device="cpu")
    x = bench.make_data(cfg, 8, part=0)

    def changed_columns(label: str, dead: torch.Tensor) -> int:
        torch.manual_seed(0)
        contender = bench.saelens_contender(label, cfg)
        w_enc = contender.module.W_enc
        before = w_enc.detach().clone()
        contender.step(x, dead)
        return int(((w_enc.detach() - before).abs().sum(0) > 0).sum())

    no_dead = torch.zeros(64, dtype=torch.bool)
    all_dead = torch.ones(64, dtype=torch.bool)
    for label in ("hybrid", "topk"):
        assert changed_columns(label, all_dead) > changed_columns(label, no_dead), label


def test_fvu_is_residual_energy_over_variance(load_benchmark) -> None:
    bench = load_benchmark("bench_train_step")
    x = torch.randn(256, 8) + 3
    perfect = bench.Contender(step=None, evaluate=lambda x: (0.0, x))
    mean_only = bench.Contender(step=None, evaluate=lambda x: (0.0, x.mean(0).expand_as(x)))
    assert bench.l0_and_fvu(perfect, x)[1] == pytest.approx(0.0)
    assert bench.l0_and_fvu(mean_only, x)[1] == pytest.approx(1.0)


def test_training_peak_memory_leaves_out_the_held_out_evaluation(load_benchmark, monkeypatch) -> None:
    """The reported peak is build + steps: an evaluation that allocates 256 MiB must not show in it."""
    bench = load_benchmark("bench_train_step")
    cfg = bench.BenchConfig(d_in=16, d_sae=64, k=2, batch=8, steps=2, warmup=1, device="cpu")

    kept = []  # the evaluation's memory stays alive, so a peak read after it would include it

    def evaluate(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        kept.append(torch.ones(256 * 2**20 // 4))  # touched, so the process RSS holds it
        return 0.0, x

    monkeypatch.setattr(bench, "make_contender", lambda label, cfg: bench.Contender(lambda x, dead: None, evaluate))
    x = bench.make_data(cfg, 8, part=0)
    assert bench.bench_train("hybrid", cfg, x, x).peak_mem_mib < 64


def test_peak_memory_sees_an_allocation() -> None:
    from hybrid_sae_ext.measure import peak_memory

    with peak_memory("cpu") as peak_mib:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert 48 <= peak_mib() <= 256
    after = torch.ones(256 * 2**20 // 4)  # allocated after the block and kept: not counted
    assert 48 <= peak_mib() <= 256 and after[0] == 1


def test_cpu_peak_starts_at_entry_and_needs_no_sampling_thread(monkeypatch) -> None:
    """On Linux the kernel's high-water mark is reset at entry: a larger block freed before the block is
    not counted, and no sampler thread runs (it slowed timed steps)."""
    import threading

    from hybrid_sae_ext import measure

    if not measure.reset_peak_rss():
        pytest.skip("no resettable RSS high-water mark here (not Linux)")
    earlier = torch.ones(256 * 2**20 // 4)
    del earlier

    def no_threads(*args, **kwargs):
        raise AssertionError("peak_memory started a thread")

    monkeypatch.setattr(threading, "Thread", no_threads)
    with measure.peak_memory("cpu") as peak_mib:
        block = torch.ones(64 * 2**20 // 4)
        del block
    assert 48 <= peak_mib() <= 128
    assert "high-water mark" in measure.cpu_peak_method()


def test_cpu_peak_falls_back_to_sampling_where_the_mark_cannot_be_reset(monkeypatch) -> None:
    import time

    from hybrid_sae_ext import measure

    monkeypatch.setattr(measure, "reset_peak_rss", lambda: False)
    with measure.peak_memory("cpu") as peak_mib:
        block = torch.ones(64 * 2**20 // 4)
        time.sleep(0.05)  # several sampling periods
        del block
    assert 48 <= peak_mib() <= 256


def test_keep_freed_memory_keeps_a_freed_block_in_the_process() -> None:
    """Measured in fresh subprocesses (the setting lasts for the process): by default glibc returns a freed
    64 MiB tensor to the OS; after ``keep_freed_memory()`` the process keeps it for reuse."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from hybrid_sae_ext.measure import keep_freed_memory, rss_bytes\n"
        "kept = keep_freed_memory() if sys.argv[1] == 'keep' else None\n"
        "before = rss_bytes(); block = torch.ones(2**24); del block\n"
        "print(kept, (rss_bytes() - before) / 2**20)"
    )

    def retained_mib(mode: str) -> tuple[str, float]:
        run = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120,
                             check=True)
        kept, mib = run.stdout.split()
        return kept, float(mib)

    assert retained_mib("default")[1] < 16
    kept, mib = retained_mib("keep")
    assert kept == "True" and mib > 48
