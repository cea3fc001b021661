"""Opening a damaged or mismatched cache fails with a ValueError that names the file, and changes nothing."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from hybrid_sae_ext.activations import ActivationReader, CacheWriter, Manifest, ReaderConfig, open_cache, read_manifest


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _fails_naming(directory: Path, file: str, pattern: str, **expect: object) -> None:
    before = _snapshot(directory)
    with pytest.raises(ValueError, match=re.escape(str(directory / file)) + ".*" + pattern):
        open_cache(directory, **expect)
    assert _snapshot(directory) == before


def test_truncated_shard(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    shard = cache / "shard_00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    _fails_naming(cache, "shard_00002.safetensors", "checksum mismatch")
    _fails_naming(cache, "shard_00002.safetensors", "not a readable safetensors", verify_checksums=False)


def test_bit_flipped_shard(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    data = bytearray((cache / "shard_00001.safetensors").read_bytes())
    data[-5] ^= 0x10
    (cache / "shard_00001.safetensors").write_bytes(bytes(data))
    _fails_naming(cache, "shard_00001.safetensors", "checksum mismatch")


def test_deleted_shard(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    (cache / "shard_00003.safetensors").unlink()
    _fails_naming(cache, "shard_00003.safetensors", "missing")


def test_manifest_mismatches(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    _fails_naming(cache, "manifest.json", "captured from model 'synthetic', expected 'gpt2'", model_name="gpt2")
    _fails_naming(cache, "manifest.json", r"no hook 'blocks\.0\.hook_resid_pre'.*blocks\.0\.hook_resid_post",
                  hook_name="blocks.0.hook_resid_pre")  # fmt: skip
    _fails_naming(cache, "manifest.json", "d_in 3, expected 768", hook_name="blocks.0.hook_resid_post", d_in=768)
    with pytest.raises(ValueError, match=re.escape(str(cache / "manifest.json"))):
        ActivationReader(cache, ReaderConfig(hook_name="blocks.9.hook_resid_post"))


def test_manifest_disagreeing_with_shards(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["d_in"]["blocks.1.hook_resid_post"] = 4
    (cache / "manifest.json").write_text(json.dumps(manifest))
    _fails_naming(cache, "shard_00000.safetensors", r"'blocks\.1\.hook_resid_post' is F32 \[50, 3\]")
    manifest["hook_names"][1] = "blocks.1.mlp.hook_post"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    _fails_naming(cache, "manifest.json", "d_in is .*one width per hook of hook_names")


def test_resuming_into_a_different_cache_is_refused(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    other = read_manifest(cache)
    other.shards, other.complete, other.dtype = [], False, "float16"
    before = _snapshot(cache)
    with pytest.raises(ValueError, match=re.escape(str(cache / "manifest.json")) + ".*dtype: 'float32' -> 'float16'"):
        CacheWriter.create_or_resume(cache, other)
    assert _snapshot(cache) == before


def test_unfinished_cache_needs_opt_in(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path)
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    _fails_naming(cache, "manifest.json", "did not finish")
    assert open_cache(cache, allow_incomplete=True).num_shards == 4


def test_a_shard_that_links_outside_the_cache_is_refused(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path / "cache")
    other = synthetic_cache(tmp_path / "other-cache")
    (cache / "shard_00001.safetensors").unlink()
    (cache / "shard_00001.safetensors").symlink_to(other / "shard_00001.safetensors")  # same bytes: checksum matches
    with pytest.raises(ValueError, match=re.escape(str(cache / "shard_00001.safetensors")) + ": a symbolic link; "
                       "a cache reads only plain files inside its own folder"):  # fmt: skip
        open_cache(cache)


def test_shard_names_must_be_plain_names(synthetic_cache, tmp_path) -> None:
    cache = synthetic_cache(tmp_path / "cache")
    other = synthetic_cache(tmp_path / "other-cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    for name in ("../other-cache/shard_00000.safetensors", str(other / "shard_00000.safetensors"), "/dev/zero", ".."):
        manifest["shards"][0]["file"] = name  # its checksum still matches other-cache's first shard
        (cache / "manifest.json").write_text(json.dumps(manifest))
        _fails_naming(cache, "manifest.json", re.escape(f"shards[0].file is {name!r}") + ".*plain file name inside")


def test_a_capture_that_wrote_nothing_does_not_block_the_folder(synthetic_cache, tmp_path) -> None:
    hooks = ["blocks.0.hook_resid_post"]
    fresh = Manifest(model_name="m", hook_names=hooks, d_in={hooks[0]: 3}, dtype="float32", context_size=4,
                     tokens_per_shard=10, config={"dataset_split": "tain"})  # fmt: skip
    writer = CacheWriter.create_or_resume(tmp_path, fresh)
    assert not (tmp_path / "manifest.json").exists()  # the manifest comes with the first shard
    with pytest.raises(ValueError, match="no activations were captured; a cache of 0 tokens is not marked complete"):
        writer.finish()
    (tmp_path / "manifest.json").write_text(json.dumps(fresh.to_json()))  # what older versions left behind
    fixed = Manifest(**{**dataclasses.asdict(fresh), "config": {"dataset_split": "train"}})
    writer = CacheWriter.create_or_resume(tmp_path, fixed)
    writer.write_shard({hooks[0]: torch.ones(5, 3)})
    assert open_cache(tmp_path, allow_incomplete=True).manifest.config == {"dataset_split": "train"}
