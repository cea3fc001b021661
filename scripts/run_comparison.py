"""Compare vanilla, gated, JumpReLU, TopK (two inits), BatchTopK and the hybrid (fixed k and target_l0)
at one target L0, on identical activations, budget and seeds.

    python scripts/run_comparison.py --debug --seeds 0 1 2
    python scripts/run_comparison.py --debug --lr_sweep 1e-3 3e-3 1e-2   # how the shared lr was chosen
    python scripts/run_comparison.py --model gpt2 --layer 6 --n_features 4096 --batch_size 8 --epochs 2
"""

import logging
from pathlib import Path

import hybrid_sae_ext  # noqa: F401  (registers the hybrid architecture)
from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results
from hybrid_sae_ext.experiments.lr_sweep import sweep_learning_rates, write_lr_sweep
from hybrid_sae_ext.folders import check_output_dir
from hybrid_sae_ext.measure import keep_freed_memory


@cli_main
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = parse_config(ComparisonConfig, argv)
    check_output_dir(cfg.out, "--out")
    if cfg.cache_dir:
        check_output_dir(cfg.cache_dir, "--cache_dir")
    keep_freed_memory()  # every architecture's step without page faults (see hybrid_sae_ext.measure)
    if cfg.lr_sweep:
        write_lr_sweep(sweep_learning_rates(cfg), Path(cfg.out))
        print((Path(cfg.out) / "lr_sweep.md").read_text())
        return
    results = run_comparison(cfg)
    write_results(results, Path(cfg.out))
    print((Path(cfg.out) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
