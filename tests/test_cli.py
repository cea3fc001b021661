"""``hybrid-sae`` / ``python -m hybrid_sae_ext``: every verb answers ``--help`` with every flag described, the
installed entry point is this dispatcher, old script command lines still parse, and a wrong verb is one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hybrid_sae_ext import cli
from hybrid_sae_ext.cli_errors import SHARED_FLAGS, parse_config
from hybrid_sae_ext.experiments.comparison import ComparisonConfig

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package, not another installed copy


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
                          check=False)  # fmt: skip


def _flag_entries(help_text: str) -> dict[str, str]:
    """Flag names -> the text of its help entry (argparse starts each entry with 2 spaces and a dash)."""
    options = help_text.split("\noptions:\n", 1)[1]
    found = {}
    for entry in re.split(r"\n  (?=-)", "\n" + options)[1:]:
        invocation, _, text = re.split(r"( {2,}|\n)", entry.split("\n\n")[0], maxsplit=1)
        found[invocation.strip()] = " ".join(text.split())
    return found


def test_top_level_help_lists_every_verb() -> None:
    done = _run("-m", "hybrid_sae_ext", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: hybrid-sae VERB")
    for verb in cli.VERBS:
        assert re.search(rf"^  {re.escape(verb)} +\S", done.stdout, flags=re.M), verb


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_every_verb_help_describes_every_flag_with_its_default(verb: str) -> None:
    done = _run("-m", "hybrid_sae_ext", verb, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: hybrid-sae {verb} ")
    entries = _flag_entries(done.stdout)
    assert len(entries) >= 3, done.stdout
    for flag, text in entries.items():
        if flag.startswith("-h"):
            continue
        described = re.sub(r"\(default: .*?\)$", "", text).strip()
        assert described, f"hybrid-sae {verb} {flag}: no help text"
        assert "(default:" in text, f"hybrid-sae {verb} {flag}: no default shown"
    if verb == "compare":
        assert "mean and 95% interval over seeds" in " ".join(done.stdout.split())  # a literal % once crashed it


def test_shared_flags_are_shown_first() -> None:
    """A flag that has a shared name (``--d_sae``, ``--batch_tokens``, ...) is listed under it, old names after."""
    done = _run("-m", "hybrid_sae_ext", "scaling", "--help")
    for shared, old in (("--d_sae", "--widths"), ("--k", "--ks"), ("--batch_tokens", "--batch_size")):
        assert shared in SHARED_FLAGS and re.search(rf"^  {shared} \w+, {old} ", done.stdout, flags=re.M), shared


def test_the_installed_command_is_this_dispatcher() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts[cli.PROGRAM].partition(":")
    assert (module, function) == (cli.__name__, cli.main.__name__)


def test_an_unknown_verb_is_one_line() -> None:
    done = _run("-m", "hybrid_sae_ext", "trian")
    assert done.returncode == 2
    assert done.stderr.strip() == (f"error: unknown verb 'trian'; allowed: {', '.join(cli.VERBS)} "
                                   f"(see hybrid-sae --help)")  # fmt: skip


def test_an_old_script_still_runs_its_verb() -> None:
    done = _run("scripts/run_comparison.py", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: hybrid-sae compare "), done.stderr


def test_the_documented_comparison_command_means_the_same_with_old_and_new_names() -> None:
    """The mission's ``--n_features`` / ``--batch_size`` parse to what ``--d_sae`` / ``--batch_sequences`` give."""
    old = ["--model", "gpt2", "--layer", "6", "--n_features", "4096", "--batch_size", "8", "--epochs", "2", "--debug"]
    new = ["--model", "gpt2", "--layer", "6", "--d_sae", "4096", "--batch_sequences", "8", "--epochs", "2", "--debug"]
    assert parse_config(ComparisonConfig, old) == parse_config(ComparisonConfig, new)
    assert parse_config(ComparisonConfig, new).batch_size == 8
