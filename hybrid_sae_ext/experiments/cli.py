"""``hybrid-sae compare``, ``hybrid-sae scaling`` and ``hybrid-sae compare-scaling``: the experiments' commands.

Examples (the embedded default model, offline)::

    hybrid-sae compare --debug --seeds 0 1 2
    hybrid-sae compare --debug --lr_sweep 1e-3 3e-3 1e-2        # how each architecture's lr was chosen
    hybrid-sae compare --model gpt2 --layer 6 --d_sae 4096 --batch_sequences 8 --epochs 2   # needs the hub
    hybrid-sae scaling --debug --architecture ksparse-matched --out results/scaling-debug/ksparse-matched
    hybrid-sae compare-scaling --sweeps results/scaling-debug/hybrid results/scaling-debug/ksparse-matched \\
        --out results/scaling-debug

``compare`` writes ``<out>/comparison.{md,json}`` and figures (``lr_sweep.{md,json}`` with ``--lr_sweep``);
``scaling`` writes ``<out>/scaling.{json,md}`` and figures; ``compare-scaling`` writes ``<out>/variants.md``
and a figure, refusing sweeps that differ in anything but the variant. A killed run resumes when run again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results
from hybrid_sae_ext.experiments.lr_sweep import sweep_learning_rates, write_lr_sweep
from hybrid_sae_ext.experiments.sweep import SweepConfig, derive_scaling_laws
from hybrid_sae_ext.experiments.sweep_report import VariantComparisonConfig, load_sweeps, write_variant_comparison
from hybrid_sae_ext.folders import check_output_dir
from hybrid_sae_ext.measure import keep_freed_memory


@cli_main
def compare(argv: list[str] | None = None) -> None:
    """Train and tabulate the comparison (or, with ``--lr_sweep``, its learning-rate sweep) and print the table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = parse_config(ComparisonConfig, argv, description=__doc__)
    check_output_dir(cfg.out, "--out")
    if cfg.cache_dir:
        check_output_dir(cfg.cache_dir, "--cache_dir")
    keep_freed_memory()  # every architecture's step without page faults (see hybrid_sae_ext.measure)
    if cfg.lr_sweep:
        write_lr_sweep(sweep_learning_rates(cfg), Path(cfg.out))
        print((Path(cfg.out) / "lr_sweep.md").read_text())
        return
    write_results(run_comparison(cfg), Path(cfg.out))
    print((Path(cfg.out) / "comparison.md").read_text())


@cli_main
def scaling(argv: list[str] | None = None) -> None:
    """Run one scaling sweep (``hybrid_sae_ext.experiments.sweep``), fit it and print the width exponents."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(SweepConfig, argv, description=__doc__)
    check_output_dir(cfg.out, "--out")
    check_output_dir(cfg.cache_dir, "--cache_dir")
    keep_freed_memory()
    report = derive_scaling_laws(cfg)
    for k, fit in report["fits"]["n_per_k"].items():
        alpha = f"{fit['params']['alpha']:.3f}" if "error" not in fit else fit["error"]
        print(f"k={k}: alpha={alpha}")
    print(f"wrote {cfg.out}/scaling.json, scaling.md and figures")


@cli_main
def compare_scaling(argv: list[str] | None = None) -> None:
    """Set saved sweeps of several variants side by side (``variants.md`` and a figure)."""
    cfg = parse_config(VariantComparisonConfig, argv, description=__doc__)
    check_output_dir(cfg.out, "--out")
    reports = load_sweeps(cfg.sweeps)
    write_variant_comparison(Path(cfg.out), reports)
    print(f"wrote {cfg.out}/variants.md and figure ({', '.join(reports)})")
