"""Data-parallel training over 2 gloo ranks equals one process on the global batch; checkpoints move between world sizes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybrid_sae_ext.training.config import TrainConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "training"))
from _workload import config as workload_config  # noqa: E402
from _workload import trainer  # noqa: E402

WORLD = 2


def config(*args: Any, **overrides: Any) -> TrainConfig:
    """The workload on the hybrid's token gate: the default batch gate allocates within each rank's share of the
    batch (as BatchTopK under DDP does), so only a per-token gate makes 2 ranks equal one process exactly."""
    return workload_config(*args, sae_overrides={"gate_rule": "token"}, **overrides)


def _weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.sae.state_dict().items()}


def _worker(rank: int, init_file: str, checkpoint_dir: str, stop_at: int, resume: bool, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        run = trainer(config(Path(checkpoint_dir), total_steps=20, checkpoint_every=5, grad_accum_steps=2))
        assert run.parallel.world_size == WORLD
        if resume:
            assert run.resume()
        run.train(stop_at_step=stop_at)
        if rank == 0:
            torch.save(_weights(run), out)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, name: str, stop_at: int, resume: bool) -> dict[str, torch.Tensor]:
    out = tmp_path / f"{name}.pt"
    init = tmp_path / f"{name}.init"
    mp.spawn(_worker, args=(str(init), str(tmp_path / "ckpt" / name), stop_at, resume, str(out)), nprocs=WORLD)
    return torch.load(out, weights_only=True)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_two_ranks_equal_one_process_and_checkpoints_cross_world_sizes(tmp_path: Path) -> None:
    single = trainer(config(total_steps=20)).train()
    reference = {k: v.detach().clone() for k, v in single.sae.state_dict().items()}

    _assert_same(_spawn(tmp_path, "ddp", stop_at=20, resume=False), reference)

    # 2 ranks -> 1 rank: the 2-rank run stops at step 10, one process finishes it.
    _spawn(tmp_path, "two-then-one", stop_at=10, resume=False)
    one = trainer(config(tmp_path / "ckpt" / "two-then-one", total_steps=20))
    assert one.resume() and one.step == 10
    one.train()
    _assert_same(_weights(one), reference)

    # 1 rank -> 2 ranks
    first = trainer(config(tmp_path / "ckpt" / "one-then-two", total_steps=20, checkpoint_every=5))
    first.train(stop_at_step=10)
    _assert_same(_spawn(tmp_path, "one-then-two", stop_at=20, resume=True), reference)
