"""Held-out token rows for evaluation, built the way SAELens builds pretokenized datasets.

Why: evaluation must run on text the SAE was not trained on (the ``validation`` split of the
embedded corpus by default), cut into fixed-length rows that start with BOS and separate
documents with EOS, exactly as ``transformer_lens.utils.tokenize_and_concatenate`` does for
SAELens' pretokenized datasets, so positions and special tokens match training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import datasets
from datasets.utils import logging as datasets_logging
import torch
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.utils import tokenize_and_concatenate

from hybrid_sae_ext.models import CORPUS_DIR


def load_eval_tokens(
    model: HookedTransformer,
    dataset: str | Path = CORPUS_DIR,
    split: str = "validation",
    context_size: int | None = None,
    n_rows: int | None = None,
    column: str = "text",
) -> Tensor:
    """Token rows ``[n_rows, context_size]`` (int64, CPU) of ``dataset``'s ``split``, in corpus order.

    ``dataset`` is a folder of parquet files or a hub name for ``datasets.load_dataset``;
    ``context_size`` defaults to ``model.cfg.n_ctx``; ``n_rows=None`` keeps every full row.
    """
    if model.tokenizer is None:
        raise ValueError("the model has no tokenizer; cannot tokenize the evaluation text")
    context_size = context_size or model.cfg.n_ctx
    if context_size > model.cfg.n_ctx:
        raise ValueError(f"context_size={context_size} exceeds the model's n_ctx={model.cfg.n_ctx}")
    with datasets_progress_bars_off():
        text = datasets.load_dataset(str(dataset), split=split)
        rows = tokenize_and_concatenate(text, model.tokenizer, max_length=context_size, column_name=column,
                                        num_proc=None)
    tokens = torch.as_tensor(rows[: len(rows) if n_rows is None else n_rows]["tokens"], dtype=torch.long)
    if n_rows is not None and tokens.shape[0] < n_rows:
        raise ValueError(f"{split!r} split of {dataset} has only {tokens.shape[0]} rows of {context_size} tokens")
    return tokens


@contextlib.contextmanager
def datasets_progress_bars_off() -> Iterator[None]:
    """Hide ``datasets``' "Generating split" and "Map" bars (a second each, on a few thousand documents) and
    restore their setting after: the stage that calls this shows its own progress."""
    was_enabled = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            datasets_logging.enable_progress_bar()
