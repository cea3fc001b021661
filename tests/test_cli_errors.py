"""Every ``hybrid-sae`` verb turns bad input into one line ``error: ...`` (exit 2) before long work, writing nothing.

Each case is a row of the bad-input table in docs/reliability.md. The verbs run in-process through the dispatcher
(fast); one case runs as a subprocess to show the real exit status and that stderr holds just that one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hybrid_sae_ext import HybridSAE, cli
from hybrid_sae_ext.activations import CacheWriter, Manifest
from hybrid_sae_ext.cli_errors import TRACEBACK_ENV
from hybrid_sae_ext.models import TINY_LM_NAME

ROOT = Path(__file__).parents[1]
HOOK = "blocks.1.hook_resid_pre"


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _fails_with_one_line(verb: str, argv: list[str], pattern: str, root: Path, capsys: pytest.CaptureFixture) -> None:
    before = _snapshot(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    assert _snapshot(root) == before  # nothing written, not even an empty folder


# ----- inputs the cases need -------------------------------------------------------------------------
def _saved_sae(folder: Path) -> Path:
    torch.manual_seed(0)
    sae = HybridSAE(d_model=128, n_features=64, k_sparse=4)
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    sae.cfg.metadata.model_name = TINY_LM_NAME
    sae.save_model(folder)
    return folder


def _edit_sae(sae: Path, kind: str) -> None:
    """Break a saved SAE the way ``kind`` says: its cfg.json, its weights, or its metadata."""
    cfg = json.loads((sae / "cfg.json").read_text())
    weights = load_file(sae / "sae_weights.safetensors")
    if kind == "sae_broken_cfg":
        (sae / "cfg.json").write_text('{"architecture": "hybrid", "d_in": 12')
    elif kind == "sae_truncated":
        (sae / "sae_weights.safetensors").write_bytes((sae / "sae_weights.safetensors").read_bytes()[:-100])
    elif kind in ("sae_os_system", "sae_says_topk", "sae_d_in_64", "sae_context_negative"):
        change = {"sae_os_system": {"architecture": "os.system"}, "sae_says_topk": {"architecture": "topk"},
                  "sae_d_in_64": {"d_in": 64},
                  "sae_context_negative": {"metadata": {**cfg["metadata"], "context_size": -5}}}[kind]
        (sae / "cfg.json").write_text(json.dumps({**cfg, **change}))
    elif kind == "sae_without_b_gate":
        save_file({k: v for k, v in weights.items() if k != "b_gate"}, sae / "sae_weights.safetensors")
    elif kind == "sae_nan":
        weights["W_dec"][3, 5] = float("nan")
        save_file(weights, sae / "sae_weights.safetensors")


def _cache(folder: Path, **manifest_changes: object) -> Path:
    """A finished one-shard cache of the default model and hook, its manifest then edited."""
    manifest = Manifest(model_name=TINY_LM_NAME, hook_names=[HOOK], d_in={HOOK: 128}, dtype="float32",
                        context_size=128, tokens_per_shard=64, config={})  # fmt: skip
    writer = CacheWriter.create_or_resume(folder, manifest)
    writer.write_shard({HOOK: torch.zeros(64, 128)})
    writer.finish()
    payload = json.loads((folder / "manifest.json").read_text())
    for key, value in manifest_changes.items():
        if key == "shard_file":
            payload["shards"][0]["file"] = value
        else:
            payload[key] = value
    (folder / "manifest.json").write_text(json.dumps(payload))
    return folder


def _prepare(kind: str, tmp: Path) -> dict[str, str]:
    """Create what a case needs under ``tmp/in``; returns names to format into its arguments."""
    inputs = tmp / "in"
    inputs.mkdir()
    names = {"in": str(inputs), "out": str(tmp / "out"), "file": str(inputs / "a-file")}
    (inputs / "a-file").write_text("not a folder")
    if kind == "random_corpus":
        (inputs / "corpus.txt").write_bytes(bytes(range(128, 256)) * 40)
    elif kind == "empty_corpus":
        (inputs / "corpus.txt").write_text("")
    elif kind.startswith("sae"):
        _edit_sae(_saved_sae(inputs / "sae"), kind)
    elif kind == "existing_sae":
        _saved_sae(tmp / "out")
    elif kind.startswith("cache_"):
        changes: dict[str, object] = {
            "cache_d_in_string": {"d_in": {HOOK: "128"}},
            "cache_hook_names_null": {"hook_names": None},
            "cache_traversal": {"shard_file": "../other-cache/shard_00000.safetensors"},
            "cache_etc_passwd": {"shard_file": "/etc/passwd"},
            "cache_dev_zero": {"shard_file": "/dev/zero"},
        }[kind]
        _cache(inputs / "cache", **changes)
    return names


TRAIN = ["--d_sae", "64", "-k", "4", "--batch_tokens", "64", "--total_steps", "2", "--progress_bar", "false",
         "--tokens", "1000", "--eval_batches", "0"]  # fmt: skip
CAPTURE = ["--progress", "false", "--total_tokens", "500", "--out", "{out}"]
CASES = [
    # (id, verb, argv, setup, message pattern)
    ("random_bytes_corpus", "capture", [*CAPTURE, "--dataset_path", "{in}/corpus.txt"], "random_corpus",
     r"dataset '.*corpus\.txt'.*not UTF-8"),
    ("empty_corpus", "capture", [*CAPTURE, "--dataset_path", "{in}/corpus.txt"], "empty_corpus",
     r"dataset '.*corpus\.txt'.*holds no text for even one row of context_size=128"),
    ("bad_split", "capture", [*CAPTURE, "--dataset_split", "tain"], "",
     r"dataset 'embedded' \(split 'tain'.*Available splits: \['train', 'validation'\]"),
    ("bad_column", "capture", [*CAPTURE, "--text_column", "txt"], "",
     r"column 'txt'.*no column 'txt'; columns are \['source', 'text'\]"),
    ("model_dtype_foo", "capture", [*CAPTURE, "--model_dtype", "foo"], "",
     r"model dtype 'foo' is not supported; allowed: float32, float16, bfloat16"),
    ("device_banana", "capture", [*CAPTURE, "--device", "banana"], "",
     r"device='banana' is not a device; allowed here: cpu"),
    ("empty_output_dir", "capture", ["--out", ""], "", r"output_dir: the path is empty"),
    ("output_dir_under_a_file", "capture", ["--out", "{file}/cache"], "",
     r"output_dir='.*a-file/cache': '.*a-file' is a file, not a folder"),
    ("eval_broken_cfg_json", "evaluate", ["--sae_path", "{in}/sae"], "sae_broken_cfg",
     r"in/sae/cfg\.json: not a valid JSON SAE config"),
    ("eval_truncated_weights", "evaluate", ["--sae_path", "{in}/sae"], "sae_truncated",
     r"in/sae/sae_weights\.safetensors: not a readable safetensors file"),
    ("eval_architecture_os_system", "evaluate", ["--sae_path", "{in}/sae"], "sae_os_system",
     r"cfg\.json: architecture 'os\.system' is not a registered SAE architecture; allowed: .*hybrid"),
    ("eval_cfg_d_in_disagrees_with_weights", "evaluate", ["--sae_path", "{in}/sae"], "sae_d_in_64",
     r"sae_weights\.safetensors: tensor 'b_dec' has shape \(128,\) but .*cfg\.json \(architecture 'hybrid', "
     r"d_in=64, d_sae=64\) implies \(64,\)"),
    ("eval_weights_missing_a_tensor", "evaluate", ["--sae_path", "{in}/sae"], "sae_without_b_gate",
     r"sae_weights\.safetensors: tensor 'b_gate' is missing; .*cfg\.json \(architecture 'hybrid'.*implies shape \(64,\)"),
    ("eval_cfg_architecture_disagrees_with_weights", "evaluate", ["--sae_path", "{in}/sae"], "sae_says_topk",
     r"sae_weights\.safetensors: tensor 'b_enc' is missing; .*cfg\.json \(architecture 'topk'"),
    ("eval_nan_weights", "evaluate", ["--sae_path", "{in}/sae"], "sae_nan",
     r"sae_weights\.safetensors: tensor 'W_dec' holds 1 NaN/inf values; refusing to load"),
    ("eval_negative_context_size", "evaluate", ["--sae_path", "{in}/sae"], "sae_context_negative",
     r"cfg\.json: metadata\.context_size is -5; allowed: an integer >= 2 or null"),
    ("dashboards_cfg_d_in_disagrees_with_weights", "dashboards", ["--sae_path", "{in}/sae", "--out", "{out}"],
     "sae_d_in_64", r"sae_weights\.safetensors: tensor 'b_dec' has shape \(128,\) but"),
    ("dashboards_nan_weights", "dashboards", ["--sae_path", "{in}/sae", "--out", "{out}"], "sae_nan",
     r"sae_weights\.safetensors: tensor 'W_dec' holds 1 NaN/inf values"),
    ("dashboards_negative_context_size", "dashboards", ["--sae_path", "{in}/sae", "--out", "{out}"],
     "sae_context_negative", r"metadata\.context_size is -5"),
    ("serve_weights_missing_a_tensor", "serve", ["--sae_path", "{in}/sae", "--dashboards", "{in}"],
     "sae_without_b_gate", r"sae_weights\.safetensors: tensor 'b_gate' is missing"),
    ("eval_missing_sae", "evaluate", ["--sae_path", "{in}/nothing"], "", r"nothing/cfg\.json: missing"),
    ("eval_batch_size_negative", "evaluate", ["--sae_path", "{in}/sae", "--batch_sequences", "-3"], "sae",
     r"--batch_sequences=-3: must be an integer >= 1"),
    ("eval_n_batches_zero", "evaluate", ["--sae_path", "{in}/sae", "--n_batches", "0"], "sae",
     r"--n_batches=0: must be an integer >= 1"),
    ("comparison_seeds_without_values", "compare", ["--seeds", "--out", "{out}"], "",
     r"--seeds was given no values; give one or more values"),
    ("comparison_out_under_proc", "compare", ["--out", "/proc/hybrid-sae-out"], "",
     r"--out='/proc/hybrid-sae-out': cannot create files in '/proc'"),
    ("scaling_lr_inf", "scaling", ["--lr", "inf", "--out", "{out}"], "", r"--lr=inf: must be a finite"),
    ("scaling_device_banana", "scaling", ["--device", "banana", "--out", "{out}"], "",
     r"device='banana' is not a device"),
    ("train_lr_inf", "train", [*TRAIN, "--cache_dir", "{in}/c", "--out", "{out}", "--lr", "inf"], "",
     r"lr must be a finite number > 0, got lr=inf"),
    ("train_empty_paths", "train", [*TRAIN, "--cache_dir", "", "--out", ""], "",
     r"--cache_dir: the path is empty"),
    ("train_out_is_a_file", "train", [*TRAIN, "--cache_dir", "{in}/c", "--out", "{file}"], "",
     r"--out='.*a-file': exists and is not a folder"),
    ("train_out_under_proc", "train", [*TRAIN, "--cache_dir", "{in}/c", "--out", "/proc/x/sae"], "",
     r"--out='/proc/x/sae': cannot create files in '/proc'"),
    ("train_checkpoint_dir_under_a_file", "train",
     [*TRAIN, "--cache_dir", "{in}/c", "--out", "{out}", "--checkpoint_dir", "{file}/ckpt"], "",
     r"--checkpoint_dir='.*a-file/ckpt': '.*a-file' is a file"),
    ("train_out_same_as_checkpoint_dir", "train",
     [*TRAIN, "--cache_dir", "{in}/c", "--out", "{out}", "--checkpoint_dir", "{out}"], "",
     r"--out and --checkpoint_dir are the same folder"),
    ("train_existing_sae_in_out", "train", [*TRAIN, "--cache_dir", "{in}/c", "--out", "{out}"],
     "existing_sae", r"--out='.*out' already holds an SAE or its results \(cfg\.json, sae_weights.*--overwrite"),
    ("manifest_d_in_string", "train", [*TRAIN, "--cache_dir", "{in}/cache", "--out", "{out}"],
     "cache_d_in_string",
     r"cache/manifest\.json: d_in\['blocks\.1\.hook_resid_pre'\] is '128' \(str\); allowed: an integer"),
    ("manifest_hook_names_null", "train", [*TRAIN, "--cache_dir", "{in}/cache", "--out", "{out}"],
     "cache_hook_names_null", r"manifest\.json: hook_names is None \(NoneType\); allowed: a non-empty list"),
    ("manifest_shard_outside_the_cache", "train", [*TRAIN, "--cache_dir", "{in}/cache", "--out", "{out}"],
     "cache_traversal", r"shards\[0\]\.file is '\.\./other-cache/shard_00000\.safetensors'.*plain file name inside"),
    ("manifest_shard_etc_passwd", "train", [*TRAIN, "--cache_dir", "{in}/cache", "--out", "{out}"],
     "cache_etc_passwd", r"shards\[0\]\.file is '/etc/passwd'.*no absolute paths"),
    ("manifest_shard_dev_zero", "train", [*TRAIN, "--cache_dir", "{in}/cache", "--out", "{out}"],
     "cache_dev_zero", r"shards\[0\]\.file is '/dev/zero'"),
]  # fmt: skip


@pytest.mark.parametrize(("verb", "argv", "setup", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    verb: str, argv: list[str], setup: str, pattern: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)  # an empty path that slipped through would write here, and be seen
    names = _prepare(setup, tmp_path)
    _fails_with_one_line(verb, [arg.format(**names) for arg in argv], pattern, tmp_path, capsys)


def test_non_utf8_paths_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = os.fsdecode(bytes(tmp_path) + b"/out-\xff")  # how Linux hands Python an argument that is not UTF-8
    _fails_with_one_line("train", [*TRAIN, "--cache_dir", str(tmp_path / "c"), "--out", bad],
                         r"--out=.*out-\\xff': the path is not valid UTF-8", tmp_path, capsys)  # fmt: skip
    _fails_with_one_line("capture", ["--output_dir", bad], r"output_dir=.*out-\\xff'.*not valid UTF-8",
                         tmp_path, capsys)  # fmt: skip


def test_the_real_process_exits_2_with_only_that_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "hybrid_sae_ext", "evaluate", "--sae_path", str(tmp_path), "--n_batches", "0"]
    env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package, not another installed copy
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: --n_batches=0: must be an integer >= 1"
    assert "Traceback" not in done.stderr
    traced = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**env, TRACEBACK_ENV: "1"},
                            check=False)  # fmt: skip
    assert traced.returncode != 0 and "Traceback" in traced.stderr  # the escape hatch for debugging
