"""Both notebooks execute top to bottom on results folders made by real (tiny) runs."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient

from hybrid_sae_ext.experiments.report import comparison_markdown

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"


def _execute(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def _outputs(notebook: nbformat.NotebookNode) -> list[list[Any]]:
    return [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]


def _stdout(outputs: list[Any]) -> str:
    return "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")


def _assert_plot_with_data(png: Path, size_px: tuple[int, int] | None = None) -> None:
    """A real figure: PNG of the expected size with coloured (non-grey) pixels, i.e. plotted series,
    not only axes and text (a plot whose data went missing is all grey)."""
    image = matplotlib.image.imread(png)
    if size_px is not None:
        assert (image.shape[1], image.shape[0]) == size_px, (png.name, image.shape)
    rgb = image[..., :3]
    coloured = (rgb.max(-1) - rgb.min(-1)) > 0.3
    assert coloured.sum() > 200, f"{png.name} has no plotted data ({int(coloured.sum())} coloured pixels)"


def test_results_analysis_notebook(tiny_comparison: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch) -> None:
    out, _ = tiny_comparison
    notebook = _execute("results_analysis.ipynb", {"HYBRID_SAE_RESULTS": str(out), "HYBRID_SAE_FIGURES": str(tmp_path)}, monkeypatch)
    outputs = _outputs(notebook)
    assert not [o for cell in outputs for o in cell if o.output_type == "error"]
    results = json.loads((out / "comparison.json").read_text())
    assert _stdout(outputs[0]) == (
        f"{len(results['runs'])} runs on {results['device_name']}, {results['train_tokens']:,} training tokens per SAE, "
        f"seeds {results['config']['seeds']}\n"
    )
    markdown = [o.data["text/markdown"] for o in outputs[1] if o.output_type == "display_data"]
    assert markdown == [comparison_markdown(results)]
    for name in ("frontier_l0_fvu", "frontier_l0_ce_recovered", "frontier_l0_kl"):
        _assert_plot_with_data(tmp_path / f"{name}.png")

    rows = results["table"]["rows"]
    assert len(rows) >= 4
    expected = [f"{row['architecture']}: " + ", ".join(f"{row['l0_spread'][k]:.1f}" for k in
                                                       ("mean", "std", "min", "p5", "p95", "max")) for row in rows]
    assert _stdout(outputs[3]).splitlines()[1:] == expected
    _assert_plot_with_data(tmp_path / "l0_per_token.png", (975, 600))


def test_paper_figures_notebook(tiny_comparison: tuple[Path, dict[str, Any]], tiny_scaling: Path, tmp_path: Path,
                                monkeypatch) -> None:
    out, _ = tiny_comparison
    env = {"HYBRID_SAE_RESULTS": str(out), "HYBRID_SAE_SCALING": str(tiny_scaling), "HYBRID_SAE_FIGURES": str(tmp_path)}
    notebook = _execute("paper_figures.ipynb", env, monkeypatch)
    names = ("fig1_frontiers", "fig2_cost", "fig3_scaling_features", "fig4_scaling_tokens", "fig5_at_target")
    listed = [o.data["text/plain"] for o in _outputs(notebook)[-1] if o.output_type == "execute_result"]
    assert len(listed) == 1
    assert ast.literal_eval(listed[0]) == sorted(f"{name}.{suffix}" for name in names for suffix in ("pdf", "png"))
    for name in names:
        assert (tmp_path / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        _assert_plot_with_data(tmp_path / f"{name}.png")


def _documented_command() -> list[str]:
    """The notebook command of docs/notebooks.md, exactly as written there."""
    text = (NOTEBOOKS.parent / "docs" / "notebooks.md").read_text()
    commands = [line for line in text.splitlines() if line.startswith("jupyter nbconvert")]
    assert len(commands) == 1, commands
    return shlex.split(commands[0])


def test_documented_command_runs_both_offline_and_leaves_git_status_clean(tmp_path: Path) -> None:
    """In a scratch repository holding the committed notebooks and results: the command succeeds, writes only
    ignored files, its pages load no script from another machine, and no cell prints to stderr (warnings)."""
    root = NOTEBOOKS.parent
    tracked = subprocess.run(["git", "ls-files", ".gitignore", "notebooks", "results"], cwd=root, check=True,
                             capture_output=True, text=True).stdout.split()
    for name in tracked:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, tmp_path / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "committed files"]):
        subprocess.run(git + step, cwd=tmp_path, check=True)
    done = subprocess.run(_documented_command(), cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(root)})  # this checkout's package in the kernel
    assert done.returncode == 0, done.stderr[-3000:]
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=tmp_path,
                            check=True, capture_output=True, text=True).stdout
    assert status == ""
    for name in ("results_analysis", "paper_figures"):
        page = (tmp_path / "results" / "notebooks" / f"{name}.html").read_text()
        assert not re.findall(r"<script[^>]*\ssrc=[\"']?(?:https?:)?//", page)
        assert 'data-mime-type="application/vnd.jupyter.stderr"' not in page, name  # a cell wrote to stderr
        assert "IProgress" not in page
    figures = {path.name for path in (tmp_path / "results" / "notebooks" / "figures" / "paper_figures").iterdir()}
    assert "fig1_frontiers.pdf" in figures
