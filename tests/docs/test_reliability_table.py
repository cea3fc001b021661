"""Every test the bad-input table of docs/reliability.md names exists (file, function, parameter id where given)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_every_test_named_in_the_bad_input_table_exists() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    section = page.split("Bad input and the error it gets", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`", section)
    assert len(named) >= 40
    for file, function, case in named:
        source = (ROOT / file).read_text()
        assert re.search(rf"^def {function}\(", source, flags=re.M), f"{file}::{function} is not a test"
        if case:
            assert f'("{case}",' in source, f"{file}::{function}[{case}]: no such case"
