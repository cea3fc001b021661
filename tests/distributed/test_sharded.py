"""Latent-sharded training over 2 gloo processes equals the unsharded HybridSAE."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid_sae_ext import HybridTrainingSAE, HybridTrainingSAEConfig
from hybrid_sae_ext.distributed import ShardedHybridSAE, shard_bounds

WORLD = 2


def _full_sae() -> HybridTrainingSAE:
    torch.manual_seed(0)
    sae = HybridTrainingSAE(
        HybridTrainingSAEConfig(d_in=12, d_sae=64, k=6, l1_coefficient=0.05, dtype="float64", k_aux=5)
    )
    with torch.no_grad():
        for p in (sae.b_gate, sae.b_mag, sae.r_mag, sae.b_dec):
            p.normal_(std=0.1)
    return sae


def _worker(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        full = _full_sae()
        x = torch.randn(40, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        dead = torch.rand(64, generator=torch.Generator().manual_seed(2)) < 0.5
        ref = full.hybrid_forward(x, dead_mask=dead)
        ref.losses.total().backward()

        sharded = ShardedHybridSAE(full)
        start, stop = shard_bounds(64, rank, WORLD)
        out = sharded.forward_train(x, dead_mask=dead[start:stop])
        (out.losses.total() / WORLD).backward()
        sharded.all_reduce_replicated_grads()

        for a, b in zip(out.losses, ref.losses):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(out.sae_out, ref.sae_out)
        assert torch.equal(out.codes.indices, ref.codes.indices)
        torch.testing.assert_close(out.codes.values, ref.codes.values)
        torch.testing.assert_close(sharded.W_enc.grad, full.W_enc.grad[:, start:stop])
        for name in ("W_dec", "b_gate", "r_mag", "b_mag"):
            torch.testing.assert_close(getattr(sharded, name).grad, getattr(full, name).grad[start:stop])
        torch.testing.assert_close(sharded.b_dec.grad, full.b_dec.grad)
        state = sharded.gather_full_state()
        for name, tensor in state.items():
            assert torch.equal(tensor, getattr(full, name).detach())
        Path(results, f"ok{rank}").touch()
    finally:
        dist.destroy_process_group()


def test_sharded_forward_and_gradients_equal_unsharded(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=WORLD, join=True)
    assert all((tmp_path / f"ok{r}").exists() for r in range(WORLD))


def test_uneven_shards_are_refused() -> None:
    with pytest.raises(ValueError, match="d_sae=10 must be divisible by the world size 3"):
        shard_bounds(10, 0, 3)


@pytest.mark.parametrize("fields", [dict(target_l0=3.0), dict(target_l0=3.0, gate_rule="batch"), dict(refine_steps=1)])
def test_a_hybrid_with_a_gate_threshold_is_refused_not_trained_as_fixed_k(tmp_path: Path, fields: dict) -> None:
    """The sharded forward has no gate threshold: it used to train a ``target_l0`` SAE as fixed k, silently."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        full = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=32, k=6, **fields))
        with pytest.raises(NotImplementedError, match="sharded training supports the fixed-k hybrid only"):
            ShardedHybridSAE(full)
    finally:
        dist.destroy_process_group()
