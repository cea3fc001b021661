"""Write a scaling sweep's results: ``scaling.json``, ``scaling.md`` and log-log figures (PNG + SVG).

Why a separate module: the report only reads the JSON-able result of ``sweep.derive_scaling_laws``,
so tables and figures can be regenerated from a saved ``scaling.json`` without retraining.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI machines or GPU nodes
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

from hybrid_sae_ext.experiments.scaling import PowerLawFit, predict
from hybrid_sae_ext.io import atomic_path, write_json_atomic, write_text_atomic

FIGURES = ("loss_vs_n_features", "loss_vs_tokens")
VARIANTS_FIGURE = "variants_loss_vs_n_features"
_SHARED = ("model", "hook_site", "layer", "dataset", "widths", "ks", "token_checkpoints", "heldout_tokens",
           "batch_size", "lr", "lr_warmup_steps", "seed", "n_boot", "confidence")
"""Sweep settings that must be equal for two sweeps' laws to be compared."""


def write_report(out: Path, report: dict[str, Any]) -> None:
    """All files of one sweep under ``out``; each written atomically."""
    write_json_atomic(out / "scaling.json", report)
    write_text_atomic(out / "scaling.md", markdown(report))
    for name, figure in zip(FIGURES, (figure_n_features(report), figure_tokens(report))):
        _save(figure, out / name)


def _save(figure: plt.Figure, stem: Path) -> None:
    """``<stem>.png`` and ``<stem>.svg``, atomically; the figure is closed."""
    for suffix in ("png", "svg"):
        with atomic_path(stem.with_name(f"{stem.name}.{suffix}")) as tmp:
            figure.savefig(tmp, format=suffix, dpi=150, bbox_inches="tight")
    plt.close(figure)


def _law(fit: dict[str, Any]) -> PowerLawFit | None:
    return None if "error" in fit else PowerLawFit(**fit)


def _ci(fit: dict[str, Any], name: str) -> str:
    """``value [low, high]``, or the reason the fit failed."""
    if "error" in fit:
        return f"fit failed: {fit['error']}"
    return f"{fit['params'][name]:.3g} [{fit['ci_low'][name]:.3g}, {fit['ci_high'][name]:.3g}]"


def _table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _point(fit: dict[str, Any], name: str) -> str:
    return "" if "error" in fit else f"{fit['params'][name]:.3g}"


def _r2(fit: dict[str, Any]) -> str:
    return "" if "error" in fit else f"{fit['r_squared']:.4f}"


def markdown(report: dict[str, Any]) -> str:
    """Tables of the fitted exponents (with bootstrap intervals and R^2) and of the measured points."""
    cfg, fits, points = report["config"], report["fits"], report["points"]
    joint = fits["joint_n_k"]
    level = f"{100 * cfg['confidence']:g}%"
    final = fits["final_tokens"]
    budgets = sorted({p["tokens"] for p in points})
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
    libraries = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines = [
        f"# SAE scaling laws: `{cfg['architecture']}` on `{cfg['model']}` `{report['hook']}`",
        "",
        (f"{len(cfg['widths'])} widths x {len(cfg['ks'])} k values, trained together in one pass of "
        f"{final:,} tokens ({report['train_rows']:,} distinct training rows) and evaluated at {len(budgets)} "
        f"token checkpoints. Loss = held-out FVU on {report['heldout_rows']:,} validation-split tokens "
        f"(d_in {report['d_in']}). Device `{report['device']}`; {libraries}. Seconds: {seconds}. "
        f"Intervals: {level} bootstrap over points ({cfg['n_boot']} resamples)."),
        "",
        *_config_section(report),
        f"## L(N) = a N^-alpha + c per k, at {final:,} tokens",
        "",
        *_table(["k", f"alpha [{level}]", "a", f"c [{level}]", "R²", "points"], (
            [k, _ci(f, "alpha"), _point(f, "a"), _ci(f, "c"), _r2(f), f.get("n_points", "")]
            for k, f in fits["n_per_k"].items())),
        "",
        f"## L(N, k) = a N^-alpha k^-beta + c, at {final:,} tokens",
        "",
        *_table([f"alpha [{level}]", f"beta [{level}]", "a", f"c [{level}]", "R²", "points"], [[
            _ci(joint, "alpha"), _ci(joint, "beta"), _point(joint, "a"), _ci(joint, "c"), _r2(joint),
            joint.get("n_points", "")]]),
        "",
        "## L(T) = a T^-alpha + c per run (T: training tokens)",
        "",
        *_table(["n_features", "k", f"alpha [{level}]", f"c [{level}]", "R²"], (
            [run["n_features"], run["k"], _ci(run["fit"], "alpha"), _ci(run["fit"], "c"), _r2(run["fit"])]
            for run in fits["tokens_per_run"])),
        "",
        "## Held-out FVU per token checkpoint; L0 and dead fraction at the last",
        "",
        *_table(["n_features", "k", *(f"FVU @ {t:,}" for t in budgets), "L0", "dead"], (
            [n, k, *(f"{p['fvu']:.4f}" for p in run), f"{run[-1]['l0']:.1f}", f"{run[-1]['dead_fraction']:.3f}"]
            for (n, k), run in _runs(points).items())),
        "",
    ]
    return "\n".join(lines)


def _flat(config: dict[str, Any]) -> dict[str, str]:
    """A run's config as ``section.field -> JSON text``, so runs can be compared field by field."""
    return {f"{section}.{name}" if isinstance(fields, dict) else section: json.dumps(value)
            for section, fields in config.items()
            for name, value in (fields.items() if isinstance(fields, dict) else [(section, fields)])}


def _config_section(report: dict[str, Any]) -> list[str]:
    """The variant, the config fields every run shares, and per run the fields that differ."""
    variant = report["variant"]
    configs = [_flat(run["config"]) for run in report["runs"]]
    varying = sorted(key for key in configs[0] if len({c[key] for c in configs}) > 1)
    shared = ", ".join(f"`{key}={value}`" for key, value in configs[0].items() if key not in varying)
    return [
        "## Runs",
        "",
        (f"Variant `{report['config']['architecture']}`: SAELens `{variant['architecture']}`, sparsity set by "
         f"`{variant['sparsity_knob']}` (the k axis), overrides of SAELens' defaults "
         f"`{json.dumps(variant['overrides'])}`, W_enc column norm after init "
         f"`{variant['encoder_init_norm']}`. Config of every run (`runs` in `scaling.json` has each in full): "
         f"{shared}."),
        "",
        *_table(["n_features", "k", *varying], (
            [run["n_features"], run["k"], *(config[key] for key in varying)]
            for run, config in zip(report["runs"], configs))),
        "",
    ]


def _runs(points: list[dict[str, Any]]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """Points grouped by (n_features, k), each group ordered by tokens."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for p in sorted(points, key=lambda p: (p["n_features"], p["k"], p["tokens"])):
        runs.setdefault((p["n_features"], p["k"]), []).append(p)
    return runs


def _title(report: dict[str, Any], what: str) -> str:
    cfg = report["config"]
    return f"{cfg['architecture']} SAE on {Path(cfg['model']).name} {report['hook']}: {what}"


def _log_axes(axes: Axes, xticks: Iterable[float]) -> None:
    """Log-log, x ticks at the swept values, plain y labels (every tick within a decade, else 1, 2, 3, 5 x 10^n)."""
    axes.set(xscale="log", yscale="log")
    axes.set_xticks(list(xticks), [f"{x / 1000:.0f}k" if x >= 10_000 else f"{x:g}" for x in xticks])
    axes.xaxis.set_minor_formatter(NullFormatter())

    def shown(v: float) -> bool:
        low, high = axes.get_ylim()
        return high / low < 10 or round(v / 10 ** np.floor(np.log10(v))) in (1, 2, 3, 5)

    label = FuncFormatter(lambda v, _: f"{v:.2g}" if shown(v) else "")
    axes.yaxis.set_major_formatter(label)
    axes.yaxis.set_minor_formatter(label)
    axes.grid(True, which="both", alpha=0.3)


def figure_n_features(report: dict[str, Any]) -> plt.Figure:
    """FVU vs n_features at the final budget, one colour per k: points, per-k fit (solid), joint fit (dashed)."""
    fits, final = report["fits"], report["fits"]["final_tokens"]
    widths = np.asarray(report["config"]["widths"], dtype=np.float64)
    grid = np.geomspace(widths.min() / 1.2, widths.max() * 1.2, 100)
    joint = _law(fits["joint_n_k"])
    figure, axes = plt.subplots(figsize=(7, 5))
    ks = report["config"]["ks"]
    for color, k in zip(plt.get_cmap("viridis")(np.linspace(0, 0.9, len(ks))), ks):
        chosen = [p for p in report["points"] if p["tokens"] == final and p["k"] == k]
        fit = fits["n_per_k"][str(k)]
        label = f"k={k}: alpha={fit['params']['alpha']:.2f}" if "error" not in fit else f"k={k} (fit failed)"
        axes.plot([p["n_features"] for p in chosen], [p["fvu"] for p in chosen], "o", color=color, label=label)
        if (law := _law(fit)) is not None:
            axes.plot(grid, predict(law, grid), "-", color=color)
        if joint is not None:
            axes.plot(grid, predict(joint, grid, np.full_like(grid, float(k))), "--", color=color, alpha=0.6)
    if joint is not None:
        p = joint.params
        axes.plot([], [], "--", color="gray", label=f"joint: alpha={p['alpha']:.2f}, beta={p['beta']:.2f}")
    _log_axes(axes, widths)
    axes.set(xlabel="n_features (SAE width)", ylabel="held-out FVU",
             title=_title(report, f"FVU vs width at {final:,} tokens"))
    axes.legend(title="fits: L = a N^-alpha + c", loc="upper left", bbox_to_anchor=(1.02, 1))
    return figure


def figure_tokens(report: dict[str, Any]) -> plt.Figure:
    """FVU vs training tokens, one panel per k, one colour per width, with the per-run L(T) fits."""
    cfg, fits = report["config"], {(r["n_features"], r["k"]): r["fit"] for r in report["fits"]["tokens_per_run"]}
    budgets = np.asarray(sorted({p["tokens"] for p in report["points"]}), dtype=np.float64)
    grid = np.geomspace(budgets.min() / 1.2, budgets.max() * 1.2, 100)
    figure, panels = plt.subplots(1, len(cfg["ks"]), figsize=(4.5 * len(cfg["ks"]), 4.5), sharey=True, squeeze=False)
    colors = dict(zip(cfg["widths"], plt.get_cmap("plasma")(np.linspace(0, 0.85, len(cfg["widths"])))))
    runs = _runs(report["points"])
    for axes, k in zip(panels[0], cfg["ks"]):
        for n in cfg["widths"]:
            run, fit = runs[(n, k)], fits[(n, k)]
            label = f"N={n}" + (f": alpha_T={fit['params']['alpha']:.2f}" if "error" not in fit else " (fit failed)")
            axes.plot([p["tokens"] for p in run], [p["fvu"] for p in run], "o", color=colors[n], label=label)
            if (law := _law(fit)) is not None:
                axes.plot(grid, predict(law, grid), "-", color=colors[n])
        _log_axes(axes, budgets)
        axes.set(xlabel="training tokens", title=f"k = {k}")
        axes.legend(fontsize="small")
    panels[0][0].set_ylabel("held-out FVU")
    figure.suptitle(_title(report, "FVU vs training tokens (fits: L = a T^-alpha + c)"))
    figure.tight_layout()
    return figure


@dataclass
class VariantComparisonConfig:
    """Which saved sweeps to compare (flags of ``hybrid-sae compare-scaling``)."""

    sweeps: list[str] = field(default_factory=list)
    """Sweep output folders (each with a scaling.json), one per variant."""
    out: str = "results/scaling-debug"
    """Folder for variants.md and the figure."""


def check_comparable(reports: dict[str, dict[str, Any]]) -> None:
    """Refuse to compare sweeps that differ in anything but the variant (grid, budget, data, schedule, seed)."""
    first_name, first = next(iter(reports.items()))
    for name, report in reports.items():
        for key in _SHARED:
            if report["config"][key] != first["config"][key]:
                raise ValueError(f"sweeps {first_name!r} and {name!r} differ in {key}: "
                                 f"{first['config'][key]} vs {report['config'][key]}; only the variant may differ")


def variants_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """One sweep per variant, side by side: fitted exponents and floors, and held-out FVU per grid cell."""
    check_comparable(reports)
    cfg = next(iter(reports.values()))["config"]
    level = f"{100 * cfg['confidence']:g}%"
    final = next(iter(reports.values()))["fits"]["final_tokens"]
    devices = sorted({r["device"] for r in reports.values()})
    seconds = ", ".join(f"{name} {r['seconds']['total']:.0f} s" for name, r in reports.items())
    finals = {name: {(p["n_features"], p["k"]): p for p in r["points"] if p["tokens"] == final}
              for name, r in reports.items()}
    first = next(iter(reports))

    def fvu_cells(n: int, k: int) -> list[str]:
        values = {name: cells[n, k]["fvu"] for name, cells in finals.items()}
        best = min(values.values())
        return [f"**{v:.4f}**" if v == best else f"{v:.4f}" for v in values.values()]

    lines = [
        f"# Scaling laws per variant on `{cfg['model']}` `blocks.{cfg['layer']}.{cfg['hook_site']}`",
        "",
        (f"The same grid ({len(cfg['widths'])} widths x {len(cfg['ks'])} k), data order, schedule (lr {cfg['lr']:g}) "
         f"and seed for every variant; held-out FVU after {final:,} tokens. k is the target L0 of target_l0 "
         f"variants. Device {', '.join(f'`{d}`' for d in devices)}; seconds per sweep: {seconds}. "
         f"Intervals: {level} bootstrap over points."),
        "",
        *_table(["variant", "SAELens", "sparsity", "overrides", "W_enc init norm"], (
            [name, r["variant"]["architecture"], r["variant"]["sparsity_knob"], json.dumps(r["variant"]["overrides"]),
             r["variant"]["encoder_init_norm"]] for name, r in reports.items())),
        "",
        "## L(N) = a N^-alpha + c per k",
        "",
        *_table(["k", "variant", f"alpha [{level}]", f"c [{level}]", "R²"], (
            [k, name, _ci(fit, "alpha"), _ci(fit, "c"), _r2(fit)]
            for k in cfg["ks"] for name, r in reports.items() for fit in [r["fits"]["n_per_k"][str(k)]])),
        "",
        "## L(N, k) = a N^-alpha k^-beta + c",
        "",
        *_table(["variant", f"alpha [{level}]", f"beta [{level}]", f"c [{level}]", "R²"], (
            [name, _ci(j, "alpha"), _ci(j, "beta"), _ci(j, "c"), _r2(j)]
            for name, r in reports.items() for j in [r["fits"]["joint_n_k"]])),
        "",
        f"## Against `{first}`: held-out FVU at {final:,} tokens, cell by cell",
        "",
        *_table(["variant", f"cells where {first} is lower", f"FVU ratio variant / {first}: median [min, max]"], (
            [name, f"{sum(r > 1 for r in ratios)} of {len(ratios)}",
             f"{np.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"]
            for name, cells in finals.items() if name != first
            for ratios in [[cells[key]["fvu"] / finals[first][key]["fvu"] for key in sorted(cells)]])),
        "",
        f"## Held-out FVU at {final:,} tokens (lowest in bold), and L0 / dead fraction per variant",
        "",
        *_table(["n_features", "k", *(f"FVU {name}" for name in reports), *(f"L0 / dead {name}" for name in reports)], (
            [n, k, *fvu_cells(n, k),
             *(f"{cells[n, k]['l0']:.1f} / {cells[n, k]['dead_fraction']:.3f}" for cells in finals.values())]
            for n in cfg["widths"] for k in cfg["ks"])),
        "",
    ]
    return "\n".join(lines)


def figure_variants(reports: dict[str, dict[str, Any]]) -> plt.Figure:
    """FVU vs width at the final budget, one panel per k, one colour per variant with its L(N) fit."""
    cfg = next(iter(reports.values()))["config"]
    widths = np.asarray(cfg["widths"], dtype=np.float64)
    grid = np.geomspace(widths.min() / 1.2, widths.max() * 1.2, 100)
    figure, panels = plt.subplots(1, len(cfg["ks"]), figsize=(4.5 * len(cfg["ks"]), 4.5), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10")(np.arange(len(reports)))
    for axes, k in zip(panels[0], cfg["ks"]):
        for color, (name, report) in zip(colors, reports.items()):
            final = report["fits"]["final_tokens"]
            chosen = sorted((p["n_features"], p["fvu"]) for p in report["points"] if p["tokens"] == final and p["k"] == k)
            fit = report["fits"]["n_per_k"][str(k)]
            label = name + (f": alpha={fit['params']['alpha']:.2f}" if "error" not in fit else " (fit failed)")
            axes.plot(*zip(*chosen), "o", color=color, label=label)
            if (law := _law(fit)) is not None:
                axes.plot(grid, predict(law, grid), "-", color=color)
        _log_axes(axes, widths)
        axes.set(xlabel="n_features (SAE width)", title=f"k = {k} (target L0 for target_l0 variants)")
        axes.legend(fontsize="small")
    panels[0][0].set_ylabel("held-out FVU")
    figure.suptitle(f"Variants on {Path(cfg['model']).name}: FVU vs width (fits: L = a N^-alpha + c)")
    figure.tight_layout()
    return figure


def write_variant_comparison(out: Path, reports: dict[str, dict[str, Any]]) -> None:
    """``variants.md`` and the variants figure (PNG + SVG) under ``out``, from saved sweeps (no retraining)."""
    write_text_atomic(out / "variants.md", variants_markdown(reports))
    _save(figure_variants(reports), out / VARIANTS_FIGURE)


def load_sweeps(folders: Iterable[str | Path]) -> dict[str, dict[str, Any]]:
    """Saved sweeps (``<folder>/scaling.json``) by variant name; two sweeps of one variant are refused."""
    reports: dict[str, dict[str, Any]] = {}
    for folder in folders:
        report = json.loads((Path(folder) / "scaling.json").read_text())
        name = report["config"]["architecture"]
        if name in reports:
            raise ValueError(f"two sweeps of variant {name!r} (the second in {str(folder)!r}); give one per variant")
        reports[name] = report
    if len(reports) < 2:
        raise ValueError(f"a comparison needs sweeps of >= 2 variants, got {list(reports)}")
    return reports
