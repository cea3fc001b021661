"""Where the notebooks read results and write figures, whichever folder Jupyter was started in.

Why: the notebooks used paths relative to ``notebooks/`` (they broke when run from the repository root) and
wrote their figures over committed files (matplotlib's SVG and PDF output differs run to run, so every run
left ``git status`` dirty). Now results are found from the current folder upwards (or next to an editable
install), and figures go to the ignored ``results/notebooks/figures/`` unless ``WRITE_FIGURES=1`` asks for
the committed folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import hybrid_sae_ext

WRITE_FIGURES_ENV = "WRITE_FIGURES"
FIGURES_ENV = "HYBRID_SAE_FIGURES"
SCRATCH_FIGURES = Path("results") / "notebooks" / "figures"


def repository_path(relative: str) -> Path:
    """``relative`` (e.g. ``results/comparison-debug-cpu``) under the repository: searched from the current
    folder upwards, then from the installed package's folder upwards (an editable install of the repository)."""
    starts = (Path.cwd().resolve(), Path(hybrid_sae_ext.__file__).resolve().parent)
    for start in starts:
        for folder in (start, *start.parents):
            if (folder / relative).exists():
                return folder / relative
    raise FileNotFoundError(
        f"{relative}: not found above {starts[0]} nor above the installed package; start Jupyter inside the "
        "repository or set the notebook's HYBRID_SAE_* environment variable to the folder"
    )


def env_or_repository_path(env: str, relative: str) -> Path:
    """The folder named by environment variable ``env`` if set, else ``repository_path(relative)``."""
    return Path(os.environ[env]) if os.environ.get(env) else repository_path(relative)


def figures_folder(committed: Path, notebook: str) -> Path:
    """Where a notebook saves figures (created): ``$HYBRID_SAE_FIGURES`` if set; the committed folder
    ``committed`` with ``WRITE_FIGURES=1``; else ``results/notebooks/figures/<notebook>`` (ignored by git)."""
    if os.environ.get(FIGURES_ENV):
        folder = Path(os.environ[FIGURES_ENV])
    elif os.environ.get(WRITE_FIGURES_ENV, "").strip().lower() in ("1", "true", "yes"):
        folder = committed
    else:
        folder = repository_path("results").parent / SCRATCH_FIGURES / notebook
    folder.mkdir(parents=True, exist_ok=True)
    return folder
