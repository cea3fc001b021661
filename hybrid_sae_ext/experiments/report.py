"""Tables and figures of the comparison results (used by the script and the notebooks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

ARCHITECTURE_LABELS = {"vanilla": "vanilla (L1)", "gated": "gated", "ksparse": "K-sparse (TopK)", "hybrid": "hybrid"}
TABLE_COLUMNS = (
    ("architecture", "SAE", "{}"), ("setting", "setting", "{}"), ("l0", "L0", "{:.1f}"),
    ("normalized_mse", "norm. MSE", "{:.4f}"), ("fvu", "FVU", "{:.4f}"), ("ce_loss_recovered", "CE recovered", "{:.4f}"),
    ("kl_div", "KL", "{:.4f}"), ("dead_fraction", "dead %", "{:.1%}"), ("train_seconds", "train s", "{:.1f}"),
    ("peak_memory_mib", "peak MiB", "{:.1f}"), ("time_vs_ksparse", "time vs K-sparse", "{:.2f}"),
    ("memory_vs_ksparse", "memory vs K-sparse", "{:.2f}"),
)


def _setting(row: dict[str, Any]) -> str:
    return f"k={row['k']}" if "k" in row else f"l1={row['l1_coefficient']:g}"


def comparison_markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"# SAE comparison: {cfg['model']} `{results['hook_name']}`",
        "",
        f"d_sae={cfg['n_features']}, {results['train_tokens']:,} training tokens ({cfg['epochs']} epochs over "
        f"{cfg['tokens']:,} captured), batch {cfg['batch_size']} x {cfg['context_size'] - 1} tokens, lr {cfg['lr']}, "
        f"seed {cfg['seed']}; device `{results['device_name']}`; {results['versions']}.",
        f"Splice evaluation on {results['eval_tokens']:,} held-out tokens: CE clean {results['eval']['ce_loss_clean']:.4f}, "
        f"zero-ablation {results['eval']['ce_loss_zero_ablation']:.4f}.",
        "",
        f"Sparsity matching: each architecture's knob is swept (k for K-sparse and hybrid, the L1 coefficient for "
        f"vanilla and gated); the table shows, per architecture, the setting whose L0 is closest to {results['target_l0']} "
        "(in log space, among runs with FVU < 1: a run no better than predicting the mean has collapsed). "
        "The frontier figures show every setting. Training time is each SAE's own step time within the shared pass; "
        "peak memory is measured for each SAE alone (build + 3 steps; CUDA allocator or CPU RSS).",
        "",
        "| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in results["table"]:
        cells = []
        for key, _, fmt in TABLE_COLUMNS:
            value = _setting(row) if key == "setting" else row.get(key)
            if key == "architecture":
                value = ARCHITECTURE_LABELS.get(value, value)
            cells.append("-" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## All runs", "", "| run | L0 | FVU | CE recovered | KL | dead % |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['run']} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['ce_loss_recovered']:.4f} | {r['kl_div']:.4f} | "
        f"{r['dead_fraction']:.1%} |"
        for r in sorted(results["runs"], key=lambda r: (r["architecture"], r["l0"]))
    ]
    return "\n".join(lines) + "\n"


def _by_architecture(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in runs:
        grouped.setdefault(row["architecture"], []).append(row)
    return {arch: sorted(rows, key=lambda r: r["l0"]) for arch, rows in grouped.items()}


def _save(fig: plt.Figure, out: Path, name: str) -> None:
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(out / f"{name}.{suffix}", dpi=150)
    plt.close(fig)


def plot_frontier(results: dict[str, Any], metric: str, label: str, out: Path, name: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for arch, rows in _by_architecture(results["runs"]).items():
        ax.plot([r["l0"] for r in rows], [r[metric] for r in rows], marker="o", label=ARCHITECTURE_LABELS.get(arch, arch))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel(label)
    ax.set_title(f"Sparsity frontier at {results['hook_name']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out, name)


def plot_training_curves(results: dict[str, Any], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    batch_tokens = results["train_tokens"] / results["steps"]
    for row in results["table"]:
        curve = next(r["curve"] for r in results["runs"] if r["run"] == row["run"])
        ax.plot([m["step"] * batch_tokens for m in curve], [m["normalized_mse"] for m in curve],
                label=f"{ARCHITECTURE_LABELS.get(row['architecture'], row['architecture'])} ({_setting(row)})")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("normalized MSE (training batch)")
    ax.set_title("Training curves (table settings)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out, "training_curves")


def plot_comparison(results: dict[str, Any], out: Path) -> None:
    plot_frontier(results, "fvu", "FVU (1 - explained variance)", out, "frontier_l0_fvu")
    plot_frontier(results, "ce_loss_recovered", "CE loss recovered", out, "frontier_l0_ce_recovered")
    plot_training_curves(results, out)
