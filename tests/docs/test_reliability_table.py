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


def test_the_demo_status_table_covers_every_status_the_server_answers() -> None:
    """Every status code the server code sends or its tests expect is a row of docs/reliability.md's live-demo table."""
    page = (ROOT / "docs" / "reliability.md").read_text()
    table = page.split("| status | when |", 1)[1].split("\n\n", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d{3}) \|", table, flags=re.M)}
    server = (ROOT / "hybrid_sae_ext" / "dashboards" / "server.py").read_text()
    tests = (ROOT / "tests" / "dashboards" / "test_server.py").read_text()
    sent = {int(code) for code in re.findall(r"status_code=(\d{3})|_send_error\(send, (\d{3})|HTTPException\((\d{3})",
                                             server) for code in code if code}
    expected = {int(code) for code in re.findall(r"status_code == (\d{3})|, (\d{3}), \"", tests) for code in code if code}
    errors = {code for code in sent | expected if code >= 400}
    assert {400, 413, 422, 500} <= sent and {404, 405, 503} <= expected
    assert errors <= documented, f"undocumented: {sorted(errors - documented)}"
