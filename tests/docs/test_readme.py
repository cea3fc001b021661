"""The README's Python example runs as written (offline, on the embedded default)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    logits = namespace["logits"]
    assert logits.shape[-1] == 4096 and (tmp_path / "out" / "sae_weights.safetensors").exists()


def test_readme_test_command_is_ci() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q'
    assert command in README.read_text() and command in ci
