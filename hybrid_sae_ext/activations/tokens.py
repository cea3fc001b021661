"""A deterministic, streamed stream of fixed-length token rows from a text dataset.

Why: a resumable capture must be able to regenerate row ``r`` of the stream exactly, after a kill,
without holding the corpus in memory. ``transformer_lens.utils.tokenize_and_concatenate`` maps a
whole dataset and drops the tail of every 1000-document batch; this stream does the same join
(documents separated by EOS, rows optionally prefixed with BOS) lazily and with no dropped text, so
row ``r`` depends only on the dataset and the row length. Local files and the embedded corpus load
with ``datasets`` exactly like a hub dataset, so offline runs exercise the same code path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from datasets import IterableDataset, load_dataset
from transformers import PreTrainedTokenizerBase

from hybrid_sae_ext.models import CORPUS_DIR

EMBEDDED_CORPUS = "embedded"
FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".txt": "text", ".csv": "csv"}
TOKENIZE_DOCS = 64  # documents tokenized per call to the fast tokenizer


def load_text_dataset(path: str, split: str = "train", config_name: str | None = None) -> IterableDataset:
    """Stream a dataset: ``"embedded"`` (the packaged corpus), a local file or folder, or a hub name.

    A file is read with the ``datasets`` builder its suffix implies (``.txt`` gives column ``text``).
    """
    if path == EMBEDDED_CORPUS:
        return load_dataset(str(CORPUS_DIR), split=split, streaming=True)
    local = Path(path)
    if local.is_file():
        if local.suffix not in FILE_BUILDERS:
            raise ValueError(f"{local}: unsupported file type; use one of {sorted(FILE_BUILDERS)} or a folder")
        builder = FILE_BUILDERS[local.suffix]
        return load_dataset(builder, data_files={split: str(local)}, split=split, streaming=True)
    return load_dataset(path, config_name, split=split, streaming=True)


def _document_ids(
    documents: Iterable[dict], column: str, tokenizer: PreTrainedTokenizerBase
) -> Iterator[list[int]]:
    """Token ids per document; a column of int lists is taken as already tokenized."""
    pending: list[str] = []
    for document in documents:
        if column not in document:
            raise ValueError(f"dataset has no column {column!r}; columns are {sorted(document)}")
        value = document[column]
        if isinstance(value, str):
            pending.append(value)
            if len(pending) == TOKENIZE_DOCS:
                yield from tokenizer(pending, add_special_tokens=False)["input_ids"]
                pending = []
        else:
            if pending:
                yield from tokenizer(pending, add_special_tokens=False)["input_ids"]
                pending = []
            yield [int(token) for token in value]
    if pending:
        yield from tokenizer(pending, add_special_tokens=False)["input_ids"]


def token_rows(
    documents: Iterable[dict],
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    prepend_bos: bool = True,
    column: str = "text",
) -> Iterator[torch.Tensor]:
    """Yield ``[context_size]`` int64 rows: documents joined by EOS, cut into rows, BOS first if asked.

    The final partial row is dropped (it would need padding, which would pollute the activations).
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to separate documents")
    if prepend_bos and tokenizer.bos_token_id is None:
        raise ValueError("prepend_bos=True but the tokenizer has no BOS token")
    body = context_size - int(prepend_bos)
    if body < 1:
        raise ValueError(f"context_size {context_size} leaves no room for text")
    prefix = [tokenizer.bos_token_id] if prepend_bos else []
    buffer: list[int] = []
    for ids in _document_ids(documents, column, tokenizer):
        buffer.extend(ids)
        buffer.append(tokenizer.eos_token_id)
        start = 0
        while len(buffer) - start >= body:
            yield torch.tensor(prefix + buffer[start : start + body], dtype=torch.long)
            start += body
        del buffer[:start]
