"""An ``ActivationSource`` over an on-disk activation cache, resumable to the exact row.

Why: training from a captured cache is far cheaper than re-running the model, and a crashed run
must continue on the same stream. ``ActivationReader`` already pins its stream with
``(seed, shuffle_shards, ReaderPosition)``; this source reads it forever (epochs wrap), and adds to
that position the identity of the cache (a hash of the manifest's shard checksums), so a
checkpoint is never resumed on other activations that merely have the same shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

from torch import Tensor

from hybrid_sae_ext.activations import ActivationCache, ActivationReader, ReaderConfig, ReaderPosition, open_cache


def cache_identity(cache: ActivationCache) -> str:
    """sha256 over the manifest's shard list (file, tokens, checksum): equal only for equal content."""
    shards = [[shard.file, shard.tokens, shard.sha256] for shard in cache.manifest.shards]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


class CacheActivationSource:
    """Shuffled global batches of one hook of a cache, in an endless seeded stream.

    ``next_batch(n)`` returns exactly ``n`` rows (crossing window and epoch edges as needed);
    ``state_dict()`` is the position of the next unread row, so ``load_state_dict`` on a fresh
    source continues the stream an uninterrupted run would have read. Call ``close`` (or use it
    as a context manager) to stop the reader's prefetch thread.
    """

    def __init__(
        self,
        cache_dir: Path | str,
        hook_name: str,
        *,
        seed: int = 0,
        d_in: int | None = None,
        model_name: str | None = None,
        shuffle_shards: int = 4,
    ) -> None:
        self.cache = open_cache(cache_dir, hook_name=hook_name, d_in=d_in, model_name=model_name)
        if self.cache.manifest.total_tokens == 0:
            raise ValueError(f"{self.cache.directory}: the activation cache holds no tokens")
        self.hook_name = hook_name
        self.d_in = self.cache.manifest.d_in[hook_name]
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.identity = cache_identity(self.cache)
        self.position = ReaderPosition()
        self._reader: ActivationReader | None = None
        self._batches: Generator[Tensor, None, None] | None = None

    def next_batch(self, n: int) -> Tensor:
        """The next ``n`` rows as float32 ``[n, d_in]``."""
        if self._reader is None or self._reader.config.batch_size != n:
            self._open_reader(n)
        assert self._reader is not None and self._batches is not None
        batch = next(self._batches)
        self.position = self._reader.position
        return batch

    def _open_reader(self, batch_size: int) -> None:
        """(Re)start the reader at ``self.position``; positions are row-exact, so any batch size continues."""
        self.close()
        config = ReaderConfig(
            hook_name=self.hook_name, batch_size=batch_size, shuffle=True, seed=self.seed,
            shuffle_shards=self.shuffle_shards, epochs=None,
        )  # fmt: skip
        self._reader = ActivationReader(self.cache, config, start=self.position)
        self._batches = iter(self._reader)

    def state_dict(self) -> dict[str, Any]:
        return {
            "cache": str(self.cache.directory),
            "cache_sha256": self.identity,
            "hook_name": self.hook_name,
            "seed": self.seed,
            "shuffle_shards": self.shuffle_shards,
            "position": [self.position.epoch, self.position.shard, self.position.offset],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpointed stream; refuse a checkpoint made on another cache or hook."""
        if state.get("cache_sha256") != self.identity:
            raise ValueError(
                f"the checkpoint's data position is for the activation cache {state.get('cache')} "
                f"(shards sha256 {str(state.get('cache_sha256'))[:12]}...), but this run reads {self.cache.directory} "
                f"(shards sha256 {self.identity[:12]}...), which holds different activations; resume with the "
                "original cache or start a new checkpoint_dir"
            )
        if state["hook_name"] != self.hook_name:
            raise ValueError(
                f"the checkpoint's data position is for hook {state['hook_name']!r} of {state['cache']}, "
                f"but this run reads hook {self.hook_name!r}"
            )
        self.close()
        self.seed, self.shuffle_shards = int(state["seed"]), int(state["shuffle_shards"])
        self.position = ReaderPosition(*(int(p) for p in state["position"]))

    def close(self) -> None:
        """Stop the prefetch thread; the next ``next_batch`` restarts reading at ``position``."""
        if self._batches is not None:
            self._batches.close()  # runs the reader's own cleanup if it was started
        if self._reader is not None:
            self._reader.close()
        self._reader = self._batches = None

    def __enter__(self) -> CacheActivationSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
