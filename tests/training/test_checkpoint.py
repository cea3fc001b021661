"""Checkpoints survive SIGKILL, corruption and a full disk; resume never loses or repeats a step."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _workload import config, trainer  # noqa: E402

from hybrid_sae_ext.training import checkpoint as checkpoint_module  # noqa: E402
from hybrid_sae_ext.training.checkpoint import (  # noqa: E402
    SAE_FILE,
    STATE_FILE,
    TENSORS_FILE,
    CheckpointError,
    CheckpointManager,
)

WORKER = Path(__file__).parent / "_crash_worker.py"
KILLS = 10


def _final_weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.sae.state_dict().items()}


def test_sigkill_at_ten_random_points_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    reference = trainer(config())
    total = reference.train().steps
    rng = random.Random(1234)
    for kill in range(KILLS):
        target = rng.randint(1, total - 1)
        worker = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert worker.stdout is not None
        for line in worker.stdout:
            if line.startswith("done") or (line.startswith("step") and int(line.split()[1]) >= target):
                break
        worker.send_signal(signal.SIGKILL)  # mid-step or mid-checkpoint, wherever it is now
        worker.wait()
        assert worker.returncode in (-signal.SIGKILL, 0), f"kill {kill}: worker exited with {worker.returncode}"
    finished = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], capture_output=True, text=True, check=True)
    assert finished.stdout.strip().endswith("done")

    resumed = trainer(config(tmp_path))
    assert resumed.resume()
    assert resumed.step == total and resumed.tokens_seen == total * resumed.cfg.batch_size
    assert resumed.source.state_dict() == reference.source.state_dict()  # no batch lost or read twice
    for name, weight in reference.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def _two_checkpoints(directory: Path) -> CheckpointManager:
    run = trainer(config(directory, keep_checkpoints=3))
    for _ in range(2):
        run.train_step()
        run.save_checkpoint()
    return CheckpointManager(directory, keep=3)


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bitflip":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0x01]) + data[101:])
    else:
        path.unlink()


@pytest.mark.parametrize("file", [SAE_FILE, TENSORS_FILE, STATE_FILE, "manifest.json"])
@pytest.mark.parametrize("how", ["truncate", "bitflip", "delete"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, file: str, how: str, caplog) -> None:
    manager = _two_checkpoints(tmp_path)
    newest, previous = manager.checkpoints()
    _corrupt(newest / file, how)
    corrupted = sorted((p.name, p.read_bytes()) for p in newest.iterdir())

    loaded = manager.load_latest()
    assert loaded is not None and loaded.step == 1 and loaded.path == previous
    assert str(newest) in caplog.text  # reported, naming the checkpoint
    assert sorted((p.name, p.read_bytes()) for p in newest.iterdir()) == corrupted  # never overwritten


def test_all_checkpoints_corrupt_is_an_error_naming_each(tmp_path: Path) -> None:
    manager = _two_checkpoints(tmp_path)
    for path in manager.checkpoints():
        _corrupt(path / SAE_FILE, "bitflip")
    with pytest.raises(CheckpointError, match="no usable checkpoint") as error:
        manager.load_latest()
    assert all(str(p / SAE_FILE) in str(error.value) for p in manager.checkpoints())


def test_disk_full_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = trainer(config(tmp_path))
    run.train_step()
    run.save_checkpoint()
    good = CheckpointManager(tmp_path).checkpoints()
    good_bytes = {p.name: p.read_bytes() for p in good[0].iterdir()}

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    run.train_step()
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-000000002.*No space left.*intact"):
        run.save_checkpoint()
    assert CheckpointManager(tmp_path).checkpoints() == good
    assert {p.name: p.read_bytes() for p in good[0].iterdir()} == good_bytes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert CheckpointManager(tmp_path).load_latest().step == 1


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB filesystem (tmpfs), mounted for this test; skipped where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the faked-ENOSPC test above still runs")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]
    mounted = subprocess.run(command, capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> None:
    """Fill the filesystem, then free ``leave_bytes``: too little for the next checkpoint's weights."""
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(disk / "filler", (disk / "filler").stat().st_size - leave_bytes)


def test_real_full_disk_keeps_the_previous_checkpoint_and_no_temporary(small_disk: Path) -> None:
    ckpt = small_disk / "ckpt"
    run = trainer(config(ckpt))
    run.train_step()
    run.save_checkpoint()
    good = CheckpointManager(ckpt).checkpoints()
    good_bytes = {p.name: p.read_bytes() for p in good[0].iterdir()}
    _fill(small_disk, leave_bytes=4096)
    run.train_step()
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-000000002: .*No space left on device"
                       r".*previous checkpoint .*step-000000001 is intact"):  # fmt: skip
        run.save_checkpoint()  # safetensors raises SafetensorError here, not OSError
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-000000001"]  # no .tmp-step-* left behind
    assert {p.name: p.read_bytes() for p in good[0].iterdir()} == good_bytes
    assert CheckpointManager(ckpt).load_latest().step == 1


def test_checkpoint_files_get_the_usual_permissions(tmp_path: Path) -> None:
    run = trainer(config(tmp_path))
    run.train_step()
    run.save_checkpoint()
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in CheckpointManager(tmp_path).checkpoints()[0].iterdir()}
    assert modes == dict.fromkeys([SAE_FILE, TENSORS_FILE, STATE_FILE, "manifest.json"], 0o666 & ~mask)


def test_checkpoint_for_another_shape_is_a_clear_error(tmp_path: Path) -> None:
    run = trainer(config(tmp_path))
    run.train_step()
    run.save_checkpoint()
    wider = trainer(config(tmp_path, d_sae=128))
    with pytest.raises(CheckpointError, match=r"does not fit this SAE.*W_enc: checkpoint \(16, 64\) vs model \(16, 128\)"):
        wider.resume()
