"""Latent-sharded HybridSAE: each rank holds a contiguous slice of the ``d_sae`` latents.

Why: a 131k-latent SAE on a 4096-wide model needs ``2 * 4096 * 131072`` weights plus Adam state,
more than one GPU should carry; data parallelism replicates all of it. Sharding the latents
splits weights, optimizer state and the encoder GEMM across ranks. The top-k is distributed:
each rank proposes its local top-k, the candidates (scores and ids only, ``n x k`` per rank) are
all-gathered, and every rank takes the same global top-k. Each rank then decodes the winners it
owns and one all-reduce sums the partial reconstructions. Results equal the unsharded SAE.

Choose it over data parallelism when the SAE's parameters and optimizer state do not fit one
device; choose data parallelism (the trainer's DDP mode) when they do, since it communicates
only gradients once per step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from jaxtyping import Float, Int
from torch import Tensor, nn

from hybrid_sae_ext.architectures.hybrid import HybridLosses, HybridTrainingSAE, SparseCodes
from hybrid_sae_ext.kernels.primitives import gathered_dot
from hybrid_sae_ext.kernels.row_norms import inverse_row_norms
from hybrid_sae_ext.kernels.sparse_ops import gather_sum

_SHARDED_PARAMS = ("W_enc", "W_dec", "b_gate", "r_mag", "b_mag")


class ShardedForward(NamedTuple):
    """One sharded training forward; identical on every rank except ``partial`` tensors."""

    losses: HybridLosses
    sae_out: Float[Tensor, "n d_in"]
    codes: SparseCodes


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


class ShardedHybridSAE(nn.Module):
    """This rank's slice of a ``HybridTrainingSAE``; ``b_dec`` is replicated on every rank."""

    def __init__(self, full: HybridTrainingSAE, group: dist.ProcessGroup | None = None):
        super().__init__()
        if full.cfg.target_l0 is not None or full.cfg.refine_steps:  # every gate rule but "token" needs target_l0
            # Its forward has no gate threshold and no refinement: such an SAE would silently train as plain fixed k.
            raise NotImplementedError(
                f"sharded training supports the fixed-k hybrid only (gate_rule='token', target_l0=None, "
                f"refine_steps=0); got gate_rule={full.cfg.gate_rule!r}, target_l0={full.cfg.target_l0}, "
                f"refine_steps={full.cfg.refine_steps}: train it unsharded"
            )
        self.cfg = full.cfg
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.start, self.stop = shard_bounds(full.cfg.d_sae, self.rank, self.world_size)
        for name in _SHARDED_PARAMS:
            full_param = getattr(full, name)
            local = full_param[:, self.start : self.stop] if name == "W_enc" else full_param[self.start : self.stop]
            setattr(self, name, nn.Parameter(local.detach().clone()))
        self.b_dec = nn.Parameter(full.b_dec.detach().clone())

    def _decoder_rows(self) -> Tensor:
        return self.W_dec * inverse_row_norms(self.W_dec)[:, None]  # as HybridTrainingSAE.decoder_rows

    def _global_topk(self, local_scores: Tensor, k: int) -> Int[Tensor, "n k"]:
        """Global top-k latent ids from every rank's local top-k candidates, sorted per row."""
        with torch.no_grad():
            # k <= d_sae, so the ranks together always propose at least k candidates
            top = local_scores.topk(min(k, self.stop - self.start), dim=-1, sorted=False)
            scores = _all_gather_cat(top.values, self.group)
            ids = _all_gather_cat(top.indices + self.start, self.group)
            winners = scores.topk(k, dim=-1, sorted=False).indices
            return ids.gather(1, winners).sort(dim=-1).values

    def _owned(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Local ids of the winners this rank owns (0 elsewhere) and the ownership mask."""
        mine = (ids >= self.start) & (ids < self.stop)
        return torch.where(mine, ids - self.start, torch.zeros_like(ids)), mine

    def _reduce(self, partial: Tensor) -> Tensor:
        """Sum partial results over ranks, differentiably."""
        return dist_fn.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)

    def forward_train(self, x: Float[Tensor, "n d_in"], dead_mask: Tensor | None = None) -> ShardedForward:
        """The hybrid training forward (same terms as ``HybridTrainingSAE.hybrid_forward``).

        ``dead_mask`` is this rank's slice. Backward through ``losses.total() / world_size`` on
        every rank, then ``all_reduce_replicated_grads`` gives the unsharded gradients.
        """
        x = x.to(self.W_enc.dtype)
        sae_in = x - self.b_dec
        pre = sae_in @ self.W_enc
        ids = self._global_topk((pre + self.b_gate).detach(), self.cfg.k)
        local, mine = self._owned(ids)
        pre_sel = pre.gather(1, local)
        gate_pre = pre_sel + self.b_gate[local]
        magnitude = torch.relu(self.r_mag[local].exp() * pre_sel + self.b_mag[local])
        values = magnitude * (gate_pre > 0) * mine
        rows = self._decoder_rows()
        sae_out = self._reduce(gather_sum(values, local, rows)) + self.b_dec
        mse = (sae_out - x).pow(2).sum(-1).mean()

        gate_act = torch.relu(gate_pre) * mine
        via_gate = self._reduce(gather_sum(gate_act, local, rows.detach())) + self.b_dec.detach()
        gate_aux = self.cfg.gate_aux_coefficient * (via_gate - x).pow(2).sum(-1).mean()
        l1 = self.cfg.l1_coefficient * self._reduce(gate_act.sum(-1)).mean()

        aux_k = mse.new_zeros(())
        n_dead = 0
        if dead_mask is not None:
            n_dead_t = dead_mask.sum().reshape(1).to(torch.int64)
            dist.all_reduce(n_dead_t, group=self.group)
            n_dead = int(n_dead_t)
        k_aux = min(self.cfg.effective_k_aux, n_dead)
        if k_aux > 0:
            masked = pre.detach().masked_fill(~dead_mask, float("-inf"))  # type: ignore[operator]
            aux_ids = self._global_topk(masked, k_aux)
            aux_local, aux_mine = self._owned(aux_ids)
            aux_pre = pre.gather(1, aux_local)
            aux_recon = self._reduce(gather_sum(aux_pre * aux_mine, aux_local, rows))
            residual = (x - sae_out).detach()
            scale = min(n_dead / self.cfg.effective_k_aux, 1.0)
            aux_k = self.cfg.aux_k_coefficient * scale * (aux_recon - residual).pow(2).sum(-1).mean()
            # The dead latents' gate term of hybrid_forward: it reaches only b_gate.
            dead_gate = aux_pre.detach() + self.b_gate[aux_local]
            along_row = gathered_dot(residual, rows.detach().t(), aux_local)
            dead_gate_loss = self._reduce(((dead_gate - along_row).pow(2) * aux_mine).sum(-1)).mean()
            gate_aux = gate_aux + self.cfg.gate_aux_coefficient * dead_gate_loss

        with torch.no_grad():
            code_values = self._reduce(values.detach())
        losses = HybridLosses(mse=mse, gate_aux=gate_aux, l1=l1, aux_k=aux_k, l0=mse.new_zeros(()))
        return ShardedForward(losses, sae_out, SparseCodes(code_values, ids))

    def all_reduce_replicated_grads(self) -> None:
        """Sum the per-rank shares of the replicated ``b_dec`` gradient."""
        if self.b_dec.grad is not None:
            dist.all_reduce(self.b_dec.grad, group=self.group)

    @torch.no_grad()
    def gather_full_state(self) -> dict[str, Tensor]:
        """The unsharded state dict (on every rank), e.g. for saving from rank 0."""
        state = {"b_dec": self.b_dec.detach().clone()}
        for name in _SHARDED_PARAMS:
            local = getattr(self, name).detach().contiguous()
            parts = [torch.empty_like(local) for _ in range(self.world_size)]
            dist.all_gather(parts, local, group=self.group)
            state[name] = torch.cat(parts, dim=1 if name == "W_enc" else 0)
        return state
