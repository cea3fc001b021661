"""Where one SAE's train step spends its time: torch.profiler's operator table (CPU, or CUDA kernels),
or, with ``--memory-at-peak`` on CUDA, which tensors are alive when the allocator peaks.

Steps the SAEs of ``bench_train_step.py`` exactly as that benchmark does (same data, contenders and
flags), so a slow or large entry there can be looked into here:

    python benchmarks/profile_train_step.py --only hybrid,sparsify --steps 5
    python benchmarks/profile_train_step.py --only hybrid,topk --steps 2 --memory-at-peak --device cuda
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import simple_parsing
import torch
from bench_train_step import BenchConfig, dead_mask, make_contender, make_data, selected_labels
from torch.profiler import ProfilerActivity, profile

from hybrid_sae_ext import register_architectures


@dataclass
class ProfileConfig(BenchConfig):
    rows: int = 15
    """Operators listed per SAE, by self time on the device."""
    dead_fraction: float = 0.0
    """Latents marked dead in the profiled steps (0.5 profiles the benchmark's AuxK-active timing)."""
    memory_at_peak: bool = False
    """CUDA: instead of the operator table, the tensors alive at the allocator's peak over build + steps
    (the benchmark's peak memory), summed by the first frame outside torch that allocated them."""


def live_at_peak(events: Iterable[dict[str, Any]]) -> tuple[int, list[tuple[int, list[dict[str, Any]]]]]:
    """Replay CUDA allocator events (``torch.cuda.memory._snapshot()``'s device trace) to the peak of
    allocated bytes: that peak and the (size, frames) of each allocation alive at it. Frees of blocks
    allocated before recording began are ignored."""
    live: dict[int, tuple[int, list[dict[str, Any]]]] = {}
    total = peak = 0
    at_peak: list[tuple[int, list[dict[str, Any]]]] = []
    for event in events:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], event.get("frames", []))
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif event["action"] in ("free_requested", "free_completed") and event["addr"] in live:
            total -= live.pop(event["addr"])[0]
    return peak, at_peak


def allocation_site(frames: list[dict[str, Any]]) -> str:
    """The innermost frame outside torch itself (frames run innermost first), as ``file:line name``."""
    for frame in frames:
        path = frame["filename"].replace("\\", "/")
        if "/torch/" not in path and not path.startswith("<"):
            return f"{'/'.join(path.split('/')[-2:])}:{frame['line']} {frame['name']}"
    return "torch internals"


def memory_table(label: str, cfg: ProfileConfig, pool: torch.Tensor) -> str:
    """The tensors alive at the peak of building ``label`` and stepping it, largest sites first."""
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    try:
        contender = make_contender(label, cfg)
        batches = pool.split(cfg.batch)
        dead = dead_mask(cfg, cfg.dead_fraction)
        for i in range(cfg.warmup + cfg.steps):
            contender.step(batches[i % len(batches)], dead)
        torch.cuda.synchronize()
        trace = torch.cuda.memory._snapshot()["device_traces"][torch.cuda.current_device()]
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    peak, alive = live_at_peak(trace)
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, frames in alive:
        site = by_site[allocation_site(frames)]
        site[0] += size
        site[1] += 1
    rows = sorted(by_site.items(), key=lambda item: -item[1][0])[: cfg.rows]
    lines = [f"## {label}: {peak / 2**20:.1f} MiB alive at the peak of build + {cfg.warmup + cfg.steps} steps",
             "", "| MiB | tensors | allocated at |", "|---:|---:|---|"]
    lines += [f"| {size / 2**20:.1f} | {count} | `{site}` |" for site, (size, count) in rows]
    return "\n".join(lines)


def profile_table(label: str, cfg: ProfileConfig, pool: torch.Tensor) -> str:
    """The operator table of ``cfg.steps`` steps of ``label`` after ``cfg.warmup`` untimed ones."""
    contender = make_contender(label, cfg)
    batches = pool.split(cfg.batch)
    dead = dead_mask(cfg, cfg.dead_fraction)
    for i in range(cfg.warmup):
        contender.step(batches[i % len(batches)], dead)
    on_cuda = cfg.device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]
    with profile(activities=activities) as prof:
        for i in range(cfg.steps):
            contender.step(batches[i % len(batches)], dead)
        if on_cuda:
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    header = f"## {label}: {cfg.steps} steps, {int(dead.sum())} of {cfg.d_sae} latents dead\n"
    return header + prof.key_averages().table(sort_by=sort_by, row_limit=cfg.rows)


def main(argv: Sequence[str] | None = None) -> str:
    cfg = simple_parsing.parse(
        ProfileConfig, args=argv, add_option_string_dash_variants=simple_parsing.DashVariant.DASH
    )
    register_architectures()
    pool = make_data(cfg, cfg.batch * max(1, min(cfg.warmup + cfg.steps, 8)), part=0)
    if cfg.memory_at_peak and not cfg.device.startswith("cuda"):
        raise ValueError(f"--memory-at-peak needs a CUDA device (the allocator's history), got --device {cfg.device}")
    table = memory_table if cfg.memory_at_peak else profile_table
    text = "\n\n".join(table(label, cfg, pool) for label in selected_labels(cfg))
    print(text)
    return text


if __name__ == "__main__":
    main()
