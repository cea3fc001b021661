"""The learning-rate sweep behind the comparison's learning rates: a baseline trained at a rate too low
for it would flatter every architecture that tolerates that rate better.

Every architecture whose L0 its own knobs set (k, or ``target_l0``) trains at each rate of
``ComparisonConfig.lr_sweep`` on the first seed, with the comparison's budget and schedule. The table gives
the held-out FVU at the end of the budget; an architecture's best rate is its lowest FVU after moving each
run to the target L0 at conservative exchange rates (``l0_adjusted_fvu``), and ``hybrid-sae compare --lr_from
lr_sweep.json`` trains each at its own. Coefficient-searched architectures are left out: their coefficient
would have to be searched again at each rate; they train at ``lr``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from hybrid_sae_ext.experiments.comparison import ComparisonConfig, RunSpec, prepare_data, resumable, train_pass
from hybrid_sae_ext.experiments.rates import ABOVE_TARGET_EXPONENT, BELOW_TARGET_EXPONENT, best_rate
from hybrid_sae_ext.experiments.variants import VARIANTS, run_config, settings_at
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import device_name, versions


def swept_architectures(cfg: ComparisonConfig) -> list[str]:
    return [a for a in cfg.architectures if not VARIANTS[a].searched]


def sweep_learning_rates(cfg: ComparisonConfig) -> dict[str, Any]:
    """Train the swept architectures at every rate of ``cfg.lr_sweep`` (one pass per rate, resumable
    under ``<out>/partial``); returns the JSON-able runs and each architecture's best rate."""
    if not cfg.lr_sweep:
        raise ValueError("lr_sweep is empty: give the learning rates to sweep, e.g. --lr_sweep 1e-3 3e-3 1e-2")
    architectures = swept_architectures(cfg)
    if not architectures:
        raise ValueError(f"None of {cfg.architectures} sets its own L0; the sweep needs k or target_l0 architectures")
    start = time.perf_counter()
    data = prepare_data(cfg)
    seed = cfg.seeds[0]
    runs: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for lr in cfg.lr_sweep:
        at_lr = dataclasses.replace(cfg, lr=lr)
        specs = [RunSpec(a, settings_at(VARIANTS[a], cfg.target_l0), seed, "lr-sweep") for a in architectures]

        def one_pass(at_lr: ComparisonConfig = at_lr, specs: list[RunSpec] = specs) -> list[dict[str, Any]]:
            trained = train_pass(at_lr, specs, data.acts, seed, data.steps, data.heldout)
            records = []
            for spec in specs:
                run = trained[spec.name]
                end = run["heldout_curve"][-1]
                records.append({
                    "architecture": spec.architecture, "lr": at_lr.lr, **spec.settings,
                    "config": run_config(run["trainer"], VARIANTS[spec.architecture]),
                    "fvu": end["fvu"], "l0": end["l0"], "dead_fraction": end["dead"],
                    "heldout_curve": run["heldout_curve"], "train_seconds": run["train_seconds"],
                })
            return records

        records, seconds[f"lr-{lr:g}"] = resumable(Path(cfg.out) / "partial" / f"lr-{lr:g}.json", cfg, one_pass)
        runs += records
    best = {a: best_rate([r for r in runs if r["architecture"] == a], cfg.target_l0) for a in architectures}
    return {
        "config": dataclasses.asdict(cfg), "seed": seed, "steps": data.steps, "train_tokens": data.steps * cfg.batch_tokens,
        "device_name": device_name(cfg.device), "versions": versions(), "runs": runs, "best_lr": best,
        "seconds": seconds, "compute_seconds": sum(seconds.values()), "wall_seconds": time.perf_counter() - start,
    }


def lr_sweep_markdown(results: dict[str, Any]) -> str:
    """Held-out FVU (and L0) of every swept architecture at every rate; each row's best in bold."""
    lrs = sorted(results["config"]["lr_sweep"])  # ascending, whatever order the runs took
    by_key = {(r["architecture"], r["lr"]): r for r in results["runs"]}
    lines = [
        f"# Learning-rate sweep ({results['device_name']})", "",
        (f"Seed {results['seed']}, {results['steps']} steps ({results['train_tokens']:,} tokens), target L0 "
        f"{results['config']['target_l0']}, {results['config']['n_features']} latents, the comparison's schedule; "
         f"{results['versions']}; {results['compute_seconds'] / 60:.1f} min of compute (summed over the rates' passes). "
        "Cells: held-out FVU at the end of the budget (mean L0 in brackets). In bold each row's best rate: the "
         f"lowest FVU after moving each run to the target L0, FVU x (L0 / target)^{ABOVE_TARGET_EXPONENT:g} above "
         f"it and ^{BELOW_TARGET_EXPONENT:g} below it (exchange rates that never favour a run for being off the "
         "target; see `hybrid_sae_ext/experiments/lr_sweep.py`)."), "",
        "| architecture | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |",
        "|---|" + "---:|" * (len(lrs) + 1),
    ]
    for arch, best in results["best_lr"].items():
        cells = []
        for lr in lrs:
            run = by_key[(arch, lr)]
            cell = f"{run['fvu']:.4f} ({run['l0']:.1f})"
            cells.append(f"**{cell}**" if lr == best else cell)
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines) + "\n"


def write_lr_sweep(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "lr_sweep.json", results)
    write_text_atomic(out / "lr_sweep.md", lr_sweep_markdown(results))
