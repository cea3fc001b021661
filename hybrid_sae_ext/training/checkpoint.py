"""Checkpoints that survive any crash: atomic directories, checksummed, verified before use.

Layout: ``<dir>/step-000000120/`` holding ``sae.safetensors``, ``trainer.safetensors`` (optimizer
moments, RNG states, dead-latent counters), ``trainer_state.json`` (counters, data position,
config) and ``manifest.json`` (sha256 of each file). A checkpoint is built in a hidden temporary
directory and renamed into place only when complete, so a kill at any point leaves either the old
set of checkpoints or the old set plus one complete new one. Loading uses safetensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from hybrid_sae_ext.io import fsync_dir, set_default_mode, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

SAE_FILE, TENSORS_FILE, STATE_FILE, MANIFEST_FILE = (
    "sae.safetensors", "trainer.safetensors", "trainer_state.json", "manifest.json",
)
T = TypeVar("T")
_STEP_DIR = re.compile(r"^step-(\d{9})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no usable checkpoint could be read."""


@dataclass
class Checkpoint:
    """Everything needed to continue a run exactly."""

    step: int
    sae_state: dict[str, Tensor]
    tensors: dict[str, Tensor]
    """Optimizer moments (``optimizer/<param>/<key>``), RNG states (``rng/...``), dead-latent counters."""
    state: dict[str, Any]
    """JSON-able: counters, optimizer hyper-parameters, data position, python/numpy RNG, config."""
    path: Path | None = None


def step_dir_name(step: int) -> str:
    return f"step-{step:09d}"


class CheckpointManager:
    """Writes, lists, verifies and prunes the checkpoints of one run directory."""

    def __init__(self, directory: Path | str, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got keep={keep}")
        self.directory = Path(directory)
        self.keep = keep

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint directories, newest first (temporary ones are never listed)."""
        if not self.directory.exists():
            return []
        found = [p for p in self.directory.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write atomically; on any error (disk full, permissions) the earlier checkpoints stay intact."""
        final = self.directory / step_dir_name(checkpoint.step)
        tmp = self.directory / f".tmp-{final.name}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in checkpoint.sae_state.items()}, str(tmp / SAE_FILE))
            save_file({k: v.detach().contiguous().cpu() for k, v in checkpoint.tensors.items()}, str(tmp / TENSORS_FILE))
            (tmp / STATE_FILE).write_text(json.dumps(checkpoint.state, indent=1, sort_keys=True))
            for name in (SAE_FILE, TENSORS_FILE):
                set_default_mode(tmp / name)  # safetensors creates 0600
            files = {name: sha256_file(tmp / name) for name in (SAE_FILE, TENSORS_FILE, STATE_FILE)}
            write_json_atomic(tmp / MANIFEST_FILE, {"step": checkpoint.step, "sha256": files})
            fsync_dir(tmp)
            if final.exists():  # a re-run of the same step after a crash: replace only when complete
                shutil.rmtree(final)
            tmp.rename(final)
            fsync_dir(self.directory)
        except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self.checkpoints()
            raise CheckpointError(
                f"could not write checkpoint {final}: {err}; "
                f"previous checkpoint {previous[0] if previous else '(none)'} is intact"
            ) from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        return final

    def _prune(self) -> None:
        for old in self.checkpoints()[self.keep :]:
            shutil.rmtree(old, ignore_errors=True)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies; corrupt ones are reported and skipped, never deleted.

        Returns None when there are no checkpoints; raises ``CheckpointError`` when there are some
        but none verifies (starting over silently would lose the run).
        """
        return self._newest_good(load_checkpoint)

    def latest_state(self) -> dict[str, Any] | None:
        """``trainer_state.json`` (counters, data position, config) of the checkpoint ``load_latest`` would load."""
        return self._newest_good(read_checkpoint_state)

    def _newest_good(self, read: Callable[[Path], T]) -> T | None:
        problems: list[str] = []
        for path in self.checkpoints():
            try:
                return read(path)
            except CheckpointError as err:
                logger.warning("skipping checkpoint: %s", err)
                problems.append(str(err))
        if problems:
            raise CheckpointError("no usable checkpoint in " + str(self.directory) + ":\n  " + "\n  ".join(problems))
        return None


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's manifest after checking every file's checksum; CheckpointError names the bad file."""
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        expected: dict[str, str] = manifest["sha256"]
        int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({type(err).__name__}: {err})") from err
    for name in (SAE_FILE, TENSORS_FILE, STATE_FILE):
        file = path / name
        if name not in expected:
            raise CheckpointError(f"{manifest_path}: no checksum for {name}")
        if not file.exists():
            raise CheckpointError(f"{file}: missing")
        if sha256_file(file) != expected[name]:
            raise CheckpointError(f"{file}: checksum mismatch (truncated or corrupted)")
    return manifest


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    """The verified checkpoint's ``trainer_state.json``, without loading its tensors."""
    verify_checkpoint(path)
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({type(err).__name__}: {err})") from err


def load_checkpoint(path: Path) -> Checkpoint:
    """Verify the manifest's checksums, then read with safetensors and JSON; errors name the file."""
    manifest = verify_checkpoint(path)
    try:
        return Checkpoint(
            step=int(manifest["step"]),
            sae_state=load_file(str(path / SAE_FILE)),
            tensors=load_file(str(path / TENSORS_FILE)),
            state=json.loads((path / STATE_FILE).read_text()),
            path=path,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise CheckpointError(f"{path}: unreadable ({type(err).__name__}: {err})") from err


RUN_NEUTRAL_FIELDS = frozenset({
    "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "log_every", "wandb_project", "progress_bar",
    "device", "skip_nonfinite_batches",
})  # fmt: skip
"""TrainConfig fields that may change on resume without changing what the run computes."""


def config_state(cfg: Any) -> dict[str, Any]:
    """A dataclass config as the JSON checkpoints store (non-scalar values as strings)."""
    scalar = (int, float, bool, type(None))
    return {k: v if isinstance(v, scalar) else str(v) for k, v in dataclasses.asdict(cfg).items()}


def check_resume_config(saved: dict[str, Any], current: Any, allow_changes: bool, source: Path | str) -> list[str]:
    """Compare the checkpoint's saved config with this run's; returns one ``name: old -> new`` per change.

    Changes to fields outside ``RUN_NEUTRAL_FIELDS`` (k, lr, architecture, schedule, ...) would make the
    resumed run a different run, so they raise ``CheckpointError`` unless ``allow_changes``. A field
    the checkpoint does not record is compared with its default.
    """
    now = config_state(current)
    defaults = config_state(type(current)())
    changes, blocking = [], []
    for name in sorted(now):
        old = saved.get(name, defaults.get(name))
        if old != now[name]:
            changes.append(f"{name}: {old!r} -> {now[name]!r}")
            if name not in RUN_NEUTRAL_FIELDS:
                blocking.append(changes[-1])
    if blocking and not allow_changes:
        raise CheckpointError(
            f"{source}: this run's config differs from the checkpoint's ({'; '.join(blocking)}); resume with the "
            "same settings, or pass --allow_config_change to continue with the new ones"
        )
    return changes


def check_state_matches(state: dict[str, Tensor], expected: dict[str, Tensor], source: Path | str) -> None:
    """A clear error when a checkpoint's tensors do not fit the model being resumed."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not fit this SAE: missing {missing}, unexpected {unexpected}, shape mismatches {shapes}"
        )


def optimizer_to_checkpoint(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Optimizer moments as flat tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer/{param}/{key}": value if isinstance(value, Tensor) else torch.tensor(value)
        for param, entries in state["state"].items()
        for key, value in entries.items()
    }
    return tensors, state["param_groups"]


def optimizer_from_checkpoint(tensors: dict[str, Tensor], param_groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, param, key = name.split("/", 2)
            state.setdefault(int(param), {})[key] = value
    return {"state": state, "param_groups": param_groups}
