"""One way for every script to turn bad input into one line ``error: ...`` and exit status 2.

Why: a 25-line traceback hides the one thing a user needs (which value, in which file, what is
allowed), and each script catching its own subset of exceptions drifted apart. Scripts wrap their
``main`` with ``cli_main``; library code raises ValueError/OSError with a message that names the
value, and this module prints it. ``parse_config`` adds the checks argparse cannot make about a
dataclass config: a list flag given no values, a NaN/inf float, a string with undecodable bytes, an
unknown device. Set ``HYBRID_SAE_EXT_TRACEBACK=1`` to get the full traceback instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import simple_parsing
from safetensors import SafetensorError

from hybrid_sae_ext.folders import is_utf8, printable
from hybrid_sae_ext.models import ModelUnavailableError, check_device
from hybrid_sae_ext.training.checkpoint import CheckpointError
from hybrid_sae_ext.training.trainer import NonFiniteError

TRACEBACK_ENV = "HYBRID_SAE_EXT_TRACEBACK"
EXIT_BAD_INPUT = 2
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OSError, SafetensorError, CheckpointError, ModelUnavailableError, NonFiniteError,
)
"""Errors whose message is meant for the user; anything else is a bug and keeps its traceback."""

ConfigT = TypeVar("ConfigT")
MainT = TypeVar("MainT", bound=Callable[..., Any])


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages joined with '; ')."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def cli_main(main: MainT) -> MainT:
    """Decorate a script's ``main``: user errors print ``error: <message>`` to stderr and exit with status 2."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get(TRACEBACK_ENV):
                raise
            print(f"error: {one_line(err)}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return typing.cast(MainT, wrapped)


SHARED_FLAGS = ("--out", "--model", "--d_sae", "--k", "--batch_tokens", "--batch_sequences",
                "--eval_batch_sequences", "--read_batch_tokens")
"""The names every command uses for the same thing; a field named otherwise takes one as an alias."""


class LiteralPercentHelpFormatter(simple_parsing.SimpleHelpFormatter):
    """Help text from field docstrings, where a ``%`` is text ("a 95% interval"): argparse would read it
    as a format directive and ``--help`` would crash. Its own ``%(default)s`` & co. still expand. A flag
    with one of the ``SHARED_FLAGS`` among its names is shown by that name first (older names after it)."""

    def _get_help_string(self, action: Any) -> str:
        return re.sub(r"%(?!\()", "%%", super()._get_help_string(action) or "")

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
        for action in actions:  # display order only: the parser finds a flag by any of its names
            action.option_strings.sort(key=lambda name: name not in SHARED_FLAGS)
        super().add_usage(usage, actions, groups, prefix)


def parse_config(config_class: type[ConfigT], argv: Sequence[str] | None = None, **parse_kwargs: Any) -> ConfigT:
    """``simple_parsing.parse`` plus the checks of ``check_argv`` (before) and ``check_values`` (after)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_argv(config_class, argv)
    parse_kwargs.setdefault("formatter_class", LiteralPercentHelpFormatter)
    config = simple_parsing.parse(config_class, args=argv, **parse_kwargs)
    check_values(config)
    return config


def _list_fields(config_class: type, prefix: str = "") -> set[str]:
    """Flag names (without ``--``) of list-valued fields and their aliases, nested dataclasses included."""
    names: set[str] = set()
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        hint = hints.get(field.name)
        if dataclasses.is_dataclass(hint):
            names |= _list_fields(typing.cast(type, hint), prefix)
        elif typing.get_origin(hint) is list or list in [typing.get_origin(a) for a in typing.get_args(hint)]:
            names.add(prefix + field.name)
            names.update(alias.lstrip("-") for alias in field.metadata.get("alias", []))
    return names


def check_argv(config_class: type, argv: Sequence[str]) -> None:
    """Refuse a list flag with no values (``--k`` followed by nothing or by another flag)."""
    list_flags = _list_fields(config_class)
    for index, token in enumerate(argv):
        name = token.removeprefix("--").split("=", 1)[0]
        if not token.startswith("--") or name not in list_flags:
            continue
        following = argv[index + 1] if index + 1 < len(argv) else None
        empty = token.endswith("=") or (
            "=" not in token and (following is None or (following.startswith("-") and not _is_number(following)))
        )
        if empty:
            raise ValueError(f"--{name} was given no values; give one or more values after it (e.g. --{name} 8 16)")


def _is_number(text: str) -> bool:
    return re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text) is not None


def check_values(config: Any, prefix: str = "--") -> None:
    """Refuse NaN/inf floats, strings with undecodable bytes and unknown devices anywhere in a config."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        flag = prefix + field.name
        if dataclasses.is_dataclass(value):
            check_values(value, prefix)
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{flag}={item}: must be a finite number")
            if isinstance(item, (str, os.PathLike)) and not is_utf8(str(item)):
                raise ValueError(f"{flag}={printable(item)}: not valid UTF-8; use UTF-8 text and paths")
        if field.name == "device" and isinstance(value, str):
            check_device(value, flag)
