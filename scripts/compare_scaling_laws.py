"""Compare saved scaling sweeps of several variants (``scripts/derive_scaling_laws.py --architecture ...``).

Example (the committed CPU sweeps)::

    python scripts/compare_scaling_laws.py --sweeps results/scaling-debug/hybrid \
        results/scaling-debug/ksparse-matched results/scaling-debug/jumprelu --out results/scaling-debug

Writes ``<out>/variants.md`` (fitted exponents and floors per variant, held-out FVU per grid cell) and
``<out>/variants_loss_vs_n_features.{png,svg}``. Sweeps that differ in anything but the variant are refused.
"""

from __future__ import annotations

from pathlib import Path

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.experiments.sweep_report import VariantComparisonConfig, load_sweeps, write_variant_comparison
from hybrid_sae_ext.folders import check_output_dir


@cli_main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(VariantComparisonConfig, argv, description=__doc__)
    check_output_dir(cfg.out, "--out")
    reports = load_sweeps(cfg.sweeps)
    write_variant_comparison(Path(cfg.out), reports)
    print(f"wrote {cfg.out}/variants.md and figure ({', '.join(reports)})")


if __name__ == "__main__":
    main()
