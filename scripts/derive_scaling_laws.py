"""Derive SAE scaling laws: held-out FVU vs width (per k, and jointly in width and k) and vs tokens.

Example (the embedded default model, offline, a few minutes on a CPU)::

    python scripts/derive_scaling_laws.py --debug --out results/scaling-debug

Writes ``<out>/scaling.json`` (points, fits, config, device, versions), ``<out>/scaling.md`` and
``<out>/loss_vs_n_features.{png,svg}``, ``<out>/loss_vs_tokens.{png,svg}``. See
``hybrid_sae_ext.experiments.sweep`` for what is trained and measured.
"""

from __future__ import annotations

import logging

import simple_parsing

from hybrid_sae_ext.experiments.sweep import SweepConfig, derive_scaling_laws


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = simple_parsing.parse(SweepConfig, args=argv, description=__doc__)
    report = derive_scaling_laws(cfg)
    for k, fit in report["fits"]["n_per_k"].items():
        alpha = f"{fit['params']['alpha']:.3f}" if "error" not in fit else fit["error"]
        print(f"k={k}: alpha={alpha}")
    print(f"wrote {cfg.out}/scaling.json, scaling.md and figures")


if __name__ == "__main__":
    main()
