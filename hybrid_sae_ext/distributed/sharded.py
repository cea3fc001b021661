"""Latent-sharded HybridSAE: each rank holds a contiguous slice of the ``d_sae`` latents.

Why: a 131k-latent SAE on a 4096-wide model needs ``2 * 4096 * 131072`` weights plus Adam state,
more than one GPU should carry; data parallelism replicates all of it. Sharding the latents
splits weights, optimizer state and the encoder GEMM across ranks. The top-k is distributed:
each rank proposes its local top-k (the kernels' encode on its slice, in the SAE's ``selection_dtype``),
the candidates (scores and ids only, ``n x k`` per rank) are all-gathered, and every rank takes the
same global top-k. Each rank then decodes the winners it holds and all-reduces the partial sums.

The loss is not copied here: each step is ``HybridTrainingSAE.hybrid_forward`` itself, on a
``HybridTrainingSAE`` whose latent parameters are this rank's slice, with ``RankShare`` as its
``latents`` hook. So every gate rule, ``target_l0`` (its threshold included), the input check and
``process_sae_in`` are the unsharded SAE's, and the results equal it.

Choose it over data parallelism when the SAE's parameters and optimizer state do not fit one
device; choose data parallelism (the trainer's DDP mode) when they do, since it communicates
only gradients once per step.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

from hybrid_sae_ext.architectures.hybrid import HybridTrainingSAE, HybridTrainOutput
from hybrid_sae_ext.architectures.reduction import Encode, LatentReduction

_SHARDED_PARAMS = ("W_enc", "W_dec", "b_gate", "r_mag", "b_mag")
"""Per-latent parameters (``W_enc`` along dim 1); every other parameter and buffer is replicated."""
_REPLICATED_PARAMS = ("b_dec", "refine_rate")
"""Shared by every latent; ``refine_rate`` exists only where the SAE refines (``refine_steps``)."""


def shard_bounds(d_sae: int, rank: int, world_size: int) -> tuple[int, int]:
    """The ``[start, stop)`` latent range of ``rank``; ranks get equal slices."""
    if d_sae % world_size:
        raise ValueError(f"d_sae={d_sae} must be divisible by the world size {world_size}")
    size = d_sae // world_size
    return rank * size, (rank + 1) * size


def _all_gather_cat(t: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """Concatenate every rank's ``[n, j]`` tensor along dim 1 (no gradient: ids and scores)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class ShardSelection(NamedTuple):
    """The global top-k on one rank, in the order of the unsharded selection (ascending latent id)."""

    values: Tensor
    """Pre-activations of the winners this rank holds (differentiable); elsewhere a placeholder."""
    indices: Tensor
    """Their ids among this rank's latents; elsewhere a placeholder."""
    held: Tensor
    """Bool: this rank holds the winner (each winner is held by exactly one rank)."""
    latents: Tensor
    """Every winner's id in the whole SAE (the same on every rank)."""


class RankShare(LatentReduction):
    """``hybrid_forward``'s hook on one rank: global top-k from local proposals, masks, all-reduced sums."""

    def __init__(self, start: int, stop: int, device: torch.device, group: dist.ProcessGroup | None) -> None:
        self.start, self.stop, self.device, self.group = start, stop, device, group
        self.rank = dist.get_rank(group)

    def count(self, local: int) -> int:
        total = torch.tensor([local], dtype=torch.int64, device=self.device)
        dist.all_reduce(total, group=self.group)
        return int(total)

    def encode(
        self,
        encode: Encode,
        x: Tensor,
        W_enc: Tensor,
        selection_bias: Tensor,
        k: int,
        dead_mask: Tensor | None,
        k_aux: int,
        selection_dtype: str,
        subtracted_bias: Tensor | None,
    ) -> tuple[ShardSelection, ShardSelection | None]:
        width = self.stop - self.start
        local_dead = 0 if dead_mask is None else int(dead_mask.sum())
        main, aux = encode(
            x, W_enc, selection_bias, min(k, width), dead_mask, min(k_aux, local_dead), selection_dtype,
            subtracted_bias,
        )
        scores = main.values.detach() + selection_bias.detach()[main.indices]
        merged = self._merge(main.values, main.indices, scores, k)
        if k_aux == 0:
            return merged, None
        # Every rank proposes as many AuxK candidates; one with fewer dead latents pads with -inf scores
        # (the ranks together hold at least k_aux dead latents, so no pad wins).
        values = aux.values if aux is not None else x.new_zeros((x.shape[0], 0))
        indices = aux.indices if aux is not None else main.indices.new_zeros((x.shape[0], 0))
        pad = (0, min(k_aux, width) - values.shape[1])
        scores = F.pad(values.detach(), pad, value=float("-inf"))
        return merged, self._merge(F.pad(values, pad), F.pad(indices, pad), scores, k_aux)

    def _merge(self, values: Tensor, indices: Tensor, scores: Tensor, k: int) -> ShardSelection:
        """The global top-k of every rank's ``[n, width]`` candidates (``scores``), sorted by latent id."""
        width = values.shape[1]
        with torch.no_grad():
            every_score = _all_gather_cat(scores, self.group)
            every_latent = _all_gather_cat(indices + self.start, self.group)
            winners = every_score.topk(k, dim=-1, sorted=False).indices
            latents, order = every_latent.gather(1, winners).sort(dim=-1)
            slot = winners.gather(1, order) - self.rank * width
            held = (slot >= 0) & (slot < width)
            slot = torch.where(held, slot, torch.zeros_like(slot))
        return ShardSelection(values.gather(1, slot), indices.gather(1, slot), held, latents)

    def held(self, selection: ShardSelection, partial: Tensor) -> Tensor:  # type: ignore[override]
        return partial * selection.held

    def sum(self, partial: Tensor) -> Tensor:
        return dist_fn.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)

    def codes(self, selection: ShardSelection, values: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        with torch.no_grad():
            return self.sum(values.detach()), selection.latents


class ShardedHybridSAE(nn.Module):
    """This rank's share of a ``HybridTrainingSAE``: ``sae`` has the full config and this rank's slice of the
    latent parameters; ``b_dec`` and the gate threshold are replicated on every rank."""

    def __init__(self, full: HybridTrainingSAE, group: dist.ProcessGroup | None = None):
        super().__init__()
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.start, self.stop = shard_bounds(full.cfg.d_sae, self.rank, self.world_size)
        # Built on the meta device (no memory), then given this rank's slices.
        sae = type(full)(dataclasses.replace(full.cfg, device="meta"))
        sae.cfg, sae.device = full.cfg, full.device
        for name, param in full.named_parameters():
            if name not in (*_SHARDED_PARAMS, *_REPLICATED_PARAMS):
                raise NotImplementedError(f"ShardedHybridSAE does not know how to shard the parameter {name!r}")
            local = param.detach()
            if name == "W_enc":  # sliced along its latent-major storage; clone keeps that layout
                local = local.t()[self.start : self.stop].t()
            elif name in _SHARDED_PARAMS:
                local = local[self.start : self.stop]
            setattr(sae, name, nn.Parameter(local.clone()))
        for name, buffer in full.named_buffers():
            setattr(sae, name, buffer.detach().clone())
        self.sae = sae.train(full.training)
        self.share = RankShare(self.start, self.stop, full.device, group)

    def forward_train(
        self, x: Tensor, dead_mask: Tensor | None = None, l1_coefficient: float | None = None
    ) -> HybridTrainOutput:
        """``hybrid_forward`` on this rank's latents; every rank gets the same losses, ``sae_out`` and codes.

        ``dead_mask`` is this rank's slice. Backward through ``losses.total() / world_size`` on
        every rank, then ``all_reduce_replicated_grads`` gives the unsharded gradients.
        """
        return self.sae.hybrid_forward(x, dead_mask, l1_coefficient, latents=self.share)

    def all_reduce_replicated_grads(self) -> None:
        """Sum the per-rank shares of the replicated parameters' gradients."""
        for name in _REPLICATED_PARAMS:
            grad = getattr(getattr(self.sae, name, None), "grad", None)
            if grad is not None:
                dist.all_reduce(grad, group=self.group)

    @torch.no_grad()
    def gather_full_state(self) -> dict[str, Tensor]:
        """The unsharded state dict (on every rank), e.g. for saving from rank 0."""
        state = {}
        for name, tensor in self.sae.state_dict().items():
            if name in _SHARDED_PARAMS:
                parts = [torch.empty_like(tensor.contiguous()) for _ in range(self.world_size)]
                dist.all_gather(parts, tensor.contiguous(), group=self.group)
                tensor = torch.cat(parts, dim=1 if name == "W_enc" else 0)
            state[name] = tensor.clone()
        return state
