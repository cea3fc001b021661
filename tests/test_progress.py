"""Progress bars: one line per update in a log (no carriage-return redraws), nothing when turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOP = """
import time
from hybrid_sae_ext.progress import progress_bar
for _ in progress_bar(range(6), desc="stage", mininterval=0.05, enabled={enabled}):
    time.sleep(0.1)
"""


def _stderr_of_loop(enabled: bool) -> str:
    done = subprocess.run([sys.executable, "-c", LOOP.format(enabled=enabled)], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, check=True)
    return done.stderr.decode()  # bytes: text mode would turn a "\r" into a newline


def test_a_log_gets_whole_lines_ending_at_the_final_count() -> None:
    stderr = _stderr_of_loop(enabled=True)
    assert "\r" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("stage:")]
    assert len(lines) >= 3, stderr
    assert lines[-1].startswith("stage: 100%") and "6/6" in lines[-1]
    assert len(lines) == len(set(lines)), "the closing redraw repeats the last line"


def test_progress_false_prints_nothing() -> None:
    assert "stage" not in _stderr_of_loop(enabled=False)
