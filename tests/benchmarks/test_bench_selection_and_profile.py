"""The selection benchmark and the train-step profiler run end to end at toy size."""

import pytest

from hybrid_sae_ext.kernels import selection

TINY = ["--d-in", "16", "--d-sae", "256", "--k", "4", "--batch", "64"]


def test_selection_benchmark_times_every_block_and_method_and_restores_the_default(load_benchmark) -> None:
    default = dict(selection.SELECTION_BLOCK_SCORES)
    bench = load_benchmark("bench_selection")
    rows = bench.main([*TINY, "--block-scores", "1024", "4096", "--reps", "2", "--device", "cpu"])
    timed = [(what, block) for what, block, ms in rows if ms > 0]
    assert timed == [("float32", 1024), ("float32", 4096), ("bfloat16", 1024), ("bfloat16", 4096),
                     ("topk-torch", 0), ("topk-halving", 0), ("topk-native", 0), ("topk-grouped", 0)]
    assert selection.SELECTION_BLOCK_SCORES == default


def test_profile_lists_each_sae_with_its_operators(load_benchmark) -> None:
    load_benchmark("bench_train_step")  # imported by name, as when the profiler runs from benchmarks/
    profile = load_benchmark("profile_train_step")
    text = profile.main([*TINY, "--steps", "2", "--warmup", "1", "--rows", "40", "--only", "hybrid,topk",
                         "--dead-fraction", "0.5", "--device", "cpu"])
    sections = text.split("## ")[1:]
    headers = [s.splitlines()[0] for s in sections]
    assert [h.split(":")[0] for h in headers] == ["hybrid", "topk"]
    for header in headers:  # the mask the steps used: about half of the 256 latents, the same for both
        dead = int(header.removeprefix(header.split(",")[0] + ", ").split(" of 256")[0])
        assert 0.35 * 256 < dead < 0.65 * 256 and header.endswith(f"2 steps, {dead} of 256 latents dead")
    assert headers[0].split(":")[1] == headers[1].split(":")[1]
    for section in sections:  # enough rows that torch's own operators show beside the autograd functions
        assert "aten::" in section and "Self CPU time total" in section


def test_memory_replay_finds_the_peak_and_what_is_alive_at_it(load_benchmark) -> None:
    load_benchmark("bench_train_step")
    profile = load_benchmark("profile_train_step")
    ours = [{"filename": "/x/torch/nn/functional.py", "line": 1, "name": "linear"},
            {"filename": "/repo/hybrid_sae_ext/architectures/hybrid.py", "line": 42, "name": "encode"}]
    theirs = [{"filename": "/site/sparsify/sparse_coder.py", "line": 7, "name": "forward"}]
    events = [
        {"action": "free_requested", "addr": 99, "size": 500},  # allocated before recording: ignored
        {"action": "alloc", "addr": 1, "size": 100, "frames": ours},
        {"action": "alloc", "addr": 2, "size": 300, "frames": theirs},
        {"action": "free_requested", "addr": 2, "size": 300},
        {"action": "free_completed", "addr": 2, "size": 300},
        {"action": "alloc", "addr": 3, "size": 250, "frames": ours},
        {"action": "alloc", "addr": 4, "size": 200, "frames": theirs},  # the peak: 100 + 250 + 200
        {"action": "free_completed", "addr": 4, "size": 200},
        {"action": "alloc", "addr": 5, "size": 120, "frames": []},
    ]
    peak, alive = profile.live_at_peak(events)
    assert peak == 550 and sorted(size for size, _ in alive) == [100, 200, 250]
    assert profile.allocation_site(ours) == "architectures/hybrid.py:42 encode"
    assert profile.allocation_site(theirs) == "sparsify/sparse_coder.py:7 forward"
    assert profile.allocation_site(ours[:1]) == "torch internals"


def test_memory_at_peak_refuses_a_cpu_device(load_benchmark) -> None:
    load_benchmark("bench_train_step")
    profile = load_benchmark("profile_train_step")
    with pytest.raises(ValueError, match="--memory-at-peak needs a CUDA device.*--device cpu"):
        profile.main([*TINY, "--memory-at-peak", "--device", "cpu"])
