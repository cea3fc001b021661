"""Compare vanilla (L1), gated, K-sparse and hybrid SAEs on identical activations.

    python scripts/run_comparison.py --debug
    python scripts/run_comparison.py --model gpt2 --layer 6 --n_features 4096 --batch_size 8 --epochs 2
"""

from pathlib import Path

from simple_parsing import parse

import hybrid_sae_ext  # noqa: F401  (registers the hybrid architecture)
from hybrid_sae_ext.experiments.comparison import ComparisonConfig, run_comparison, write_results

if __name__ == "__main__":
    cfg = parse(ComparisonConfig)
    results = run_comparison(cfg)
    write_results(results, Path(cfg.out))
    print((Path(cfg.out) / "comparison.md").read_text())
