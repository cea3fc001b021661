"""The top-k selection alone, at several row-block sizes and both selection dtypes (CPU or CUDA).

Why: ``selection.SELECTION_BLOCK_SCORES`` trades launches and top-k efficiency against memory, and
the best block differs by device; this times ``select`` as the training step calls it (AuxK off):

    python benchmarks/bench_selection.py --d-in 768 --d-sae 32768 --k 128 --batch 4096
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import simple_parsing
import torch

from hybrid_sae_ext.kernels import selection
from hybrid_sae_ext.kernels.topk import topk_indices
from hybrid_sae_ext.measure import device_name, timed


@dataclass
class SelectionBenchConfig:
    d_in: int = 256
    d_sae: int = 8192
    k: int = 32
    batch: int = 1024
    block_scores: list[int] = field(default_factory=lambda: [2**22, 2**23, 2**24, 2**26, 2**28])
    reps: int = 10
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")


def _median_ms(run: Callable[[], object], cfg: SelectionBenchConfig) -> float:
    """Median of ``cfg.reps`` timings of ``run`` after one untimed call."""
    run()
    return statistics.median(1e3 * timed(run, cfg.device) for _ in range(cfg.reps))


def main(argv: Sequence[str] | None = None) -> list[tuple[str, int, float]]:
    cfg = simple_parsing.parse(
        SelectionBenchConfig, args=argv, add_option_string_dash_variants=simple_parsing.DashVariant.DASH
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch, cfg.d_in, generator=gen).to(cfg.device)
    W_enc = torch.randn(cfg.d_sae, cfg.d_in, generator=gen).to(cfg.device).t()  # latent-major, as trained
    bias = 0.1 * torch.randn(cfg.d_sae, generator=gen).to(cfg.device)
    device_type = torch.device(cfg.device).type
    rows = []
    print(f"select() on {device_name(cfg.device)}: batch {cfg.batch}, d_in {cfg.d_in}, d_sae {cfg.d_sae}, k {cfg.k}")
    print("| selection dtype | block scores | block rows | median ms |\n|---|---:|---:|---:|")
    default_block = selection.SELECTION_BLOCK_SCORES[device_type]
    try:
        for dtype in ("float32", "bfloat16"):
            for block in cfg.block_scores:
                selection.SELECTION_BLOCK_SCORES[device_type] = block
                ms = _median_ms(lambda: selection.select(x, W_enc, bias, cfg.k, selection_dtype=dtype), cfg)
                rows.append((dtype, block, ms))
                print(f"| {dtype} | 2^{block.bit_length() - 1} | {max(1, block // cfg.d_sae)} | {ms:.2f} |")
    finally:
        selection.SELECTION_BLOCK_SCORES[device_type] = default_block
    scores = (x @ W_enc).bfloat16()
    k = cfg.k + selection.candidate_margin(cfg.k, cfg.d_sae)
    print(f"\ntopk_indices of the whole batch's bf16 scores, k + margin = {k}:\n| method | median ms |\n|---|---:|")
    for method in ("torch", "halving", "native", "grouped"):
        ms = _median_ms(lambda: topk_indices(scores, k, method), cfg)
        rows.append((f"topk-{method}", 0, ms))
        print(f"| {method} | {ms:.2f} |")
    return rows


if __name__ == "__main__":
    main()
