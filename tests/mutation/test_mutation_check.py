"""CI runs the mutation check: every small wrong change to hybrid.py must make the fast tests fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mutation_check import MUTANTS, REPO, TARGET, Mutant, apply  # noqa: E402

SCRIPT = Path(__file__).parent / "mutation_check.py"


@pytest.mark.timeout(1900)  # its own subprocess limit is 1800 s (the check takes ~4 min on 2 cores)
def test_every_mutant_is_caught_and_the_unmutated_tests_pass() -> None:
    # a fresh process: the check forks its runs from a process that has not imported hybrid_sae_ext
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    report = done.stdout + done.stderr[-3000:]
    assert done.returncode == 0, report
    lines = done.stdout.splitlines()
    assert len(lines) == len(MUTANTS) + 1 and lines[0].startswith("ok "), report
    assert sum(line.startswith("caught ") for line in lines) == len(MUTANTS), report


def test_a_mutant_whose_text_is_gone_fails_loudly() -> None:
    source = (REPO / TARGET).read_text()
    assert all(apply(mutant, source) != source for mutant in MUTANTS)
    with pytest.raises(LookupError, match="occurs 0 times .* update the mutant"):
        apply(Mutant("gone", "text that a refactor removed", "x"), source)
