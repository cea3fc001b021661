"""Latent-sharded training over 2 gloo processes equals the unsharded HybridSAE and the float64 reference,
for every gate rule, ``target_l0`` (its threshold included) over several Adam steps."""

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parents[1] / "architectures"))
from hybrid_reference import leaf_params, param_names, reference_forward  # noqa: E402

from hybrid_sae_ext import HybridTrainingSAE, HybridTrainingSAEConfig  # noqa: E402
from hybrid_sae_ext.distributed import ShardedHybridSAE, shard_bounds  # noqa: E402

WORLD = 2
D_IN, D_SAE = 12, 64
F64 = dict(rtol=1e-9, atol=1e-10)
GATES: dict[str, dict[str, Any]] = {
    "fixed k": dict(gate_rule="token"),
    "token, target_l0": dict(target_l0=3.0, gate_rule="token"),
    "batch": dict(target_l0=3.0, gate_rule="batch"),
    "jump": dict(target_l0=3.0, gate_rule="jump", l0_coefficient=0.4, gate_bandwidth=0.6),
    "batch, refined": dict(target_l0=3.0, gate_rule="batch", refine_steps=2),
}


def _full_sae(**gate: Any) -> HybridTrainingSAE:
    torch.manual_seed(0)
    sae = HybridTrainingSAE(
        HybridTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, l1_coefficient=0.05, dtype="float64", k_aux=5, **gate)
    )
    with torch.no_grad():
        for p in (sae.b_gate, sae.b_mag, sae.r_mag, sae.b_dec):
            p.normal_(std=0.1)
        sae.b_gate.sub_(0.25)  # some top-k candidates keep their gate shut (pi_gate <= 0)
    return sae


def _batch(step: int) -> torch.Tensor:
    return torch.randn(40, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1 + step))


def _dead(fraction: float = 0.5) -> torch.Tensor:
    return torch.rand(D_SAE, generator=torch.Generator().manual_seed(2)) < fraction


def _run(worker: Any, tmp_path: Path) -> None:
    # spawned, not forked: a fork after earlier tests ran torch's OpenMP pool deadlocks the ranks' first matmul
    mp.start_processes(worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    assert all((tmp_path / f"ok{r}").exists() for r in range(WORLD))


def _matches_reference(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        x = _batch(0)
        start, stop = shard_bounds(D_SAE, rank, WORLD)
        # 3 dead latents < k_aux = 5 (AuxK scaled by 3/5), then about half of them dead (scale 1)
        for gate, dead in itertools.product(GATES.values(), (_dead(0.05), _dead())):
            assert dead.sum() == 3 or dead.sum() > 5
            full = _full_sae(**gate)
            params = leaf_params(full)
            cfg = full.cfg
            ref = reference_forward(
                params, x, k=cfg.k, l1_coefficient=cfg.l1_coefficient, gate_aux_coefficient=cfg.gate_aux_coefficient,
                aux_k_coefficient=cfg.aux_k_coefficient, k_aux=cfg.effective_k_aux, dead_mask=dead,
                gate_rule=cfg.gate_rule, target_l0=cfg.target_l0, l0_coefficient=cfg.l0_coefficient,
                bandwidth=cfg.gate_bandwidth,
            )
            ref.total().backward()
            shut = ref.candidates & (ref.pi_gate <= 0)
            assert shut.any() and (ref.candidates & ~shut).any(), "some gates open, some shut"

            sharded = ShardedHybridSAE(full)
            out = sharded.forward_train(x, dead_mask=dead[start:stop])
            (out.losses.total() / WORLD).backward()
            sharded.all_reduce_replicated_grads()

            for name, got in out.losses._asdict().items():
                torch.testing.assert_close(got, getattr(ref, name), **F64, msg=f"{gate}: {name}")
            torch.testing.assert_close(out.sae_out, ref.sae_out, **F64)
            codes = torch.zeros(x.shape[0], D_SAE, dtype=torch.float64).scatter(1, out.codes.indices, out.codes.values)
            torch.testing.assert_close(codes, ref.codes, **F64)
            for name in param_names(full):
                want = params[name].grad
                if name not in ("b_dec", "refine_rate"):  # replicated, the rest sliced by latent
                    want = want[:, start:stop] if name == "W_enc" else want[start:stop]
                torch.testing.assert_close(getattr(sharded.sae, name).grad, want, **F64, msg=f"{gate}: d/d {name}")
        Path(results, f"ok{rank}").touch()
    finally:
        dist.destroy_process_group()


def test_sharded_forward_and_gradients_match_the_reference(tmp_path: Path) -> None:
    """Every loss term, the reconstruction, the codes and every gradient, for each gate rule."""
    _run(_matches_reference, tmp_path)


def _trains_like_unsharded(rank: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        dead = _dead()
        start, stop = shard_bounds(D_SAE, rank, WORLD)
        for gate in GATES.values():
            full = _full_sae(**gate)
            sharded = ShardedHybridSAE(full)
            full_adam = torch.optim.Adam(full.parameters(), lr=1e-2)
            sharded_adam = torch.optim.Adam(sharded.parameters(), lr=1e-2)
            for step in range(4):
                x = _batch(step)
                want = full.hybrid_forward(x, dead_mask=dead)
                want.losses.total().backward()
                full_adam.step()
                full_adam.zero_grad()
                got = sharded.forward_train(x, dead_mask=dead[start:stop])
                (got.losses.total() / WORLD).backward()
                sharded.all_reduce_replicated_grads()
                sharded_adam.step()
                sharded_adam.zero_grad()

                torch.testing.assert_close(got.losses.total(), want.losses.total(), **F64)
                assert torch.equal(got.codes.indices, want.codes.indices)
                torch.testing.assert_close(got.codes.values, want.codes.values.detach(), **F64)
                if "gate_threshold" in dict(full.named_buffers()):
                    assert float(full.gate_threshold) != 0.0, "the threshold moved"
                    torch.testing.assert_close(sharded.sae.gate_threshold, full.gate_threshold, **F64)
            state = sharded.gather_full_state()
            assert set(state) == set(full.state_dict())
            for name, tensor in state.items():
                torch.testing.assert_close(tensor, full.state_dict()[name], **F64, msg=f"{gate}: {name}")
        Path(results, f"ok{rank}").touch()
    finally:
        dist.destroy_process_group()


def test_sharded_training_with_target_l0_equals_unsharded_training(tmp_path: Path) -> None:
    """Four Adam steps per gate rule: the same losses, codes, gate threshold and weights as one process."""
    _run(_trains_like_unsharded, tmp_path)


def test_uneven_shards_are_refused() -> None:
    with pytest.raises(ValueError, match="d_sae=10 must be divisible by the world size 3"):
        shard_bounds(10, 0, 3)


def test_the_sharded_step_checks_its_input(tmp_path: Path) -> None:
    """The sharded step runs the SAE's own input check (it used to skip it)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        sharded = ShardedHybridSAE(_full_sae(target_l0=3.0))
        with pytest.raises(ValueError, match=r"input has shape \(0, 12\): an empty batch"):
            sharded.forward_train(torch.zeros(0, D_IN, dtype=torch.float64))
        with pytest.raises(ValueError, match="input activations contain NaN or Inf"):
            sharded.forward_train(torch.full((4, D_IN), float("nan"), dtype=torch.float64))
        with pytest.raises(ValueError, match=f"input has last dimension 5 but this SAE has d_in={D_IN}"):
            sharded.forward_train(torch.zeros(4, 5, dtype=torch.float64))
    finally:
        dist.destroy_process_group()
