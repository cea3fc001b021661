"""Both notebooks execute top to bottom on results folders made by real (tiny) runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"


def _execute(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def test_results_analysis_notebook(tiny_comparison: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch) -> None:
    out, _ = tiny_comparison
    notebook = _execute("results_analysis.ipynb", {"HYBRID_SAE_RESULTS": str(out), "HYBRID_SAE_FIGURES": str(tmp_path)}, monkeypatch)
    assert (tmp_path / "l0_per_token.png").stat().st_size > 10_000
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert os.path.exists(tmp_path / "frontier_l0_kl.png")


def test_paper_figures_notebook(tiny_comparison: tuple[Path, dict[str, Any]], tiny_scaling: Path, tmp_path: Path,
                                monkeypatch) -> None:
    out, _ = tiny_comparison
    env = {"HYBRID_SAE_RESULTS": str(out), "HYBRID_SAE_SCALING": str(tiny_scaling), "HYBRID_SAE_FIGURES": str(tmp_path)}
    _execute("paper_figures.ipynb", env, monkeypatch)
    for name in ("fig1_frontiers", "fig2_cost", "fig3_scaling_features", "fig4_scaling_tokens", "fig5_at_target"):
        assert (tmp_path / f"{name}.pdf").exists() and (tmp_path / f"{name}.png").stat().st_size > 10_000
