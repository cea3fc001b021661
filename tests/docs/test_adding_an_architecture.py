"""``docs/adding-an-architecture.md`` runs as written: a toy architecture defined outside the package is
registered, trained with the project's trainer, saved, loaded and spliced into the embedded model."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
from sae_lens import registry

PAGE = Path(__file__).parents[2] / "docs" / "adding-an-architecture.md"
PACKAGE = PAGE.parents[1] / "hybrid_sae_ext"


def test_the_worked_example_runs_without_touching_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("adding_an_architecture")  # the reader's own module (dataclasses look it up)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    try:
        for block in blocks:
            exec(compile(block, str(PAGE), "exec", dont_inherit=True), namespace)  # noqa: S102 - our own docs
    finally:  # leave SAELens' registry as the package left it
        registry.SAE_CLASS_REGISTRY.pop("threshold_relu", None)
        registry.SAE_TRAINING_CLASS_REGISTRY.pop("threshold_relu", None)
    printed = capsys.readouterr().out
    assert "threshold must be >= 0, got -1.0" in printed  # the architecture's own check, before any training

    result = namespace["result"]
    first, last = result.history[0], result.history[-1]
    assert result.steps == 40 and last.normalized_mse < first.normalized_mse / 2, "it trains"
    assert 0 < last.l0 < 512
    loaded, clean, spliced = namespace["loaded"], namespace["clean"], namespace["spliced"]
    assert type(loaded).__module__ == "adding_an_architecture"  # the doc's class, not one of the package's
    assert float(clean) < float(spliced) < 3 * float(clean), "the spliced SAE is used and reconstructs"
    assert not any("threshold_relu" in path.read_text() for path in PACKAGE.rglob("*.py"))
