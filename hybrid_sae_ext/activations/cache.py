"""On-disk activation cache: sharded safetensors plus a ``manifest.json`` that vouches for them.

Why: SAE training re-reads the same activations for many epochs and sweeps; recomputing the model
forward each time costs far more than reading them back. Each shard is one safetensors file holding
one ``[tokens, d_in]`` tensor per hook, so a reader of one hook touches only that tensor's bytes. The
manifest records what produced the cache and a sha256 per shard, so a corrupt, truncated or foreign
shard is refused with an error naming the file instead of silently training on garbage. Every file
goes through ``atomic_path``; the manifest is rewritten after each shard, which makes the manifest's
shard list the exact set of shards a killed capture may trust when it resumes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from hybrid_sae_ext.io import atomic_path, sha256_file, write_json_atomic

MANIFEST_FILE = "manifest.json"
FORMAT = "hybrid_sae_ext.activations/1"
STORAGE_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}  # fmt: skip


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype for a storage dtype name (``float32``/``fp32``, ``float16``/``fp16``, ``bfloat16``/``bf16``)."""
    if name not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {name!r}; choose one of {sorted(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[name]


SHARD_NAME = re.compile(r"shard_\d{5,}\.safetensors")


def shard_file_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


@dataclass
class ShardInfo:
    """One complete shard as recorded in the manifest."""

    file: str
    """File name relative to the cache folder."""
    tokens: int
    """Rows of every tensor in the shard."""
    sha256: str
    """Checksum of the whole file, checked when the cache is opened."""


@dataclass
class Manifest:
    """What a cache holds and how it was made; the JSON form of ``manifest.json``."""

    model_name: str
    hook_names: list[str]
    d_in: dict[str, int]
    """Width of each hook's activations (trailing dims flattened, e.g. ``n_heads * d_head`` for ``hook_z``)."""
    dtype: str
    """Storage dtype of every tensor (``float32``, ``float16`` or ``bfloat16``)."""
    context_size: int
    tokens_per_shard: int
    config: dict[str, Any]
    """The creation config (without output-location fields), compared when a capture resumes."""
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    """False while a capture is still running or was killed; resume it to finish."""
    format: str = FORMAT

    @property
    def total_tokens(self) -> int:
        return sum(shard.tokens for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_tokens": self.total_tokens}

    @classmethod
    def from_json(cls, payload: Any, source: Path) -> Manifest:
        """Parse and type-check a manifest; any wrong field is a ValueError naming the file and the field."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{source}: not an activation cache manifest (format {found!r}, want {FORMAT!r})")
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            manifest = cls(**{k: v for k, v in payload.items() if k in fields})
            shards = payload.get("shards", [])
            manifest.shards = [ShardInfo(**shard) for shard in shards] if isinstance(shards, list) else shards
        except TypeError as err:
            raise ValueError(f"{source}: malformed manifest ({err})") from err
        manifest._check_types(source)
        return manifest

    def _check_types(self, source: Path) -> None:
        def bad(name: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"{source}: {name} is {value!r} ({type(value).__name__}); allowed: {allowed}")

        def count(value: Any, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        if not isinstance(self.model_name, str):
            raise bad("model_name", self.model_name, "a string")
        if not isinstance(self.hook_names, list) or not self.hook_names or not all(
            isinstance(h, str) and h for h in self.hook_names
        ):
            raise bad("hook_names", self.hook_names, "a non-empty list of hook name strings")
        if not isinstance(self.d_in, dict) or set(self.d_in) != set(self.hook_names):
            raise bad("d_in", self.d_in, f"an object with one width per hook of hook_names {self.hook_names}")
        for hook, width in self.d_in.items():
            if not count(width, 1):
                raise bad(f"d_in[{hook!r}]", width, "an integer >= 1")
        if self.dtype not in STORAGE_DTYPES:
            raise bad("dtype", self.dtype, ", ".join(sorted(STORAGE_DTYPES)))
        for name in ("context_size", "tokens_per_shard"):
            if not count(getattr(self, name), 1):
                raise bad(name, getattr(self, name), "an integer >= 1")
        if not isinstance(self.config, dict):
            raise bad("config", self.config, "an object")
        if not isinstance(self.complete, bool):
            raise bad("complete", self.complete, "true or false")
        if not isinstance(self.shards, list):
            raise bad("shards", self.shards, "a list of shard records")
        for index, shard in enumerate(self.shards):
            if not isinstance(shard.file, str) or not SHARD_NAME.fullmatch(shard.file):
                raise bad(f"shards[{index}].file", shard.file, "a plain file name inside the cache folder, "
                          "like shard_00000.safetensors (no folders, no '..', no absolute paths)")
            if not count(shard.tokens, 1):
                raise bad(f"shards[{index}].tokens", shard.tokens, "an integer >= 1")
            if not isinstance(shard.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", shard.sha256):
                raise bad(f"shards[{index}].sha256", shard.sha256, "64 lowercase hex digits")

    def header(self) -> dict[str, Any]:
        """Everything that fixes the shards' content; two runs with equal headers write equal shards."""
        return {k: v for k, v in self.to_json().items() if k not in {"shards", "complete", "total_tokens"}}


def read_manifest(directory: Path | str) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        raise ValueError(f"{path}: no activation cache manifest here")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: manifest is not valid JSON ({err})") from err
    return Manifest.from_json(payload, path)


def verify_shard(directory: Path, shard: ShardInfo, manifest: Manifest, checksum: bool = True) -> None:
    """Raise a ValueError naming the file if the shard is missing, corrupt, or disagrees with the manifest."""
    path = directory / shard.file
    if not os.path.lexists(path):
        raise ValueError(f"{path}: shard listed in {directory / MANIFEST_FILE} is missing")
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
        raise ValueError(f"{path}: {kind}; a cache reads only plain files inside its own folder")
    if checksum and (actual := sha256_file(path)) != shard.sha256:
        raise ValueError(
            f"{path}: checksum mismatch (manifest {shard.sha256[:12]}…, file {actual[:12]}…): the shard is corrupt "
            "or truncated; capture again into a new folder (captures are deterministic)"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
            dtypes = {name: handle.get_slice(name).get_dtype() for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if set(shapes) != set(manifest.hook_names):
        raise ValueError(f"{path}: holds hooks {sorted(shapes)}, manifest says {manifest.hook_names}")
    want_dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[storage_dtype(manifest.dtype)]
    for name, shape in shapes.items():
        if shape != [shard.tokens, manifest.d_in[name]] or dtypes[name] != want_dtype:
            raise ValueError(
                f"{path}: tensor {name!r} is {dtypes[name]} {shape}, manifest says "
                f"{want_dtype} [{shard.tokens}, {manifest.d_in[name]}]"
            )


class ActivationCache:
    """A validated, read-only view of a cache folder. Open it with ``open_cache``."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def shard_path(self, index: int) -> Path:
        return self.directory / self.manifest.shards[index].file

    def load_shard(self, index: int, hook_name: str) -> torch.Tensor:
        """The ``[tokens, d_in]`` tensor of one hook in one shard, in its storage dtype."""
        path = self.shard_path(index)
        try:
            with safe_open(str(path), framework="pt") as handle:
                return handle.get_tensor(hook_name)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: cannot read tensor {hook_name!r} ({err})") from err

    def load_all(self, hook_name: str) -> torch.Tensor:
        """Every shard of one hook as one float32 ``[tokens, d_in]`` tensor (for caches that fit in memory)."""
        return torch.cat([self.load_shard(i, hook_name).float() for i in range(self.num_shards)])


def open_cache(
    directory: Path | str,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    d_in: int | None = None,
    verify_checksums: bool = True,
    allow_incomplete: bool = False,
) -> ActivationCache:
    """Open a cache after checking it against the manifest and against what the caller expects.

    ``hook_name``, ``model_name`` and ``d_in`` are the caller's expectations (e.g. an SAE's config);
    any mismatch is a ValueError naming the manifest. Every shard's header is checked; with
    ``verify_checksums`` (the default) its sha256 too. Nothing on disk is modified.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    source = directory / MANIFEST_FILE
    if not manifest.complete and not allow_incomplete:
        raise ValueError(f"{source}: the capture did not finish; run the same capture again to resume it")
    if model_name is not None and model_name != manifest.model_name:
        raise ValueError(f"{source}: cache was captured from model {manifest.model_name!r}, expected {model_name!r}")
    if hook_name is not None and hook_name not in manifest.hook_names:
        close = difflib.get_close_matches(hook_name, manifest.hook_names, n=5, cutoff=0.0)
        raise ValueError(f"{source}: no hook {hook_name!r} in this cache; it holds {manifest.hook_names} (closest: {close})")
    for name in [hook_name] if hook_name is not None else manifest.hook_names:
        if d_in is not None and manifest.d_in[name] != d_in:
            raise ValueError(f"{source}: hook {name!r} has d_in {manifest.d_in[name]}, expected {d_in}")
    for shard in manifest.shards:
        verify_shard(directory, shard, manifest, checksum=verify_checksums)
    return ActivationCache(directory, manifest)


def header_differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``name: old -> new`` for each differing entry, looking inside the creation config."""
    flat_old = {**{k: v for k, v in old.items() if k != "config"}, **old.get("config", {})}
    flat_new = {**{k: v for k, v in new.items() if k != "config"}, **new.get("config", {})}
    keys = sorted(k for k in set(flat_old) | set(flat_new) if flat_old.get(k) != flat_new.get(k))
    return ", ".join(f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys)


class CacheWriter:
    """Appends shards to a cache folder and keeps its manifest current after every shard."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def create_or_resume(cls, directory: Path | str, fresh: Manifest) -> CacheWriter:
        """Start a new cache, or continue one whose manifest has the same header as ``fresh``.

        Resuming trusts only the shards listed in the manifest, after checking their checksums; a
        shard written but not yet listed when the capture was killed is simply written again. A new
        cache gets its manifest with its first shard, so a capture that fails before producing
        anything leaves nothing that blocks the folder (an old manifest with no shards is replaced).
        The caller holds the folder's lock (``hybrid_sae_ext.folders.folder_lock``).
        """
        directory = Path(directory)
        if not (directory / MANIFEST_FILE).exists():
            return cls(directory, fresh)
        existing = read_manifest(directory)
        if not existing.shards and not existing.complete:
            return cls(directory, fresh)
        old, new = existing.header(), fresh.header()
        if old != new:
            raise ValueError(
                f"{directory / MANIFEST_FILE}: an existing cache with a different config is here "
                f"(existing vs requested: {header_differences(old, new)}); choose another output folder"
            )
        for shard in existing.shards:
            verify_shard(directory, shard, existing)
        for stale in directory.glob(".*.tmp"):  # temporaries of writes cut short by the kill
            stale.unlink()
        return cls(directory, existing)

    def write_shard(self, tensors: dict[str, torch.Tensor]) -> ShardInfo:
        """Write the next shard (one ``[tokens, d_in]`` tensor per hook), then list it in the manifest."""
        tokens = {int(t.shape[0]) for t in tensors.values()}
        if len(tokens) != 1 or set(tensors) != set(self.manifest.hook_names):
            raise ValueError(f"a shard needs one tensor per hook {self.manifest.hook_names} with equal rows")
        name = shard_file_name(len(self.manifest.shards))
        with atomic_path(self.directory / name) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        shard = ShardInfo(file=name, tokens=tokens.pop(), sha256=sha256_file(self.directory / name))
        self.manifest.shards.append(shard)
        self._write_manifest()
        return shard

    def finish(self) -> Manifest:
        if not self.manifest.shards:
            raise ValueError(
                f"{self.directory}: no activations were captured; a cache of 0 tokens is not marked complete"
            )
        self.manifest.complete = True
        self._write_manifest()
        return self.manifest

    def _write_manifest(self) -> None:
        write_json_atomic(self.directory / MANIFEST_FILE, self.manifest.to_json())
