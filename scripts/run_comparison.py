"""Compare vanilla (L1), gated, K-sparse and hybrid SAEs on identical activations.

    python scripts/run_comparison.py --debug
    python scripts/run_comparison.py --model gpt2 --layer 6 --n_features 4096 --batch_size 8 --epochs 2
"""

from pathlib import Path

import hybrid_sae_ext  # noqa: F401  (registers the hybrid architecture)
from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results
from hybrid_sae_ext.folders import check_output_dir


@cli_main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ComparisonConfig, argv)
    check_output_dir(cfg.out, "--out")
    if cfg.cache_dir:
        check_output_dir(cfg.cache_dir, "--cache_dir")
    results = run_comparison(cfg)
    write_results(results, Path(cfg.out))
    print((Path(cfg.out) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
