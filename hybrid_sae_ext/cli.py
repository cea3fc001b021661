"""``hybrid-sae VERB [flags]`` (also ``python -m hybrid_sae_ext VERB``): one command line for every job.

Why one dispatcher: a contributor finds every entry point in one table, and a user learns one set of names.
Each verb hands its flags to the library command that does the work, so a verb is also callable from Python
(``main(["train", "--help"])``). Shared names: ``--out`` (where results go), ``--model``, ``--d_sae``, ``--k``,
and batch sizes named by their unit (``--batch_tokens``, ``--batch_sequences``); older names stay accepted as
aliases. Bad input prints one line ``error: ...`` and exits with status 2 (``hybrid_sae_ext.cli_errors``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hybrid_sae_ext.cli_errors import EXIT_BAD_INPUT, cli_main

PROGRAM = "hybrid-sae"
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train_step.py"


@dataclass(frozen=True)
class Verb:
    """Where a verb's ``main(argv)`` lives, and what it does in one line (shown by ``hybrid-sae --help``)."""

    module: str
    function: str
    summary: str


VERBS: dict[str, Verb] = {
    "capture": Verb("hybrid_sae_ext.activations.cli", "main", "capture activations into a sharded cache (resumable)"),
    "train": Verb("hybrid_sae_ext.training.cli", "main", "train an SAE from a cache (captured first when missing), "
                  "save it for SAELens, evaluate it"),
    "evaluate": Verb("hybrid_sae_ext.evals.cli", "main",
                     "splice a saved SAE into its model: CE recovered, KL, FVU, L0"),
    "compare": Verb("hybrid_sae_ext.experiments.cli", "compare", "train every architecture at one target L0 on "
                    "identical data and tabulate them"),
    "scaling": Verb("hybrid_sae_ext.experiments.cli", "scaling",
                    "derive scaling laws: held-out FVU vs width, k and tokens"),
    "compare-scaling": Verb("hybrid_sae_ext.experiments.cli", "compare_scaling",
                            "set saved scaling sweeps of several variants side by side"),
    "dashboards": Verb("hybrid_sae_ext.dashboards.cli", "main",
                       "build per-latent dashboards, a static site and exports"),
    "serve": Verb("hybrid_sae_ext.dashboards.serve", "main", "serve the live demo (activations, search, steering)"),
    "bench": Verb("hybrid_sae_ext.cli", "bench", "train-step benchmark against SAELens and sparsify "
                  "(benchmarks/bench_train_step.py of a source checkout)"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"usage: {PROGRAM} VERB [flags]   ({PROGRAM} VERB --help lists a verb's flags, units and defaults)",
             "", "verbs:"]
    lines += [f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()]
    return "\n".join(lines)


@cli_main
def bench(argv: Sequence[str] | None = None) -> None:
    """Run the train-step benchmark; it lives in the source checkout (``benchmarks/``), not in the package."""
    if not BENCHMARK.is_file():
        raise ValueError(f"{BENCHMARK}: not found; the benchmark ships with the source checkout, run it from there")
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it is being executed
    spec.loader.exec_module(module)
    module.main(list(sys.argv[1:] if argv is None else argv))


def command(verb: str) -> Callable[[list[str]], object]:
    """The ``main(argv)`` of a verb (imported only when used, so ``--help`` of one verb loads only its code)."""
    entry = VERBS[verb]
    return getattr(importlib.import_module(entry.module), entry.function)


def main(argv: Sequence[str] | None = None) -> None:
    """Dispatch ``VERB [flags]``; no verb or ``--help`` prints the verbs, an unknown verb is a one-line error."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        raise SystemExit(0 if args else EXIT_BAD_INPUT)
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"error: unknown verb {verb!r}; allowed: {', '.join(VERBS)} (see {PROGRAM} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
    if argv is None:
        sys.argv[1:] = rest  # the verb's own flags, as its parser and the folder locks' records read them
    sys.argv[0] = f"{PROGRAM} {verb}"  # argparse names the program after it in usage lines and errors
    command(verb)(rest)


def script(verb: str) -> None:
    """What ``scripts/<name>.py`` runs: the verb with the script's own arguments (old command lines keep working)."""
    sys.argv.insert(1, verb)
    main()
