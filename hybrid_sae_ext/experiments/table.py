"""The comparison table: every architecture at the target L0, mean and 95% interval over seeds.

Why a module of its own: how a number was obtained is part of the number. Each cell says whether
its runs landed on the target L0 or were moved to it along the first seed's frontier, and the
head-to-head rows use paired differences (same seed = same data order), which cancel the noise
the architectures share.
"""

from __future__ import annotations

import math
from typing import Any

from hybrid_sae_ext.experiments.variants import VARIANTS
from hybrid_sae_ext.experiments.matching import interpolate_log_l0, landed, mean_interval

CORRECTED_METRICS = ("fvu", "normalized_mse", "ce_loss_recovered", "kl_div")
"""Moved to the target L0 along the frontier when a run's L0 misses it."""
RAW_METRICS = ("l0", "l0_std", "dead_fraction", "train_seconds", "flattening", "heldout_fvu", "heldout_l0")
"""Reported as measured. ``heldout_*``: the training SAE's own forward on held-out activations at the end
(for BatchTopK that is its batch-level top-k, i.e. before SAELens turns it into a per-token threshold)."""
REFERENCE = "ksparse"
CHALLENGERS = tuple(name for name, variant in VARIANTS.items() if variant.architecture == "hybrid")
"""Every hybrid variant of the comparison is paired against each opponent."""
OPPONENTS = ("ksparse", "ksparse-matched", "batchtopk")
PAIRED_METRICS = ("fvu", "kl_div", "heldout_fvu", "dead_fraction")
FLAT = 0.05
"""A curve has flattened when the last doubling of tokens improved held-out FVU by less than this."""


def l0_spread(histogram: list[int]) -> dict[str, float]:
    """Per-token L0 statistics from ``histogram[j]`` = tokens with exactly j latents firing."""
    total = sum(histogram)
    mean = sum(j * c for j, c in enumerate(histogram)) / total
    std = math.sqrt(sum(c * (j - mean) ** 2 for j, c in enumerate(histogram)) / total)
    seen = [j for j, c in enumerate(histogram) if c]

    def quantile(q: float) -> int:
        running = 0
        for j, c in enumerate(histogram):
            running += c
            if running >= q * total:
                return j
        return seen[-1]

    return {"mean": mean, "std": std, "min": seen[0], "p5": quantile(0.05), "p95": quantile(0.95), "max": seen[-1]}


def flattening(run: dict[str, Any]) -> float | None:
    """Relative held-out FVU improvement over the last doubling of tokens (None without a curve)."""
    curve = run.get("heldout_curve") or []
    if len(curve) < 2 or not 1.9 <= curve[-1]["tokens"] / curve[-2]["tokens"] <= 2.1:
        return None
    return 1.0 - curve[-1]["fvu"] / curve[-2]["fvu"]


def _cell(values: list[float]) -> dict[str, Any]:
    mean, half = mean_interval(values)
    return {"mean": mean, "ci95": half, "values": values}


def _spans(frontier: list[dict[str, Any]], target: float) -> bool:
    """Whether the frontier reaches the target from both sides (no extrapolation)."""
    return len(frontier) >= 2 and min(r["l0"] for r in frontier) <= target <= max(r["l0"] for r in frontier)


def _at_target(run: dict[str, Any], frontier: list[dict[str, Any]], metric: str, target: float, tolerance: float) -> float:
    """The run's metric, moved to exactly the target L0 along the frontier when the frontier spans the target
    (never extrapolated: a run that cannot be matched keeps its raw value, and says so)."""
    if run["l0"] == target or not _spans(frontier, target):
        return run[metric]
    points = [(r["l0"], r[metric]) for r in frontier]
    return run[metric] + interpolate_log_l0(points, target) - interpolate_log_l0(points, run["l0"])


def comparison_table(runs: list[dict[str, Any]], target: float, tolerance: float) -> dict[str, Any]:
    """Rows per architecture (target runs over seeds) and the hybrids' paired differences to TopK-style SAEs."""
    first_seed = min(r["seed"] for r in runs)
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    rows = []
    for arch in [a for a in VARIANTS if any(r["architecture"] == a for r in runs)]:
        targets = sorted((r for r in runs if r["architecture"] == arch and r["role"] == "target"), key=lambda r: r["seed"])
        frontier = [r for r in runs if r["architecture"] == arch and r["seed"] == first_seed]
        missed = [r["seed"] for r in targets if not landed(r["l0"], target, tolerance)]
        values: dict[int, dict[str, float]] = {}
        for run in targets:
            cells = {m: _at_target(run, frontier, m, target, tolerance) for m in CORRECTED_METRICS}
            cells.update(l0=run["l0"], l0_std=l0_spread(run["l0_histogram"])["std"],
                         dead_fraction=run["dead_fraction"], train_seconds=run["train_seconds"])
            if run.get("heldout_curve"):
                cells.update(heldout_fvu=run["heldout_curve"][-1]["fvu"], heldout_l0=run["heldout_curve"][-1]["l0"])
            if (flat := flattening(run)) is not None:
                cells["flattening"] = flat
            values[run["seed"]] = cells
        per_seed[arch] = values
        settings = {k: v for k, v in targets[0].items() if k in ("k", "target_l0", "l1_coefficient", "l0_coefficient")}
        row: dict[str, Any] = {
            "architecture": arch, "settings": settings, "seeds": [r["seed"] for r in targets],
            "method": ("exact" if all(r["l0"] == target for r in targets) else f"landed within {tolerance:.0%}; moved "
                       f"to L0={target:g} along the seed-{first_seed} frontier") if not missed else
            f"seeds {missed} off target by > {tolerance:.0%} in L0: moved to L0={target:g} along the seed-{first_seed} frontier"
            if _spans(frontier, target) else f"NOT matched: seeds {missed} off target, the frontier does not reach "
            f"L0={target:g}; raw values at the L0 shown",
            "l0_spread": l0_spread(targets[0]["l0_histogram"]),
            "matched": not missed or _spans(frontier, target),
        }
        for metric in (*CORRECTED_METRICS, *RAW_METRICS):
            if all(metric in v for v in values.values()):
                row[metric] = _cell([v[metric] for v in values.values()])
        row["flattened"] = row["flattening"]["mean"] < FLAT if "flattening" in row else None
        row["peak_memory_mib"] = next((r["peak_memory_mib"] for r in targets if r["peak_memory_mib"] is not None), None)
        rows.append(row)
    _add_ratios(rows, per_seed)
    matched = {row["architecture"] for row in rows if row["matched"]}
    return {"rows": rows, "head_to_head": head_to_head(per_seed, matched, target, tolerance)}


def _add_ratios(rows: list[dict[str, Any]], per_seed: dict[str, dict[int, dict[str, float]]]) -> None:
    """Time per seed relative to K-sparse in the same pass; memory relative to K-sparse."""
    reference = per_seed.get(REFERENCE)
    ref_row = next((r for r in rows if r["architecture"] == REFERENCE), None)
    for row in rows:
        if reference is None or ref_row is None:
            continue
        mine = per_seed[row["architecture"]]
        row["time_vs_ksparse"] = _cell([mine[s]["train_seconds"] / reference[s]["train_seconds"] for s in mine])
        ref_memory = ref_row["peak_memory_mib"]
        row["memory_vs_ksparse"] = (row["peak_memory_mib"] / ref_memory
                                    if row["peak_memory_mib"] is not None and ref_memory else None)


def _comparable(per_seed: dict[int, dict[str, float]], matched: bool, metric: str, target: float, tolerance: float) -> bool:
    """Splice metrics need a matched row; the held-out forward's FVU needs that forward's L0 on target."""
    if not all(metric in v for v in per_seed.values()):
        return False
    if metric != "heldout_fvu":
        return matched
    return all("heldout_l0" in v and landed(v["heldout_l0"], target, tolerance) for v in per_seed.values())


def head_to_head(per_seed: dict[str, dict[int, dict[str, float]]], matched: set[str], target: float,
                 tolerance: float) -> list[dict[str, Any]]:
    """Paired (same seed) differences challenger - opponent at the target L0, in splice FVU and KL, in the
    training forward's held-out FVU and in the dead fraction; pairs that are not both at the target L0 are left out.

    ``verdict``: "lower"/"higher" when the 95% interval excludes 0, else "not resolved".
    """
    rows = []
    for challenger in (c for c in CHALLENGERS if c in per_seed):
        for opponent in (o for o in OPPONENTS if o in per_seed):
            for metric in PAIRED_METRICS:
                if not all(_comparable(per_seed[a], a in matched, metric, target, tolerance) for a in (challenger, opponent)):
                    continue
                seeds = sorted(set(per_seed[challenger]) & set(per_seed[opponent]))
                diffs = [per_seed[challenger][s][metric] - per_seed[opponent][s][metric] for s in seeds]
                mean, half = mean_interval(diffs)
                verdict = "not resolved"
                if half is not None and abs(mean) > half:
                    verdict = "lower" if mean < 0 else "higher"
                relative = mean / (sum(per_seed[opponent][s][metric] for s in seeds) / len(seeds))
                rows.append({"challenger": challenger, "opponent": opponent, "metric": metric, "diff": mean,
                             "ci95": half, "relative": relative, "verdict": verdict, "seeds": seeds})
    return rows
