"""``hybrid-sae evaluate``: splice a saved SAE into a model and report CE loss recovered, KL, reconstruction, sparsity.

Example (the embedded default model and its held-out validation split, offline)::

    hybrid-sae evaluate --sae_path runs/hybrid/final --n_batches 10

Metrics are printed and written as JSON (default ``<sae_path>/splice_eval.json``); see
``hybrid_sae_ext.evals.splice`` for their definitions and how BOS/special tokens are handled.
Why a typed config and ``evaluate_from_config``: the load-evaluate-write path is testable
in-process. The SAE folder is read with ``SAE.load_from_disk`` (any registered architecture,
``hybrid`` included, since importing ``hybrid_sae_ext`` registers it); the model is the one the SAE's
metadata names (never silently another), loaded with ``hybrid_sae_ext.models.load_model``, so the
embedded default works offline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import simple_parsing
from pathlib import Path

import hybrid_sae_ext  # noqa: F401  (registers the hybrid architecture with SAELens)
from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.evals.data import load_eval_tokens
from hybrid_sae_ext.evals.splice import SpliceEvalResult, evaluate_sae
from hybrid_sae_ext.folders import check_output_dir, check_path_text
from hybrid_sae_ext.io import write_json_atomic
from hybrid_sae_ext.models import CORPUS_DIR, TINY_LM_NAME, check_device, load_model, load_sae_folder

SPLICE_EVAL_FILE = "splice_eval.json"


@dataclass
class EvaluateSAEConfig:
    """Which SAE to splice into which model, on which held-out tokens, and where to write the metrics."""

    sae_path: str
    """Folder written by SAELens' ``save_model`` (cfg.json + sae_weights.safetensors)."""
    model_name: str | None = simple_parsing.field(default=None, alias="--model")
    """Model name or folder for ``hybrid_sae_ext.models.load_model``; default the SAE's own
    ``metadata.model_name`` (the embedded default when the SAE names none). Given, it overrides the SAE's."""
    output: str | None = simple_parsing.field(default=None, alias="--out")
    """JSON file for the metrics; default ``<sae_path>/splice_eval.json``."""
    dataset: str = str(CORPUS_DIR)
    """Parquet folder or hub dataset with a ``text`` column."""
    split: str = "validation"
    """Held-out split to evaluate on."""
    context_size: int | None = None
    """Tokens per row; default the SAE's training context size, else the model's n_ctx."""
    batch_size: int = simple_parsing.field(default=8, alias="--batch_sequences")
    """Sequences (rows of context_size tokens) per forward pass."""
    n_batches: int = 10
    """Batches to evaluate (``batch_size * n_batches`` rows, read in corpus order)."""
    hook_name: str | None = None
    """Hook point to splice at; default the SAE's own ``metadata.hook_name``."""
    exclude_special_tokens: bool = True
    """Leave BOS/EOS/PAD positions unspliced and uncounted (SAELens' default)."""
    dense_threshold: float = 0.1
    """Firing frequency (fraction of tokens) above which a latent counts as dense."""
    device: str = "cpu"
    """Device for the model and the SAE."""
    progress: bool = True
    """Show a progress bar (a line every 30 s when stderr is not a terminal)."""

    def __post_init__(self) -> None:
        check_path_text(self.sae_path, "--sae_path")
        if self.output is not None:
            check_path_text(self.output, "--out")
        for name, flag in (("batch_size", "--batch_sequences"), ("n_batches", "--n_batches")):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag}={getattr(self, name)}: must be an integer >= 1")
        if self.context_size is not None and self.context_size < 2:
            raise ValueError(f"--context_size={self.context_size}: must be >= 2 (or left out for the SAE's own)")
        if not 0 < self.dense_threshold <= 1:
            raise ValueError(f"--dense_threshold={self.dense_threshold}: must be a firing frequency in (0, 1]")
        check_device(self.device)

    @property
    def output_path(self) -> Path:
        return Path(self.output) if self.output else Path(self.sae_path) / SPLICE_EVAL_FILE

    def check_output(self) -> None:
        """Before loading anything: the output file can be written (it is replaced atomically if it exists)."""
        path = self.output_path
        check_output_dir(path.parent, "--out folder")
        if path.is_dir():
            raise ValueError(f"--out={str(path)!r} is a folder; give a .json file path")


def evaluate_from_config(cfg: EvaluateSAEConfig) -> SpliceEvalResult:
    """Load the SAE, the model and the tokens, evaluate, and write ``cfg.output_path`` atomically."""
    cfg.check_output()
    sae = load_sae_folder(cfg.sae_path, device=cfg.device)
    model_name = cfg.model_name or sae.cfg.metadata.model_name or TINY_LM_NAME
    model = load_model(model_name, device=cfg.device)
    context_size = cfg.context_size or sae.cfg.metadata.context_size or model.cfg.n_ctx
    tokens = load_eval_tokens(
        model, cfg.dataset, cfg.split, context_size=context_size, n_rows=cfg.batch_size * cfg.n_batches
    )
    result = evaluate_sae(
        model,
        sae,
        tokens,
        hook_name=cfg.hook_name,
        batch_size=cfg.batch_size,
        exclude_special_tokens=cfg.exclude_special_tokens,
        dense_threshold=cfg.dense_threshold,
        progress=cfg.progress,
    )
    write_json_atomic(cfg.output_path, {"config": asdict(cfg), "model_name": model_name, **result.to_dict()})
    return result


@cli_main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(EvaluateSAEConfig, argv, description=__doc__)
    result = evaluate_from_config(cfg)
    print(f"{result.hook_name}: {result.n_sequences} rows x {result.context_size} tokens")
    for name, value in result.summary().items():
        print(f"{name:>24}: {value:.6g}" if isinstance(value, float) else f"{name:>24}: {value}")
    print(f"wrote {cfg.output_path}")
    print(result.headline())
