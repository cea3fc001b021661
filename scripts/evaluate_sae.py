"""Splice a saved SAE into a model and report CE loss recovered, KL, reconstruction and sparsity.

Example (the embedded default model and its held-out validation split, offline)::

    python scripts/evaluate_sae.py --sae_path runs/hybrid/final --n_batches 10

Metrics are printed and written as JSON (default ``<sae_path>/splice_eval.json``); see
``hybrid_sae_ext.evals.splice`` for their definitions and how BOS/special tokens are handled.
"""

from __future__ import annotations

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.evals.cli import EvaluateSAEConfig, evaluate_from_config


@cli_main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EvaluateSAEConfig, argv)
    result = evaluate_from_config(cfg)
    print(f"{result.hook_name}: {result.n_sequences} rows x {result.context_size} tokens")
    for name, value in result.summary().items():
        print(f"{name:>24}: {value:.6g}" if isinstance(value, float) else f"{name:>24}: {value}")
    print(f"wrote {cfg.output_path}")
    print(result.headline())


if __name__ == "__main__":
    main()
