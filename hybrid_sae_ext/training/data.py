"""Activation sources the trainer can resume exactly: each reports and restores its position."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor


def unit_energy_scale(activations: Float[Tensor, "rows d_in"]) -> float:
    """The factor that makes ``E|x|^2 = d_in``, so L1 coefficients and learning rates mean the same on any model."""
    return float((activations.shape[1] / activations.pow(2).sum(-1).mean()).sqrt())


class ActivationSource(Protocol):
    """Yields global batches of activations; ``state_dict`` is enough to continue the same stream."""

    d_in: int

    def next_batch(self, n: int) -> Float[Tensor, "n d_in"]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorActivationSource:
    """An in-memory activation tensor read in a fresh seeded permutation each epoch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so (epoch, offset) is a
    complete position: a resumed run reads exactly the rows an uninterrupted run would.
    """

    def __init__(self, activations: Float[Tensor, "rows d_in"], seed: int = 0) -> None:
        if activations.ndim != 2 or activations.shape[0] == 0:
            raise ValueError(f"activations must be a non-empty [rows, d_in] tensor, got shape {tuple(activations.shape)}")
        self.activations = activations
        self.d_in = activations.shape[1]
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.activations.shape[0], generator=generator)

    def next_batch(self, n: int) -> Tensor:
        parts: list[Tensor] = []
        while n > 0:
            take = min(n, len(self._order) - self.offset)
            parts.append(self.activations[self._order[self.offset : self.offset + take]])
            self.offset += take
            n -= take
            if self.offset == len(self._order):
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "rows": self.activations.shape[0]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["seed"], state["rows"]) != (self.seed, self.activations.shape[0]):
            raise ValueError(
                f"checkpoint data position is for seed={state['seed']}, rows={state['rows']}; "
                f"this source has seed={self.seed}, rows={self.activations.shape[0]}"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._permutation(self.epoch)
