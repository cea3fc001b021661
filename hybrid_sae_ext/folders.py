"""Output folders: checked before any work, and locked against a second writer.

Why: a run that learns only at the end that it cannot write its output has wasted the whole run,
and two processes writing one cache or checkpoint folder corrupt each other's files while both
report success. ``check_output_dir`` refuses an unusable location up front (empty or non-UTF-8
path, an existing file, a parent that is a file, a place where nothing can be created, e.g.
``/proc``) without creating anything. ``folder_lock`` takes an ``fcntl.flock`` on ``<folder>/.lock``
for as long as the writer runs; the kernel drops it when the process dies, so a lock left by a
killed process never blocks, and the file records who holds it, for the message a second writer gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class FolderLockedError(ValueError):
    """Another live process is writing this folder."""


def printable(path: Path | str) -> str:
    """A path as text that can always be printed (undecodable bytes shown as escapes)."""
    return repr(os.fsencode(path))[1:] if not is_utf8(str(path)) else repr(str(path))


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 arrive as lone surrogates
        return False
    return True


def check_path_text(path: Path | str | None, what: str) -> Path:
    """Refuse an empty or non-UTF-8 path (``what`` names the flag, e.g. ``--out``)."""
    if path is None or str(path) == "":
        raise ValueError(f"{what}: the path is empty; give a folder name (use '.' for the current folder)")
    if not is_utf8(str(path)):
        raise ValueError(f"{what}={printable(path)}: the path is not valid UTF-8; choose a UTF-8 path")
    return Path(path)


def check_output_dir(path: Path | str | None, what: str) -> Path:
    """Check, without creating anything, that ``path`` is or can become a writable folder.

    Raises ValueError naming ``what`` and the path: empty or non-UTF-8, an existing non-folder, a
    parent that is not a folder, or a place where no folder can be created.
    """
    folder = check_path_text(path, what)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}={printable(folder)}: exists and is not a folder; give a folder path")
    existing = folder
    while not existing.exists():  # the nearest existing ancestor is where creation starts
        if existing.is_symlink():
            raise ValueError(f"{what}={printable(folder)}: {printable(existing)} is a broken symbolic link")
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what}={printable(folder)}: {printable(existing)} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as err:
        raise ValueError(
            f"{what}={printable(folder)}: cannot create files in {printable(existing)} ({err.strerror}); "
            "choose a writable folder"
        ) from err
    return folder


def lock_holder(folder: Path) -> str:
    """Who the lock file says holds the folder, as a phrase for messages."""
    try:
        holder = json.loads((folder / LOCK_FILE).read_text())
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']} ({holder['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its lock file names no holder yet)"


@contextlib.contextmanager
def folder_lock(folder: Path | str, what: str) -> Iterator[Path]:
    """Create ``folder`` and hold an exclusive lock on it; a second writer gets ``FolderLockedError``.

    ``what`` names the folder's role in the message (e.g. ``activation cache``). The lock is an
    ``flock`` on ``<folder>/.lock``, released on exit and by the kernel when the process dies. A
    folder this call created is removed again if the body fails before writing anything into it.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderLockedError(
                f"{what} {printable(folder)} is in use by {lock_holder(folder)}; wait for that run to end "
                "or choose another folder"
            ) from None
        holder = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield folder
        except BaseException:
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:  # a failed run leaves no empty folder
                (folder / LOCK_FILE).unlink()
                folder.rmdir()
            raise
    finally:
        os.close(fd)  # closing the descriptor releases the flock
