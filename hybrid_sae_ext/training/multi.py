"""Many SAEs from one activation stream: the model (or the cache) is read once per batch.

Why: sweeps over widths and k, comparisons of architectures, and one SAE per layer all consume
the same activations. Running the model once per batch and handing the batch to every SAE costs
one forward pass instead of one per SAE.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from hybrid_sae_ext.activations.capture import capture_batch, hook_widths, stop_layer, validate_hook_names
from hybrid_sae_ext.progress import progress_bar
from hybrid_sae_ext.training.data import ActivationSource
from hybrid_sae_ext.training.trainer import StepMetrics, Trainer


class MultiHookSource(Protocol):
    """Yields, per call, the same tokens' activations at several hooks."""

    def next_batches(self, n: int) -> dict[str, Tensor]: ...


class SingleHookSource:
    """Adapts one ``ActivationSource`` to ``MultiHookSource`` under the name ``hook``."""

    def __init__(self, source: ActivationSource, hook: str = "activations") -> None:
        self.source, self.hook = source, hook

    def next_batches(self, n: int) -> dict[str, Tensor]:
        return {self.hook: self.source.next_batch(n)}

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


class ModelActivationSource:
    """Runs the model once per batch (``ceil(n / tokens per row)`` sequences) for all hooks at once.

    BOS positions are skipped; the forward stops after the last hook's block. ``forward_passes``
    counts model calls, so callers can check that N SAEs did not cost N forwards.
    """

    def __init__(self, model: HookedTransformer, hook_names: list[str], token_rows: Tensor, skip_bos: bool = True):
        validate_hook_names(model, hook_names)
        if token_rows.ndim != 2 or token_rows.shape[1] < 2:
            raise ValueError(f"token_rows must be [rows, context >= 2], got shape {tuple(token_rows.shape)}")
        self.model, self.hook_names, self.token_rows = model, hook_names, token_rows
        self.first = int(skip_bos)
        self.per_row = token_rows.shape[1] - self.first
        self.next_row = 0
        self.forward_passes = 0
        self.d_in = hook_widths(model, hook_names)

    @torch.no_grad()
    def next_batches(self, n: int) -> dict[str, Tensor]:
        rows = -(-n // self.per_row)
        index = torch.arange(self.next_row, self.next_row + rows) % self.token_rows.shape[0]
        self.next_row = int(index[-1]) + 1
        acts = capture_batch(self.model, self.token_rows[index], self.hook_names, stop_layer(self.hook_names),
                             skip_first_position=bool(self.first))
        self.forward_passes += 1
        return {name: rows[:n] for name, rows in acts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"next_row": self.next_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_row = int(state["next_row"])


class BroadcastSource:
    """The batch the multi-trainer handed out for this step; the stream position lives upstream."""

    def __init__(self, d_in: int, upstream: Any) -> None:
        self.d_in = d_in
        self.upstream = upstream
        self.batch: Tensor | None = None

    def next_batch(self, n: int) -> Tensor:
        if self.batch is None or self.batch.shape[0] != n:
            raise RuntimeError(f"BroadcastSource expected a batch of {n} rows set by MultiTrainer")
        batch, self.batch = self.batch, None
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.upstream.state_dict() if hasattr(self.upstream, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and hasattr(self.upstream, "load_state_dict"):
            self.upstream.load_state_dict(state)


@dataclass
class MultiTrainResult:
    """Per-SAE training curves and the seconds each spent in its own steps."""

    history: dict[str, list[StepMetrics]] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)
    data_seconds: float = 0.0
    """Time spent producing batches (model forward or cache reads), shared by all SAEs."""
    steps: int = 0


class MultiTrainer:
    """Steps several ``Trainer``s on one stream; each trainer reads the hook named in ``hooks``."""

    def __init__(self, trainers: Mapping[str, Trainer], upstream: MultiHookSource, hooks: Mapping[str, str]) -> None:
        sizes = {t.cfg.batch_size for t in trainers.values()}
        if len(sizes) != 1:
            raise ValueError(f"all SAEs in one pass need the same batch_size, got {sorted(sizes)}")
        missing = sorted(set(trainers) - set(hooks))
        if missing:
            raise ValueError(f"no hook given for SAEs {missing}")
        for name, trainer in trainers.items():
            if not isinstance(trainer.source, BroadcastSource):
                raise ValueError(f"trainer {name!r} must read from a BroadcastSource")
        self.trainers, self.upstream, self.hooks = dict(trainers), upstream, dict(hooks)
        self.batch_size = sizes.pop()

    def train(self, total_steps: int, progress: bool = True) -> MultiTrainResult:
        result = MultiTrainResult(history={name: [] for name in self.trainers},
                                  train_seconds=dict.fromkeys(self.trainers, 0.0))
        for _ in progress_bar(range(total_steps), desc=f"{len(self.trainers)} SAEs", enabled=progress):
            start = time.perf_counter()
            batches = self.upstream.next_batches(self.batch_size)
            result.data_seconds += time.perf_counter() - start
            for name, trainer in self.trainers.items():
                trainer.source.batch = batches[self.hooks[name]]  # type: ignore[attr-defined]
                start = time.perf_counter()
                metrics = trainer.train_step()
                result.train_seconds[name] += time.perf_counter() - start
                if metrics is not None:
                    result.history[name].append(metrics)
            result.steps += 1
        return result
