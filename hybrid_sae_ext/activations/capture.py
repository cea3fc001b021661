"""Capture TransformerLens activations for several hooks in one forward pass into a sharded cache.

Why: one forward pass per batch serves every requested hook, and the pass stops after the last
block any hook needs. Shard ``k`` is a deterministic function of the config: the token stream is
deterministic, forward batches always cover rows ``[j * batch_size, (j + 1) * batch_size)`` of
that stream, and shards cut the resulting activation stream every ``tokens_per_shard`` tokens.
A killed capture therefore resumes by recomputing from the batch that holds the first missing
token, and ends with the same manifest and checksums as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import simple_parsing
import torch
from transformer_lens import HookedTransformer

from hybrid_sae_ext.activations.cache import CacheWriter, Manifest, storage_dtype
from hybrid_sae_ext.activations.tokens import EMBEDDED_CORPUS, load_text_dataset, token_rows
from hybrid_sae_ext.folders import check_output_dir, check_path_text, folder_lock
from hybrid_sae_ext.models import TINY_LM_NAME, check_device, load_model, model_dtype
from hybrid_sae_ext.progress import progress_bar

NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")  # [batch, head, q, k]: no single row per token
OUTPUT_ONLY_FIELDS = {"output_dir", "progress"}  # fields that do not change what is captured


@dataclass
class CaptureConfig:
    """What to capture, from which model and text, and how to store it."""

    output_dir: str = simple_parsing.field(default="activations", alias="--out")
    """Cache folder; an unfinished capture with the same config there is resumed."""
    model_name: str = simple_parsing.field(default=TINY_LM_NAME, alias="--model")
    """TransformerLens model name, a folder written by ``save_model_folder``, or the embedded default."""
    hook_names: list[str] = field(default_factory=lambda: ["blocks.0.hook_resid_post"])
    """Hooks captured together in each forward pass."""
    dataset_path: str = EMBEDDED_CORPUS
    """``embedded`` (the packaged corpus), a local parquet/json/jsonl/txt/csv file or folder, or a hub name."""
    dataset_split: str = "train"
    """Split to stream (hub datasets and the embedded corpus have ``train`` and ``validation``)."""
    dataset_config: str = ""
    """Hub dataset config name (e.g. ``wikitext-103-raw-v1``); empty for none."""
    text_column: str = "text"
    """Column with the text; a column of int lists is taken as already tokenized."""
    context_size: int = 128
    """Tokens per sequence fed to the model, BOS included."""
    prepend_bos: bool = True
    """Start every sequence with BOS, as TransformerLens does by default."""
    skip_bos_activations: bool = False
    """Do not store the activation at the BOS position (an outlier that SAEs should not spend latents on)."""
    total_tokens: int = 1 << 20
    """Activation rows to store per hook (fewer if the dataset runs out first)."""
    tokens_per_shard: int = 1 << 16
    """Activation rows per shard file (the last shard may hold fewer)."""
    batch_size: int = simple_parsing.field(default=32, alias="--batch_sequences")
    """Sequences per forward pass; part of the config because batching can change low-order bits."""
    storage_dtype: str = "float32"
    """float32/fp32, float16/fp16 or bfloat16/bf16."""
    model_dtype: str = "float32"
    """Dtype the model runs in (part of the config: it changes the activations)."""
    device: str = "cpu"
    """Device the model runs on; shards are always written from CPU tensors."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        self.storage_dtype = str(storage_dtype(self.storage_dtype)).removeprefix("torch.")  # fp16 -> float16
        model_dtype(self.model_dtype)
        check_device(self.device)
        check_path_text(self.output_dir, "output_dir")
        for name in ("context_size", "total_tokens", "tokens_per_shard", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.hook_names or len(set(self.hook_names)) != len(self.hook_names):
            raise ValueError(f"hook_names must be non-empty and distinct, got {self.hook_names}")
        if self.skip_bos_activations and not self.prepend_bos:
            raise ValueError("skip_bos_activations needs prepend_bos=True")

    @property
    def stored_per_row(self) -> int:
        """Activation rows stored per sequence: shard and resume arithmetic count in these."""
        return self.context_size - int(self.skip_bos_activations)


@dataclass
class CaptureReport:
    """The finished cache's manifest and how fast this run produced its part of it."""

    manifest: Manifest
    new_tokens: int
    """Tokens captured by this run (0 when the cache was already complete)."""
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def validate_hook_names(model: HookedTransformer, hook_names: list[str]) -> None:
    """Raise a ValueError for unknown or non-per-token hooks, listing the closest valid names."""
    valid = list(model.hook_dict)
    for name in hook_names:
        if name not in model.hook_dict:
            close = difflib.get_close_matches(name, valid, n=5, cutoff=0.6) or valid[:5]
            raise ValueError(f"unknown hook name {name!r} for this model; close valid names: {close}")
        if name.endswith(NOT_PER_TOKEN):
            raise ValueError(f"hook {name!r} is per head-pair, not per token; capture e.g. hook_z instead")


def stop_layer(hook_names: list[str]) -> int | None:
    """The ``stop_at_layer`` that still runs every block the hooks live in (None: run all)."""
    needed = []
    for name in hook_names:
        if match := re.match(r"blocks\.(\d+)\.", name):
            needed.append(int(match.group(1)) + 1)
        elif name.startswith("hook_"):  # embeddings, before block 0
            needed.append(0)
        else:  # ln_final, unembed: after the last block
            return None
    return max(needed)  # n_layers still skips ln_final and the unembedding


@torch.inference_mode()
def capture_batch(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hook_names: list[str],
    stop_at_layer: int | None = None,
    skip_first_position: bool = False,
) -> dict[str, torch.Tensor]:
    """One forward pass; per hook a ``[batch * positions, d_in]`` tensor, trailing dims flattened."""
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=hook_names, stop_at_layer=stop_at_layer)
    out = {}
    for name in hook_names:
        acts = cache[name]
        if tuple(acts.shape[:2]) != tuple(tokens.shape):
            raise ValueError(f"hook {name!r} has shape {list(acts.shape)}, not [batch, pos, ...]; not per token")
        if skip_first_position:
            acts = acts[:, 1:]
        out[name] = acts.reshape(-1, acts[0, 0].numel())
    return out


def hook_widths(model: HookedTransformer, hook_names: list[str]) -> dict[str, int]:
    """d_in of each hook, from one two-token forward pass (trailing dims flattened, as the cache stores them)."""
    probe = torch.zeros((1, 2), dtype=torch.long)
    return {name: int(acts.shape[1]) for name, acts in capture_batch(model, probe, hook_names, stop_layer(hook_names)).items()}


def _batches(rows: Iterator[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    while chunk := list(itertools.islice(rows, batch_size)):
        yield torch.stack(chunk)


def _fresh_manifest(config: CaptureConfig, model: HookedTransformer) -> Manifest:
    probe = torch.full((1, 2), model.tokenizer.eos_token_id, dtype=torch.long)
    acts = capture_batch(model, probe, config.hook_names, stop_layer(config.hook_names))
    creation = {k: v for k, v in dataclasses.asdict(config).items() if k not in OUTPUT_ONLY_FIELDS}
    return Manifest(
        model_name=config.model_name,
        hook_names=list(config.hook_names),
        d_in={name: int(a.shape[1]) for name, a in acts.items()},
        dtype=config.storage_dtype,
        context_size=config.context_size,
        tokens_per_shard=config.tokens_per_shard,
        config=creation,
    )


def capture_activations(config: CaptureConfig, model: HookedTransformer | None = None) -> CaptureReport:
    """Capture (or resume capturing) ``config.total_tokens`` activations per hook into ``config.output_dir``.

    Pass ``model`` to reuse a loaded model; it must be the one ``config.model_name`` names. The
    output folder, the model, the hooks and the dataset's first row are checked before anything is
    written; the folder is locked while the capture runs, so a second capture into it is refused.
    """
    check_output_dir(config.output_dir, "output_dir")
    model = model or load_model(config.model_name, device=config.device, dtype=config.model_dtype)
    validate_hook_names(model, config.hook_names)
    if model.tokenizer is None:
        raise ValueError(f"model {config.model_name!r} has no tokenizer; cannot tokenize the dataset")
    if config.context_size > model.cfg.n_ctx:
        raise ValueError(f"context_size {config.context_size} exceeds the model's n_ctx {model.cfg.n_ctx}")
    fresh = _fresh_manifest(config, model)
    with folder_lock(config.output_dir, "activation cache"):
        writer = CacheWriter.create_or_resume(Path(config.output_dir), fresh)
        start, resumed_from = time.perf_counter(), writer.manifest.total_tokens
        if not writer.manifest.complete:
            if resumed_from < config.total_tokens:
                check_dataset(config, model)
                _capture_missing(writer, config, model)
            if (done := writer.manifest.total_tokens) < config.total_tokens:
                warnings.warn(f"dataset ran out after {done} of {config.total_tokens} tokens", stacklevel=2)
            writer.finish()
    return CaptureReport(writer.manifest, writer.manifest.total_tokens - resumed_from, time.perf_counter() - start)


def _dataset_description(config: CaptureConfig) -> str:
    return f"dataset {config.dataset_path!r} (split {config.dataset_split!r}, column {config.text_column!r})"


def _token_rows(config: CaptureConfig, model: HookedTransformer) -> Iterator[torch.Tensor]:
    """The capture's token rows; dataset errors become one ValueError naming the dataset, split and column."""
    try:
        documents = load_text_dataset(config.dataset_path, config.dataset_split, config.dataset_config or None)
        yield from token_rows(documents, model.tokenizer, config.context_size, config.prepend_bos, config.text_column)
    except UnicodeDecodeError as err:
        raise ValueError(f"{_dataset_description(config)}: the text is not UTF-8 ({err})") from err
    except Exception as err:  # datasets raises many types for a bad path, split or config; all are input errors
        raise ValueError(f"{_dataset_description(config)}: cannot be read ({type(err).__name__}: {err})") from err


def check_dataset(config: CaptureConfig, model: HookedTransformer) -> None:
    """Read the first token row: a bad dataset, split, column or encoding, or too little text, fails here."""
    if next(_token_rows(config, model), None) is None:
        raise ValueError(
            f"{_dataset_description(config)}: holds no text for even one row of "
            f"context_size={config.context_size} tokens"
        )


def _capture_missing(writer: CacheWriter, config: CaptureConfig, model: HookedTransformer) -> None:
    """Append shards from the first token the cache lacks, recomputing from the batch that holds it."""
    done = writer.manifest.total_tokens
    first_batch, discard = divmod(done, config.batch_size * config.stored_per_row)
    rows = itertools.islice(_token_rows(config, model), first_batch * config.batch_size, None)
    layer, dtype = stop_layer(config.hook_names), storage_dtype(config.storage_dtype)
    pending: dict[str, list[torch.Tensor]] = {name: [] for name in config.hook_names}
    buffered = 0
    with progress_bar(total=config.total_tokens, initial=done, unit="tok", desc="capture", enabled=config.progress) as bar:
        for tokens in _batches(rows, config.batch_size):
            acts = capture_batch(model, tokens, config.hook_names, layer, config.skip_bos_activations)
            keep = slice(discard, discard + config.total_tokens - done - buffered)
            for name, a in acts.items():
                pending[name].append(a[keep].to("cpu", dtype))
            added = len(pending[config.hook_names[0]][-1])
            buffered, discard = buffered + added, 0
            bar.update(added)
            while buffered >= config.tokens_per_shard or (buffered and done + buffered == config.total_tokens):
                shard = {name: torch.cat(parts) for name, parts in pending.items()}
                cut = min(buffered, config.tokens_per_shard)
                writer.write_shard({name: t[:cut] for name, t in shard.items()})
                pending = {name: [t[cut:]] for name, t in shard.items()}
                done, buffered = done + cut, buffered - cut
            if done == config.total_tokens:
                return
    if buffered:  # the dataset ran out mid-shard
        writer.write_shard({name: torch.cat(parts) for name, parts in pending.items()})
