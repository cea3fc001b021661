"""One progress bar for every long stage: a live tqdm bar on a terminal, a plain line every 30 s in a log.

Why one place: each stage (capture, training, evaluation, dashboard statistics, site, exports) used its own
tqdm call, some ``tqdm.auto`` (a widget warning in notebooks without ipywidgets), and in a log file tqdm's
carriage-return redraws pile up into one unreadable line. Every command's ``--progress false`` (training:
``--progress_bar false``) turns them all off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between progress lines when stderr is not a terminal (a log file, a CI job, a notebook)."""

T = TypeVar("T")


class LineWriter:
    """A stream for tqdm in a log: each redraw becomes one line instead of a carriage-return overwrite."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last_line = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last_line:  # tqdm redraws the final state once more when it closes
            self.stream.write(line + "\n")
            self.last_line = line

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **tqdm_kwargs: Any) -> tqdm:
    """``tqdm(iterable, **tqdm_kwargs)`` on stderr: redrawn in place on a terminal, a line per 30 s otherwise."""
    stream = sys.stderr
    if stream.isatty():
        return tqdm(iterable, disable=not enabled, file=stream, **tqdm_kwargs)
    tqdm_kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(iterable, disable=not enabled, file=LineWriter(stream), ascii=True, **tqdm_kwargs)
