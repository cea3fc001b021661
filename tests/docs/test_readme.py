"""The README's Python example and every Python block of ``docs/*.md`` run as written (offline, on the embedded
default); the README's test command is ``.ci/run``'s; every docs page is linked from the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>[^>]*?) -->")
BLOCK = re.compile(r"(?:^(?P<mark>[^\n]*)\n)?```python\n(?P<code>.*?)```", flags=re.S | re.M)


def python_blocks(page: Path) -> list[tuple[str, str]]:
    """``(code, reason)`` per Python block; ``reason`` is non-empty when the line before the fence says
    ``<!-- not run: REASON -->`` (allowed only for blocks that need the network or a GPU)."""
    blocks = []
    for match in BLOCK.finditer(page.read_text()):
        skip = NOT_RUN.fullmatch((match.group("mark") or "").strip())
        blocks.append((match.group("code"), skip.group("reason").strip() if skip else ""))
    return blocks


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(README)
    assert len(blocks) == 1 and not blocks[0][1]
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0][0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    logits = namespace["logits"]
    assert logits.shape[-1] == 4096 and (tmp_path / "out" / "sae_weights.safetensors").exists()


RUN_AS_ONE_PROGRAM = {"adding-an-architecture.md": "tests/docs/test_adding_an_architecture.py"}
"""Pages whose blocks build on each other (one module, run in order) and so run in their own test, not block by block."""


@pytest.mark.parametrize(
    ("page", "index"),
    [(page, index) for page in PAGES if page.name not in RUN_AS_ONE_PROGRAM
     for index in range(len(python_blocks(page)))],
    ids=lambda value: value.name if isinstance(value, Path) else str(value),
)
def test_docs_python_blocks_run(page: Path, index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block runs alone in a fresh folder, so a page's example cannot lean on another's files."""
    code, reason = python_blocks(page)[index]
    if reason:
        assert re.search(r"network|GPU|CUDA|hub", reason), f"{page.name} block {index}: skipped without cause"
        pytest.skip(f"{page.name} block {index}: {reason}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}:block{index}", "exec"), {"__name__": f"docs_{page.stem}"})  # noqa: S102


def test_every_docs_page_is_linked_from_the_readme() -> None:
    text = README.read_text()
    assert PAGES
    for page in PAGES:
        assert f"](docs/{page.name})" in text, f"docs/{page.name} is not linked from README.md"


def test_readme_test_command_is_ci() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q'
    assert command in README.read_text() and command in ci
