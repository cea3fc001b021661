"""Derive SAE scaling laws: held-out FVU vs width (per k, and jointly in width and k) and vs tokens.

Example (the embedded default model, offline, a few minutes on a CPU)::

    python scripts/derive_scaling_laws.py --debug --architecture ksparse-matched --out results/scaling-debug/ksparse-matched

Writes ``<out>/scaling.json`` (points, fits, config, device, versions), ``<out>/scaling.md`` and
``<out>/loss_vs_n_features.{png,svg}``, ``<out>/loss_vs_tokens.{png,svg}``. See
``hybrid_sae_ext.experiments.sweep`` for what is trained and measured.
"""

from __future__ import annotations

import logging

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.experiments.sweep import SweepConfig, derive_scaling_laws
from hybrid_sae_ext.folders import check_output_dir
from hybrid_sae_ext.measure import keep_freed_memory


@cli_main
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(SweepConfig, argv, description=__doc__)
    check_output_dir(cfg.out, "--out")
    check_output_dir(cfg.cache_dir, "--cache_dir")
    keep_freed_memory()  # every architecture's step without page faults (see hybrid_sae_ext.measure)
    report = derive_scaling_laws(cfg)
    for k, fit in report["fits"]["n_per_k"].items():
        alpha = f"{fit['params']['alpha']:.3f}" if "error" not in fit else fit["error"]
        print(f"k={k}: alpha={alpha}")
    print(f"wrote {cfg.out}/scaling.json, scaling.md and figures")


if __name__ == "__main__":
    main()
