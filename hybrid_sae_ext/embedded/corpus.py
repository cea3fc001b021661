"""The embedded text corpus: the Python standard library's docstrings and help topics.

Why: tests and the default experiments must run with no network, on real English-and-code text
rather than random tokens. The standard library's docstrings are present wherever Python is, are
read with ``ast`` (no import side effects), and are walked in sorted order, so the build is
reproducible for a given Python version. The built corpus is committed as parquet so every machine
trains on identical text whatever its Python version.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hybrid_sae_ext.io import atomic_path

MIN_DOCSTRING_CHARS = 40
VALIDATION_EVERY = 20  # every 20th document (by a hash of its source) goes to the validation split
SKIPPED_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
HELP_TOPICS_FILE = "pydoc_data/topics.py"  # the language reference text behind ``help("topic")``


def stdlib_documents(stdlib_dir: Path | None = None) -> list[dict[str, str]]:
    """One document per help topic and per docstring longer than ``MIN_DOCSTRING_CHARS``."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    documents = help_topic_documents(root)
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        source = str(path.relative_to(root))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                name = getattr(node, "name", "<module>")
                documents.append({"text": doc, "source": f"{source}:{name}"})
    return documents


def help_topic_documents(root: Path) -> list[dict[str, str]]:
    """The ``topics`` dict literal of ``pydoc_data/topics.py``, read with ``ast.literal_eval``."""
    path = root / HELP_TOPICS_FILE
    if not path.exists():
        return []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "topics" for t in node.targets):
            topics: dict[str, str] = ast.literal_eval(node.value)
            return [{"text": text, "source": f"{HELP_TOPICS_FILE}:{name}"} for name, text in sorted(topics.items())]
    return []


def is_validation(document: dict[str, str]) -> bool:
    digest = hashlib.sha256(document["source"].encode()).digest()
    return digest[0] % VALIDATION_EVERY == 0


def write_corpus(out_dir: Path, stdlib_dir: Path | None = None) -> dict[str, int]:
    """Write ``train.parquet`` and ``validation.parquet`` (column ``text``); returns rows per split.

    ``datasets.load_dataset(str(out_dir))`` reads the folder with these two splits.
    """
    documents = stdlib_documents(stdlib_dir)
    if not documents:
        raise RuntimeError(f"no docstrings found under {stdlib_dir or sysconfig.get_paths()['stdlib']}")
    splits = {
        "train": [d for d in documents if not is_validation(d)],
        "validation": [d for d in documents if is_validation(d)],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        table = pa.Table.from_pylist(rows, schema=pa.schema([("text", pa.string()), ("source", pa.string())]))
        with atomic_path(out_dir / f"{split}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd")
    return {split: len(rows) for split, rows in splits.items()}
