"""Where one SAE's train step spends its time: torch.profiler's operator table (CPU, or CUDA kernels).

Steps the SAEs of ``bench_train_step.py`` exactly as that benchmark does (same data, contenders and
flags), so a slow entry there can be looked into here:

    python benchmarks/profile_train_step.py --only hybrid,sparsify --steps 5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    text = "\n\n".join(profile_table(label, cfg, pool) for label in selected_labels(cfg))
    print(text)
    return text


if __name__ == "__main__":
    main()
