"""Crash-safe file writing and checksums shared by checkpoints, caches and results.

Why: a run killed mid-write must never leave a half-written file under the final name. Every
writer goes through ``atomic_path``: write to a temporary file in the same folder, fsync, rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success fsync it and rename it to ``final``.

    On any error the temporary file is removed and ``final`` keeps its previous content.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        set_default_mode(tmp)  # mkstemp and safetensors create 0600; final files get the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def set_default_mode(path: Path | str) -> None:
    """Give a file the permissions ``open()`` would have (0666 less the umask), so others can read shared results."""
    os.chmod(path, 0o666 & ~_UMASK)


def fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finite_or_null(payload: Any) -> Any:
    """``payload`` with every NaN/inf float replaced by None (JSON null), in nested dicts, lists and tuples."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {key: finite_or_null(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite_or_null(value) for value in payload]
    return payload


def json_text(payload: Any, **dumps_kwargs: Any) -> str:
    """Strict JSON: a non-finite float becomes null, never the bare ``NaN`` that ``jq`` and browsers reject."""
    return json.dumps(finite_or_null(payload), allow_nan=False, **dumps_kwargs)


def write_json_atomic(path: Path | str, payload: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(payload, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: Path | str, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
