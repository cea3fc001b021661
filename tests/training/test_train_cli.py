"""``hybrid-sae train`` end to end: capture, train, save for SAELens, evaluate, wandb offline, kill and resume."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from safetensors.torch import load_file

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.activations import CacheWriter, Manifest
from hybrid_sae_ext.models import TINY_LM_NAME
from hybrid_sae_ext.training.cli import main
from tests.training.test_checkpoint import _fill, small_disk  # noqa: F401  (a fixture: a real 1 MiB tmpfs)

ROOT = Path(__file__).parents[2]
HOOK = "blocks.1.hook_resid_pre"
STEPS = 40
TRAIN_ARGS = [
    "--d_sae", "256", "-k", "8", "--batch_tokens", "1024", "--total_steps", str(STEPS), "--lr", "3e-3",
    "--lr_warmup_steps", "5", "--lr_decay_steps", "10", "--dead_after_tokens", "4096", "--seed", "3",
    "--progress_bar", "false",
]  # fmt: skip


def _env(tmp: Path) -> dict[str, str]:
    """One thread (faster on small shared CPUs, same float reduction order in every run); wandb kept in tmp."""
    wandb = {name: str(tmp / "wandb-home") for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")}
    return {**os.environ, **wandb, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp),
            "PYTHONPATH": str(ROOT)}  # this checkout's package, not another installed copy


COMMAND = [sys.executable, "-m", "hybrid_sae_ext", "train"]


def _cli(tmp: Path, *args: str) -> list[str]:
    return [*COMMAND, "--cache_dir", str(tmp.parent / "cache"), *TRAIN_ARGS, *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run that captures the cache (20k tokens), logs to wandb offline and evaluates."""
    tmp = tmp_path_factory.mktemp("cli") / "reference"
    tmp.mkdir()
    command = _cli(tmp, "--tokens", "20000", "--out", str(tmp / "out"), "--wandb_project", "cli-test",
                   "--eval_batches", "2")  # fmt: skip
    done = subprocess.run(command, env=_env(tmp), capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tokens/s" in done.stdout
    (tmp / "stdout.txt").write_text(done.stdout)
    return tmp


def test_cli_writes_a_saelens_sae_and_its_evaluation(reference: Path) -> None:
    out = reference / "out"
    assert {"cfg.json", "sae_weights.safetensors", "eval.json"} <= {p.name for p in out.iterdir()}
    sae = SAE.load_from_disk(str(out))
    assert isinstance(sae, HybridSAE)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (128, 256, HOOK)
    assert sae.cfg.metadata.model_name == TINY_LM_NAME and sae.cfg.metadata.context_size == 128
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["hook_name"] == HOOK and evaluation["n_sequences"] == 16
    assert evaluation["l0_mean"] <= 8 and math.isfinite(evaluation["ce_loss_recovered"])
    training = evaluation["training"]
    assert training["steps"] == STEPS and training["tokens_this_run"] == STEPS * 1024 and training["seconds_this_run"] > 0
    assert training["tokens_per_second"] == pytest.approx(training["tokens_this_run"] / training["seconds_this_run"])


def test_run_ends_with_one_line_of_the_headline_metrics(reference: Path) -> None:
    """The last line: CE recovered, KL, FVU, EV, L0 and dead latents, as eval.json has them; no TransformerLens
    'Moving model to device' chatter before it."""
    stdout = (reference / "stdout.txt").read_text()
    evaluation = json.loads((reference / "out" / "eval.json").read_text())
    pattern = (r"ce_loss_recovered=(\S+), kl_div=(\S+), fvu=(\S+), explained_variance=(\S+), l0_mean=(\S+), "
               r"dead=(\d+)/(\d+) \((\S+)%\)")
    match = re.fullmatch(pattern, stdout.splitlines()[-1])
    assert match, stdout.splitlines()[-1]
    names = ("ce_loss_recovered", "kl_div_with_sae", "fvu", "explained_variance", "l0_mean")
    for name, text in zip(names, match.groups()):  # L0 printed to 2 decimals, the others to 4
        assert float(text) == pytest.approx(evaluation[name], abs=5e-3 if name == "l0_mean" else 1e-4), name
    assert (int(match[6]), int(match[7])) == (evaluation["n_dead"], evaluation["d_sae"])
    assert "Moving model to device" not in stdout and "Changing model dtype" not in stdout


def test_wandb_offline_writes_a_run_folder(reference: Path) -> None:
    runs = list((reference / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def _wait_for_checkpoint(directory: Path, process: subprocess.Popen, step: int, timeout_s: float = 120) -> str:
    """The newest checkpoint's name, as soon as one of ``step`` or later is on disk."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        found = sorted(p.name for p in directory.glob("step-*"))
        if found and found[-1] >= f"step-{step:09d}":
            return found[-1]
        time.sleep(0.005)
    raise AssertionError(f"the CLI wrote no checkpoint of step {step} in time")


def test_killed_run_resumes_to_the_uninterrupted_weights(reference: Path, capsys: pytest.CaptureFixture) -> None:
    tmp = reference.parent / "killed"
    tmp.mkdir()
    args = ("--out", str(tmp / "out"), "--checkpoint_dir", str(tmp / "ckpt"), "--checkpoint_every", "1",
            "--eval_batches", "0")  # fmt: skip
    process = subprocess.Popen(
        _cli(tmp, *args), env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        newest = _wait_for_checkpoint(tmp / "ckpt", process, step=3)
    finally:
        process.send_signal(signal.SIGKILL)  # mid-step or mid-checkpoint, wherever it is now
        process.communicate()
    assert newest < f"step-{STEPS:09d}" and not (tmp / "out" / "cfg.json").exists(), "the run finished before the kill"

    with pytest.raises(SystemExit):  # the killed run's locks were released by its death
        main(_cli(tmp, *args)[len(COMMAND):])  # a fresh run would prune its own new checkpoints first
    assert re.search(r"already holds checkpoints .*pass --resume to continue", capsys.readouterr().err)

    resumed = subprocess.run(
        _cli(tmp, *args, "--resume"), env=_env(tmp), capture_output=True, text=True, timeout=240, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    want = load_file(str(reference / "out" / "sae_weights.safetensors"))
    got = load_file(str(tmp / "out" / "sae_weights.safetensors"))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def _foreign_cache(directory: Path) -> Path:
    """A finished cache that claims the default model and hook but holds 5-wide activations."""
    manifest = Manifest(
        model_name=TINY_LM_NAME, hook_names=[HOOK], d_in={HOOK: 5}, dtype="float32",
        context_size=128, tokens_per_shard=64, config={},
    )  # fmt: skip
    writer = CacheWriter.create_or_resume(directory, manifest)
    writer.write_shard({HOOK: torch.zeros(64, 5)})
    writer.finish()
    return directory


@pytest.mark.parametrize(
    ("args", "foreign_cache", "message"),
    [
        (["--hook_name", "blocks.1.hook_resid_pree"], False, r"unknown hook name 'blocks.1.hook_resid_pree'"),
        ([], True, rf"hook '{HOOK}' has d_in 5, expected 128"),
        (["--d_sae", "16", "-k", "32"], False, r"k must satisfy 1 <= k <= d_sae=16, got k=32"),
        (["--batch_size", "512", "--grad_accum_steps", "3"], False, r"grad_accum_steps=3 must divide batch_size=512"),
    ],
)
def test_bad_input_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], foreign_cache: bool, message: str
) -> None:
    cache = _foreign_cache(tmp_path / "cache") if foreign_cache else tmp_path / "cache"
    argv = ["--cache_dir", str(cache), "--out", str(tmp_path / "out"), "--tokens", "1000", "--progress_bar", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and re.search(message, err), err
    assert not (tmp_path / "out").exists()
    assert cache.exists() == foreign_cache  # nothing was captured


def _quick(reference: Path, tmp: Path, *args: str) -> list[str]:
    """In-process arguments for a 2-step run on the reference's cache (a second or so)."""
    return [*_cli(tmp, "--total_steps", "2", "--lr_decay_steps", "0", "--eval_batches", "0", *args)[len(COMMAND):]]


def test_overwrite_replaces_every_file_of_the_old_sae(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors", "eval.json", "splice_eval.json"):
        (out / name).write_bytes((reference / "out" / name).read_bytes() if name != "splice_eval.json" else b"{}")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit):
        main(_quick(reference, tmp_path, "--out", str(out)))
    assert "pass --overwrite" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused: nothing touched

    main(_quick(reference, tmp_path, "--out", str(out), "--overwrite", "--d_sae", "128"))
    files = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert files == {"cfg.json", "sae_weights.safetensors"}  # the old run's evaluations are gone, not mixed in
    assert SAE.load_from_disk(str(out)).cfg.d_sae == 128
    for name in files:  # the usual permissions (0666 less the umask), not mkstemp's/safetensors' 0600
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_with_changed_settings_is_refused_unless_allowed(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = ["--checkpoint_dir", str(tmp_path / "ckpt"), "--checkpoint_every", "1"]
    main(_quick(reference, tmp_path, "--out", str(tmp_path / "a"), *ckpt))
    capsys.readouterr()
    changed = ["-k", "4", "--lr", "1e-3", "--resume", "--out", str(tmp_path / "b"), *ckpt]
    with pytest.raises(SystemExit):
        main(_quick(reference, tmp_path, *changed))
    err = capsys.readouterr().err
    assert re.search(r"ckpt: this run's config differs from the checkpoint's \(k: 8 -> 4; lr: 0\.003 -> 0\.001\)"
                     r".*--allow_config_change", err), err  # fmt: skip
    assert not (tmp_path / "b").exists()

    main(_quick(reference, tmp_path, *changed, "--total_steps", "3", "--allow_config_change"))
    stdout = capsys.readouterr().out
    assert "settings changed since the checkpoint: k: 8 -> 4; lr: 0.003 -> 0.001; total_steps: 2 -> 3" in stdout
    assert "resumed from" in stdout and (tmp_path / "b" / "cfg.json").exists()


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def test_second_training_on_a_busy_checkpoint_dir_is_refused(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--checkpoint_dir", str(tmp_path / "ckpt"), "--checkpoint_every", "1", "--eval_batches", "0"]
    first_args = ["--out", str(tmp_path / "first"), *args, "--total_steps", "5", "--lr_decay_steps", "0"]
    first = subprocess.Popen(_cli(tmp_path, *first_args), env=_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (_holder(tmp_path / "ckpt" / ".lock") or {}).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        with pytest.raises(SystemExit):
            main(_quick(reference, tmp_path, "--out", str(tmp_path / "second"), *args, "--resume"))
        err = capsys.readouterr().err
        holder = rf"checkpoint folder '.*ckpt' is in use by pid {first.pid} on .*\(hybrid-sae train --cache_dir"
        assert re.search(holder, err), err
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-3000:]
    assert not (tmp_path / "second").exists()
    assert max(p.name for p in (tmp_path / "ckpt").glob("step-*")) == f"step-{5:09d}"
    assert SAE.load_from_disk(str(tmp_path / "first")).cfg.d_sae == 256


def test_a_killed_final_save_is_cleared_and_resume_saves_again(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The state a kill between the final save's renames leaves (cfg.json alone in --out, the weights still
    in the ``.sae-*`` staging folder) is not an SAE: ``--resume`` removes it and saves the SAE whole."""
    out, ckpt = tmp_path / "out", ["--checkpoint_dir", str(tmp_path / "ckpt")]
    main(_quick(reference, tmp_path, "--out", str(out), *ckpt))
    weights = load_file(out / "sae_weights.safetensors")
    staging = out / ".sae-killed"
    staging.mkdir()
    (out / "sae_weights.safetensors").rename(staging / "sae_weights.safetensors")
    capsys.readouterr()
    main(_quick(reference, tmp_path, "--out", str(out), *ckpt, "--resume"))
    assert "removed what an interrupted save left" in capsys.readouterr().out
    assert not list(out.glob(".sae-*"))
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {"cfg.json", "sae_weights.safetensors"}
    for name, tensor in load_file(out / "sae_weights.safetensors").items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)


def test_a_full_disk_at_the_final_save_names_out_and_keeps_the_weights(
    reference: Path, tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture
) -> None:
    """A real 1 MiB tmpfs as --out: the error names --out and where the trained weights are (the checkpoint,
    or without --checkpoint_dir a folder in the system temp folder); nothing half-written stays in --out."""
    out = small_disk / "out"
    _fill(small_disk, leave_bytes=40_000)  # the SAE's weights are ~260 kB
    with pytest.raises(SystemExit) as exit_info:
        main(_quick(reference, tmp_path, "--out", str(out), "--checkpoint_dir", str(tmp_path / "ckpt")))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert re.search(rf"could not save the SAE to --out='{out}' \(.*\); the trained weights are in checkpoint "
                     rf"{tmp_path / 'ckpt'}/step-000000002; free space and rerun with --resume", err), err
    assert not list(out.glob(".sae-*")) and not (out / "cfg.json").exists()
    with pytest.raises(SystemExit):
        main(_quick(reference, tmp_path, "--out", str(out)))
    kept = re.search(r"the trained SAE was saved to (\S+) instead", capsys.readouterr().err)
    assert kept is not None
    try:
        assert SAE.load_from_disk(kept.group(1)).cfg.d_sae == 256
    finally:
        shutil.rmtree(kept.group(1))


@pytest.fixture
def read_only_cache(reference: Path, tmp_path: Path):
    """The reference's finished cache behind a read-only bind mount (root ignores file modes, not ro mounts)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    mount = tmp_path / "ro-cache"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(reference.parent / "cache"), str(mount)], check=False).returncode:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=False).returncode:
            pytest.skip("cannot remount read-only here")
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_finished_cache_on_read_only_storage_trains(
    reference: Path, tmp_path: Path, read_only_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(OSError):
        (read_only_cache / "probe").write_text("x")
    args = _quick(reference, tmp_path, "--out", str(tmp_path / "out"))
    assert args[0] == "--cache_dir"
    args[1] = str(read_only_cache)
    main(args)
    assert f"using the finished cache {read_only_cache}" in capsys.readouterr().out
    assert SAE.load_from_disk(str(tmp_path / "out")).cfg.d_sae == 256
