"""Export a cache hook as the Hugging Face dataset SAELens' ``CacheActivationsRunner`` writes.

Why: SAELens trains from cached activations through ``LanguageModelSAERunnerConfig(
use_cached_activations=True, cached_activations_path=...)``, which loads a dataset saved with
``save_to_disk`` holding one ``Array2D(shape=(context_size, d_in))`` column named after the hook,
one row per sequence. Writing that layout from our shards lets a cache captured here feed an
unmodified SAELens run, without capturing again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from datasets import Array2D, Dataset, Features

from hybrid_sae_ext.activations.cache import ActivationCache, open_cache


def positions_per_sequence(cache: ActivationCache) -> int:
    """Stored activation rows per model sequence (one fewer when BOS activations were skipped)."""
    return cache.manifest.context_size - int(cache.manifest.config.get("skip_bos_activations", False))


def _sequences(cache: ActivationCache, hook_name: str, length: int, dtype: torch.dtype) -> Iterator[dict]:
    carry = torch.empty(0, cache.manifest.d_in[hook_name], dtype=dtype)
    for index in range(cache.num_shards):
        rows = torch.cat([carry, cache.load_shard(index, hook_name).to(dtype)])
        whole = len(rows) // length * length
        for sequence in rows[:whole].reshape(-1, length, rows.shape[1]):
            yield {hook_name: sequence.numpy()}
        carry = rows[whole:]


def export_saelens_dataset(
    cache_dir: Path | str, output_dir: Path | str, hook_name: str, dtype: str = "float32"
) -> Dataset:
    """Write ``hook_name`` of the cache at ``cache_dir`` to ``output_dir`` in SAELens' cached layout.

    Trailing rows that do not fill a whole sequence are left out, as SAELens only reads whole ones.
    Point SAELens at it with ``cached_activations_path=output_dir``, and with ``context_size`` equal
    to ``positions_per_sequence`` of the cache.
    """
    if dtype not in {"float32", "float16"}:
        raise ValueError(f"SAELens caches are float32 or float16 (Arrow has no bfloat16), not {dtype!r}")
    cache = open_cache(cache_dir, hook_name=hook_name)
    length = positions_per_sequence(cache)
    features = Features({hook_name: Array2D(shape=(length, cache.manifest.d_in[hook_name]), dtype=dtype)})
    with tempfile.TemporaryDirectory() as scratch:  # keeps the build out of the shared HF cache
        dataset = Dataset.from_generator(
            _sequences,
            features=features,
            gen_kwargs={"cache": cache, "hook_name": hook_name, "length": length, "dtype": getattr(torch, dtype)},
            cache_dir=scratch,
        )
        dataset.save_to_disk(str(output_dir))
    return Dataset.load_from_disk(str(output_dir))
