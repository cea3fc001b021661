"""A capture killed with SIGKILL resumes into exactly the cache an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybrid_sae_ext.activations import capture_activations, open_cache, read_manifest
from hybrid_sae_ext.folders import FolderLockedError

ROOT = Path(__file__).parents[2]
# Runs the CLI with a pause after every shard, so the kill lands mid-run however fast the machine is.
SLOW_CLI = """
import runpy, sys, time
from hybrid_sae_ext.activations.cache import CacheWriter
write = CacheWriter.write_shard
CacheWriter.write_shard = lambda self, tensors: (write(self, tensors), time.sleep(120))[0]
sys.argv = ["hybrid-sae", *sys.argv[1:]]
runpy.run_module("hybrid_sae_ext", run_name="__main__")
"""


ENV = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}  # this checkout's package


def _argv(config) -> list[str]:
    return [
        "--out", config.output_dir, "--model", config.model_name,
        "--hook_names", *config.hook_names, "--context_size", str(config.context_size),
        "--total_tokens", str(config.total_tokens), "--tokens_per_shard", str(config.tokens_per_shard),
        "--batch_sequences", str(config.batch_size), "--progress", "false", "--measure_read", "false",
    ]  # fmt: skip


def _wait_for_listed_shard(manifest: Path, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        if manifest.exists() and json.loads(manifest.read_text())["shards"]:
            return
        time.sleep(0.05)
    raise AssertionError("the capture wrote no shard in time")


def test_sigkilled_capture_resumes_to_the_uninterrupted_cache(model, small_config, tmp_path) -> None:
    reference = small_config(tmp_path / "reference")
    capture_activations(reference, model)

    killed = small_config(tmp_path / "killed")
    command = [sys.executable, "-c", SLOW_CLI, "capture", *_argv(killed)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try:
        _wait_for_listed_shard(tmp_path / "killed" / "manifest.json", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    partial = read_manifest(tmp_path / "killed")
    assert not partial.complete and 0 < len(partial.shards) < 4

    report = capture_activations(killed, model)
    assert report.new_tokens == 700 - partial.total_tokens
    resumed_text = (tmp_path / "killed" / "manifest.json").read_text()
    assert resumed_text == (tmp_path / "reference" / "manifest.json").read_text()
    assert open_cache(tmp_path / "killed").manifest.complete  # checksums re-verified against the files
    assert capture_activations(killed, model).new_tokens == 0  # a finished cache is left alone


def test_killed_after_the_last_shard_only_finishes_the_manifest(model, small_config, tmp_path) -> None:
    config = small_config(tmp_path, total_tokens=400)
    capture_activations(config, model)
    finished = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(finished.replace('"complete": true', '"complete": false'))
    assert capture_activations(config, model).new_tokens == 0
    assert (tmp_path / "manifest.json").read_text() == finished


def test_second_capture_into_a_busy_folder_is_refused_and_a_dead_holder_does_not_block(
    model, small_config, tmp_path
) -> None:
    config = small_config(tmp_path / "cache")
    first = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "capture", *_argv(config)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)  # fmt: skip
    try:
        _wait_for_listed_shard(tmp_path / "cache" / "manifest.json", first)  # it now sleeps, holding the lock
        before = {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()}
        with pytest.raises(FolderLockedError, match=rf"activation cache '.*cache' is in use by pid {first.pid} on "
                           r".* since .*\(hybrid-sae capture --out "):  # fmt: skip
            capture_activations(config, model)
        assert {p.name: p.read_bytes() for p in (tmp_path / "cache").iterdir()} == before  # the first is intact
        assert open_cache(tmp_path / "cache", allow_incomplete=True).num_shards >= 1
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock; the kernel releases it
        first.wait()
    assert json.loads((tmp_path / "cache" / ".lock").read_text())["pid"] == first.pid  # the stale record is still there
    assert capture_activations(config, model).manifest.complete
    assert open_cache(tmp_path / "cache").manifest.total_tokens == 700
