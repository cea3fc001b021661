"""Stream shuffled float32 batches of one hook from an activation cache, resumably.

Why: SAE training wants i.i.d.-looking batches, while a cache is written in corpus order, so
neighbouring tokens (same document, same position) sit together. The reader mixes ``shuffle_shards``
shards at a time: each epoch visits the shards in a seeded order, consecutive groups ("windows") of
that order are concatenated and permuted with a generator seeded by (seed, epoch, window start).
Because a window's permutation depends only on those numbers, the position ``(epoch, shard,
offset)`` = "``offset`` tokens into the window that starts at ``shard`` in epoch ``epoch``" pins the
stream exactly, so a training run restarted from a checkpointed position sees the same batches it
would have seen. Data-parallel ranks take disjoint shards (``order[rank::world_size]``), so each
rank reads only its own files. A background thread loads and permutes ahead of the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hybrid_sae_ext.activations.cache import ActivationCache, open_cache


@dataclass(frozen=True)
class ReaderPosition:
    """Where the next token comes from; checkpoint it with the SAE to resume training."""

    epoch: int = 0
    shard: int = 0
    """Index, in this rank's shard order for ``epoch``, of the first shard of the current window."""
    offset: int = 0
    """Tokens of that window already yielded."""


@dataclass
class ReaderConfig:
    """Which hook to read and how to batch, shuffle and split it."""

    hook_name: str
    """The one hook whose activations are yielded."""
    batch_size: int = 4096
    """Tokens per yielded batch."""
    shuffle: bool = True
    """Shuffle shard order and tokens within each window; off, tokens come in capture order."""
    seed: int = 0
    """Seeds shard order and window permutations; equal seeds give equal streams."""
    shuffle_shards: int = 4
    """Shards mixed together (the shuffle buffer, in shards; memory is this many shards of one hook)."""
    epochs: int | None = 1
    """Passes over the cache; None streams forever."""
    drop_last: bool = False
    """Drop the final batch when it is smaller than ``batch_size``."""
    rank: int = 0
    """This process's index among ``world_size`` data-parallel readers."""
    world_size: int = 1
    """Data-parallel split by shard: ranks' token counts differ by at most one window's worth per epoch."""
    prefetch_batches: int = 4
    """Batches the background thread prepares ahead of the consumer."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        for name in ("batch_size", "shuffle_shards", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


_END = object()


class ActivationReader:
    """Iterate over ``[batch_size, d_in]`` float32 batches; ``position`` is where the next batch starts.

    Use as a context manager (or call ``close``) to stop the prefetch thread early.
    """

    def __init__(
        self,
        cache: ActivationCache | Path | str,
        config: ReaderConfig,
        start: ReaderPosition | None = None,
    ) -> None:
        self.cache = cache if isinstance(cache, ActivationCache) else open_cache(cache, hook_name=config.hook_name)
        if config.hook_name not in self.cache.manifest.hook_names:
            raise ValueError(f"no hook {config.hook_name!r} in cache {self.cache.directory}")
        if self.cache.num_shards < config.world_size:
            raise ValueError(f"{self.cache.num_shards} shards cannot feed {config.world_size} ranks; capture smaller shards")
        self.config = config
        self.position = start or ReaderPosition()
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=config.prefetch_batches)
        self._thread: threading.Thread | None = None

    @property
    def d_in(self) -> int:
        return self.cache.manifest.d_in[self.config.hook_name]

    def shard_order(self, epoch: int) -> list[int]:
        """This rank's shard indices for ``epoch``, in reading order."""
        n = self.cache.num_shards
        order = np.random.default_rng([self.config.seed, epoch]).permutation(n) if self.config.shuffle else range(n)
        return [int(i) for i in order][self.config.rank :: self.config.world_size]

    def _window(self, epoch: int, shard: int) -> torch.Tensor:
        """The tokens of the window starting at ``shard`` in this rank's order, permuted if shuffling."""
        indices = self.shard_order(epoch)[shard : shard + self.config.shuffle_shards]
        tensors = [self.cache.load_shard(i, self.config.hook_name).to(torch.float32) for i in indices]
        window = torch.cat(tensors) if tensors else torch.empty(0, self.d_in)
        if self.config.shuffle:
            permutation = np.random.default_rng([self.config.seed, epoch, shard]).permutation(len(window))
            window = window[torch.from_numpy(permutation)]
        return window

    def _produce(self) -> Iterator[tuple[torch.Tensor, ReaderPosition]]:
        """Batches with the position just after each, walking windows and epochs."""
        epoch, shard, offset = self.position.epoch, self.position.shard, self.position.offset
        parts: list[torch.Tensor] = []
        wanted = self.config.batch_size
        while self.config.epochs is None or epoch < self.config.epochs:
            n_shards = len(self.shard_order(epoch))
            if shard >= n_shards:
                epoch, shard, offset = epoch + 1, 0, 0
                continue
            window = self._window(epoch, shard)
            while offset < len(window):
                take = window[offset : offset + wanted]
                parts.append(take)
                offset, wanted = offset + len(take), wanted - len(take)
                if wanted == 0:  # a position at a window's end is valid: resuming there moves on
                    yield torch.cat(parts), ReaderPosition(epoch, shard, offset)
                    parts, wanted = [], self.config.batch_size
            shard, offset = shard + self.config.shuffle_shards, 0
        if parts and not self.config.drop_last:
            yield torch.cat(parts), ReaderPosition(epoch, 0, 0)

    def _run(self) -> None:
        try:
            for item in self._produce():
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(_END)
        except BaseException as err:  # handed to the consumer, which re-raises it
            self._queue.put(err)

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._thread is not None:
            raise RuntimeError("an ActivationReader can be iterated once; make a new one at reader.position")
        self._thread = threading.Thread(target=self._run, name="activation-prefetch", daemon=True)
        self._thread.start()
        try:
            while (item := self._queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                batch, self.position = item
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            while self._thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    self._thread.join(timeout=0.1)

    def __enter__(self) -> ActivationReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
