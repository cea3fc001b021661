"""Evaluate SAEs spliced into TransformerLens models (CE recovered, KL, reconstruction, sparsity)."""

from hybrid_sae_ext.evals.data import load_eval_tokens
from hybrid_sae_ext.evals.splice import (
    SpliceEvalResult,
    evaluate_sae,
    sae_replacement_hook,
    special_token_mask,
    zero_ablation_hook,
)
from hybrid_sae_ext.evals.stats import Histogram

__all__ = [
    "Histogram",
    "SpliceEvalResult",
    "evaluate_sae",
    "load_eval_tokens",
    "sae_replacement_hook",
    "special_token_mask",
    "zero_ablation_hook",
]
