"""Tables and figures of the comparison results (used by the script and the notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from hybrid_sae_ext.experiments.variants import label  # noqa: E402

TABLE_COLUMNS = (
    ("l0", "L0", "{:.1f}"), ("l0_std", "L0 per-token std", "{:.1f}"), ("fvu", "FVU", "{:.4f}"),
    ("normalized_mse", "norm. MSE", "{:.4f}"), ("ce_loss_recovered", "CE recovered", "{:.4f}"), ("kl_div", "KL", "{:.4f}"),
    ("dead_fraction", "dead", "{:.1%}"), ("heldout_fvu", "held-out FVU, training forward", "{:.4f}"),
    ("heldout_l0", "its L0", "{:.1f}"), ("flattening", "FVU gain, last doubling", "{:.1%}"),
    ("time_vs_ksparse", "time vs TopK", "{:.2f}"),
)


def _cell(cell: dict[str, Any] | None, fmt: str) -> str:
    if cell is None:
        return "-"
    text = fmt.format(cell["mean"])
    if cell["ci95"] is not None:
        text += " ± " + fmt.format(cell["ci95"]).lstrip()
    return text


def _settings(settings: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.3g}" for k, v in settings.items())


def _rates(cfg: dict[str, Any]) -> str:
    """The learning rates: one shared, or each swept architecture's best (``--lr_from``) and the rest's."""
    swept = cfg.get("architecture_lr") or {}
    if not swept:
        return f"lr {cfg['lr']:g}"
    own = ", ".join(f"{label(a)} {swept[a]:g}" for a in cfg["architectures"] if a in swept)
    return f"lr per architecture from the sweep `{', '.join(Path(p).parent.name + '/' + Path(p).name for p in cfg['lr_from'].split(','))}` ({own}; the others {cfg['lr']:g})"


def comparison_markdown(results: dict[str, Any]) -> str:
    cfg, table = results["config"], results["table"]
    seeds = ", ".join(map(str, cfg["seeds"]))
    lines = [
        f"# SAE comparison at L0 = {results['target_l0']}: {cfg['model']} `{results['hook_name']}`",
        "",
        f"d_sae={cfg['n_features']}, {results['train_tokens']:,} training tokens per SAE ({cfg['epochs']} epochs over "
        f"{cfg['tokens']:,} captured), batch {cfg['batch_size']} x {cfg['context_size'] - 1} tokens, {_rates(cfg)} "
        f"(warmup 5%, linear decay over the last 20%), seeds {seeds}; device `{results['device_name']}`; "
        f"{results['versions']}; {results['compute_seconds'] / 60:.1f} min of compute.",
        f"Splice evaluation on {results['eval_tokens']:,} held-out tokens: CE clean {results['eval']['ce_loss_clean']:.4f}, "
        f"zero-ablation {results['eval']['ce_loss_zero_ablation']:.4f}.",
        "",
        "How sparsity was matched: TopK, BatchTopK and the fixed-k hybrids use k = target; the gate-threshold hybrids "
        "use `target_l0` = target with a per-token cap k of 1.25 x target (the default, a batch gate) or as their "
        "label says (2 x target where it says nothing); JumpReLU uses Gemma Scope 2's quadratic "
        "penalty around `target_l0` = target (coefficient 1); vanilla and gated get their loss "
        f"coefficient by bisection on its logarithm with probes of {results['search']['probe_steps']} steps (seed "
        f"{cfg['seeds'][0]}'s data), until the probe's L0 is within {cfg['tolerance']:.0%} of the target. A run whose "
        "held-out L0 is not exactly the target has FVU, norm. MSE, CE recovered and KL moved to the target "
        "along its architecture's frontier (first seed, piecewise linear in log-L0, never extrapolated); the method "
        "column says which; L0 and the other columns are as measured. "
        "Every cell: mean ± 95% Student-t interval over seeds. Every run's full config is in `comparison.json` (`runs[*].config`). "
        "L0 to KL are the splice evaluation of the saved inference SAE; 'held-out FVU, training forward' is the training "
        "SAE's own forward on held-out activations (for BatchTopK: batch-level top-k, before SAELens replaces it by a "
        "per-token threshold); 'FVU gain, last doubling' is its relative improvement from T/2 to T tokens "
        "(flattened: < 5%).",
        "",
        "| SAE | setting | how matched | " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
        "|" + "---|" * (len(TABLE_COLUMNS) + 3),
    ]
    for row in table["rows"]:
        cells = [_cell(row.get(key), fmt) for key, _, fmt in TABLE_COLUMNS]
        lines.append(f"| {label(row['architecture'])} | {_settings(row['settings'])} | {row['method']} | " + " | ".join(cells) + " |")
    lines += ["", "## Head to head (paired by seed, at the target L0; pairs not both at the target are left out)", "",
              "| hybrid | vs | metric | difference | relative | verdict |", "|---|---|---|---|---|---|"]
    for h in table["head_to_head"]:
        ci = "" if h["ci95"] is None else f" ± {h['ci95']:.4f}"
        lines.append(f"| {label(h['challenger'])} | {label(h['opponent'])} | {h['metric']} | {h['diff']:+.4f}{ci} | "
                     f"{h['relative']:+.1%} | {h['verdict']} |")
    lines += ["", "## Per-token L0 of the first seed (held-out tokens)", "", "| SAE | mean | std | min | p5 | p95 | max |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {label(r['architecture'])} | {s['mean']:.1f} | {s['std']:.1f} | {s['min']} | {s['p5']} | {s['p95']} | {s['max']} |"
              for r in table["rows"] for s in [r["l0_spread"]]]
    lines += ["", "## Coefficient search", "", "| SAE | probes (coefficient -> L0) | chosen |", "|---|---|---|"]
    for arch, probes in results["search"]["probes"].items():
        trail = ", ".join(f"{p['coefficient']:.3g} -> {p['l0']:.1f}" for p in probes)
        lines.append(f"| {label(arch)} | {trail} | {results['search']['coefficients'][arch]:.3g} |")
    lines += ["", "## All runs", "", "| run | role | L0 | FVU | CE recovered | KL | dead |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['role']} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['ce_loss_recovered']:.4f} | "
              f"{r['kl_div']:.4f} | {r['dead_fraction']:.1%} |" for r in results["runs"]]
    return "\n".join(lines) + "\n"


def _save(fig: plt.Figure, out: Path, name: str) -> None:
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{name}.{suffix}", dpi=150)
    plt.close(fig)


def plot_frontier(results: dict[str, Any], metric: str, ylabel: str, out: Path, name: str) -> None:
    """First-seed frontier per architecture, and the seed mean ± interval at the target."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    first = results["config"]["seeds"][0]
    rows = {r["architecture"]: r for r in results["table"]["rows"]}
    for arch, row in rows.items():
        points = sorted((r["l0"], r[metric]) for r in results["runs"] if r["architecture"] == arch and r["seed"] == first)
        (line,) = ax.plot(*zip(*points), marker="o", alpha=0.6, label=label(arch))
        cell = row[metric]
        ax.errorbar([results["target_l0"] if row["matched"] else row["l0"]["mean"]], [cell["mean"]], yerr=[[cell["ci95"] or 0]], color=line.get_color(),
                    marker="*", markersize=11, capsize=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=2))  # L0 targets are 16, 32, 64: a decade has no tick inside them
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L0 (mean active latents per held-out token)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Frontiers (seed {first}); stars: mean ± 95% CI over seeds at L0={results['target_l0']}\n"
                 "(at their own L0 where the frontier does not reach the target)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out, name)


def plot_training_curves(results: dict[str, Any], out: Path) -> None:
    """Held-out FVU against tokens for the target runs (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in results["table"]["rows"]:
        curves = [r["heldout_curve"] for r in results["runs"] if r["architecture"] == row["architecture"] and r["role"] == "target"]
        tokens = [p["tokens"] for p in curves[0]]
        mean = [sum(c[i]["fvu"] for c in curves) / len(curves) for i in range(len(tokens))]
        ax.plot(tokens, mean, marker="o", label=label(row["architecture"]))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out FVU (mean over seeds)")
    ax.set_title("Training curves at the target L0", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, out, "training_curves")


def plot_comparison(results: dict[str, Any], out: Path) -> None:
    plot_frontier(results, "fvu", "FVU (1 - explained variance)", out, "frontier_l0_fvu")
    plot_frontier(results, "kl_div", "KL to the clean model", out, "frontier_l0_kl")
    plot_frontier(results, "ce_loss_recovered", "CE loss recovered", out, "frontier_l0_ce_recovered")
    plot_training_curves(results, out)
