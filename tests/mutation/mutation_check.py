"""Mutation check: small wrong changes to ``hybrid.py`` must each make the fast unit tests fail.

Why: tests that agree with the code by construction (two backends sharing one formula) pass for a
wrong loss. Each mutant here is applied to a fresh temporary copy of the package (never in place,
so parallel runs cannot corrupt the tree); the tests that guard it run there with ``-x`` and must
fail (pytest exit code 1), and the same tests must pass on an unmutated copy. A mutant is matched by its exact source text: if a refactor removes
that text the check fails loudly, so update the mutant to the new code rather than dropping it.

The same math also runs on other paths: the latent-sharded step (``hybrid_forward`` with a rank's share) and
the dashboards' encode (``encode_candidates``). Each mutant lists those paths' tests (``paths``); each must
fail on its own too, so a path that stopped using the shared code (a copy of the math) would show here.

Each run is a child forked from one process that has imported torch and SAELens already, so a
mutant costs its tests, not the ~6 s of imports. Run ``python tests/mutation/mutation_check.py``
for a table; ``test_mutation_check.py`` runs it in CI.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = "hybrid_sae_ext/architectures/hybrid.py"
TEST_FOLDERS = ("tests/architectures", "tests/kernels", "tests/distributed", "tests/dashboards")
"""Copied with the package; every mutant's tests live here."""
REFERENCE_TESTS = ("tests/architectures/test_reference.py",)
_HYBRID = "tests/architectures/test_hybrid.py::"
SHARDED = ("tests/distributed/test_sharded.py::test_sharded_forward_and_gradients_match_the_reference",)
"""The sharded step against the float64 reference."""
DASHBOARD = ("tests/dashboards/test_source.py::test_dashboard_codes_and_gates_match_the_reference",)
"""The dashboards' codes and gates against the float64 reference."""


@dataclass(frozen=True)
class Mutant:
    name: str
    original: str
    """Exact source text in ``hybrid.py``; must occur exactly once."""
    replacement: str
    tests: tuple[str, ...] = REFERENCE_TESTS
    """Test files (relative to the repository) that must catch it."""
    paths: tuple[str, ...] = SHARDED
    """Tests of the other paths through the mutated code; each must fail as well (run one at a time)."""


MUTANTS: tuple[Mutant, ...] = (
    Mutant("gate-aux decoder not detached", "gate_act, sel.indices, W_dec, W_dec.detach(), scales)",
           "gate_act, sel.indices, W_dec, W_dec, scales)"),
    Mutant("AuxK sign flipped", "(aux_recon - residual)", "(aux_recon + residual)"),
    Mutant("exp(r_mag) -> 1 + r_mag", "take(self.r_mag, idx).exp()", "(1 + take(self.r_mag, idx))",
           paths=SHARDED + DASHBOARD),
    Mutant("AuxK scale dropped", "self.cfg.aux_k_coefficient * scale *", "self.cfg.aux_k_coefficient *"),
    Mutant("gate threshold at -0.05", "magnitude * (gate_pre > 0)", "magnitude * (gate_pre > -0.05)",
           paths=DASHBOARD),
    Mutant("AuxK residual not detached", "residual = (target - sae_out).detach()", "residual = target - sae_out"),
    Mutant("L1 summed instead of averaged", "latents.sum(gate_act.sum(-1)).mean()", "latents.sum(gate_act.sum())"),
    Mutant("b_mag dropped", " * selection.values + take(self.b_mag, idx))", " * selection.values)",
           paths=SHARDED + DASHBOARD),
    # our own
    Mutant("gate-aux b_dec not detached", "via_gate = latents.sum(gate_decoded) + self.b_dec.detach()",
           "via_gate = latents.sum(gate_decoded) + self.b_dec"),
    Mutant("training decodes skip the unit norm", "W_dec, W_dec.detach(), scales)", "W_dec, W_dec.detach(), None)"),
    Mutant("AuxK decode skips the unit norm", "aux.indices, W_dec, scales)", "aux.indices, W_dec)"),
    Mutant("gate-aux without relu", "latents.held(sel, torch.relu(gate_pre))", "latents.held(sel, gate_pre)"),
    Mutant("MSE averaged over d_in too", "mse = (sae_out - target).pow(2).sum(-1).mean()",
           "mse = (sae_out - target).pow(2).mean()"),
    Mutant("AuxK scale not capped at 1", "scale = min(n_dead / self.cfg.effective_k_aux, 1.0)",
           "scale = n_dead / self.cfg.effective_k_aux"),
    Mutant("training decoder rows not unit-norm",
           "return inverse_row_norms(self.W_dec)", "return torch.ones_like(self.b_gate)"),
    Mutant("dead gates get no gradient", "dead_gate = aux.values.detach() + take(self.b_gate, aux.indices)",
           "dead_gate = aux.values.detach() + take(self.b_gate, aux.indices).detach()"),
    Mutant("dead-gate term trains the decoder", "gathered_dot(residual, W_dec.detach().t(), aux.indices)",
           "gathered_dot(residual, W_dec.t(), aux.indices)"),
    Mutant("dead gates aim at minus the residual", "(dead_gate - along_row)", "(dead_gate + along_row)"),
    # the SAE-API dense encode and the folds: no other path runs them
    Mutant("inference top-k ignores b_gate", "select_topk(flat_pre + self.b_gate,", "select_topk(flat_pre,",
           paths=()),
    Mutant("uniform fold leaves b_gate unscaled", "for param in (self.W_enc, self.b_gate, self.b_mag):",
           "for param in (self.W_enc, self.b_mag):",
           (_HYBRID + "test_fold_W_dec_norm_folds_a_uniform_norm_and_refuses_per_latent_norms",), paths=()),
    Mutant("batch gate forwards the EMA", 'forward = batch_threshold.to(ema.dtype) if self.cfg.gate_rule == "batch" else ema.clone()',
           "forward = ema.clone()"),
    Mutant("batch threshold one candidate off", "closed = candidates.numel() - round(", "closed = candidates.numel() - 1 - round("),
    Mutant("jump step's gradient reaches the encoder", "sel.values.detach() + take(self.b_gate, sel.indices), self.cfg.gate_bandwidth",
           "sel.values + take(self.b_gate, sel.indices), self.cfg.gate_bandwidth"),
    Mutant("jump estimator window twice as wide", "(z.abs() < ctx.bandwidth / 2)", "(z.abs() < ctx.bandwidth)"),
    Mutant("jump L0 penalty halved", "self.cfg.l0_coefficient * 2 / t", "self.cfg.l0_coefficient * 1 / t"),
    Mutant("jump L0 penalty left out of the total", "self.aux_k + self.l0", "self.aux_k"),
    Mutant("scale fold leaves b_gate unscaled", "for param in (self.b_dec, self.b_gate, self.b_mag):",
           "for param in (self.b_dec, self.b_mag):",
           (_HYBRID + "test_training_sae_folds_the_activation_scale_it_was_trained_under",), paths=()),
    Mutant("scale fold leaves the adaptive threshold", "            threshold.div_(scaling_factor)\n", "            pass\n",
           (_HYBRID + "test_training_sae_folds_the_activation_scale_it_was_trained_under",), paths=()),
    Mutant("refinement steps against the gradient", "torch.relu(values + rate * step) * opened",
           "torch.relu(values - rate * step) * opened"),
    Mutant("refinement ignores the gate", "torch.relu(values + rate * step) * opened", "torch.relu(values + rate * step)"),
    Mutant("refinement residual keeps b_dec", "opened, target - self.b_dec, decoded, latents.sum)",
           "opened, target, decoded, latents.sum)"),
    Mutant("refinement reuses a stale decode", "            decoded = None\n", "            pass\n"),
    Mutant("refined values not decoded",
           "            decoded = latents.sum(kernels.decode(values, sel.indices, W_dec, scales))\n", "            pass\n"),
    Mutant("inference refinement skipped", "        values = self._refine(values, selection.indices,",
           "        values = values if True else self._refine(values, selection.indices,", paths=()),
    Mutant("uniform fold leaves the refinement rates", "self.refine_rate.data.mul_(common**2)",
           "self.refine_rate.data.mul_(common)",
           (_HYBRID + "test_fold_W_dec_norm_folds_a_uniform_norm_and_refuses_per_latent_norms",), paths=()),
    Mutant("empty batch not refused", "        if x.numel() == 0:\n", "        if False:\n",
           (_HYBRID + "test_empty_batch_is_refused_naming_its_shape",),
           paths=("tests/distributed/test_sharded.py::test_the_sharded_step_checks_its_input",
                  "tests/dashboards/test_source.py::test_dashboards_refuse_bad_activations_through_the_sae_check")),
)


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    caught: bool
    detail: str


BASELINE = Mutant("no mutation (every selected test must pass)", "", "",
                  tuple(sorted({test for mutant in MUTANTS for test in (*mutant.tests, *mutant.paths)})), paths=())


def apply(mutant: Mutant, source: str) -> str:
    """The mutated source; raises if the original text is not there exactly once."""
    if mutant is BASELINE:
        return source
    count = source.count(mutant.original)
    if count != 1:
        raise LookupError(
            f"mutant {mutant.name!r}: its source text occurs {count} times in {TARGET} (need exactly 1): "
            f"{mutant.original!r}. The code changed; update the mutant to the new code."
        )
    return source.replace(mutant.original, mutant.replacement)


def _copy_tree(mutant: Mutant) -> Path:
    """A temporary copy of the package, tests and pytest config, with ``mutant`` applied."""
    root = Path(tempfile.mkdtemp(prefix="mutant-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(REPO / "hybrid_sae_ext", root / "hybrid_sae_ext", ignore=ignore)
    for folder in TEST_FOLDERS:  # not tests/conftest.py: its session fixtures import the experiments
        shutil.copytree(REPO / folder, root / folder, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / TARGET).write_text(apply(mutant, (REPO / TARGET).read_text()))
    return root


def _preload() -> None:
    """Import the heavy dependencies once; each forked run then only imports the (mutated) package."""
    import sae_lens  # noqa: F401
    import torch  # noqa: F401

    for plugin in importlib.metadata.entry_points(group="pytest11"):  # pytest's plugins (hypothesis, ...)
        plugin.load()
    assert not any(name.startswith("hybrid_sae_ext") for name in sys.modules), "must not preload the package"
    gc.freeze()  # the children's gc.collect() (pytest calls it at exit) then skips the preloaded heap


def _fork_pytest(root: Path, tests: tuple[str, ...]) -> int:
    """Run pytest on ``tests`` in ``root`` in a forked child (output to ``root/pytest.log``); returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 3
    try:
        log = os.open(root / "pytest.log", os.O_WRONLY | os.O_CREAT)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(root)
        sys.path.insert(0, str(root))
        import pytest
        import torch

        torch.set_num_threads(1)  # two runs share the cores; no OpenMP pool across the fork either
        import hybrid_sae_ext

        if not Path(hybrid_sae_ext.__file__).is_relative_to(root):
            raise ImportError(f"imported {hybrid_sae_ext.__file__}, not the mutated copy in {root}")
        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--assert=plain", *tests]))
    except BaseException as error:  # noqa: BLE001 - any failure to run must not count as caught
        print(f"mutation runner error: {error!r}", flush=True)
        code = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _summary(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR", "mutation runner"))]
    lines += [line for line in log.splitlines() if " passed" in line or " failed" in line][-1:]
    return "; ".join(lines[:2] + lines[-1:]) if lines else log[-500:]


def run_all(mutants: tuple[Mutant, ...] = MUTANTS, workers: int = 2, timeout_s: float = 300.0) -> list[Outcome]:
    """The baseline (unmutated: must pass) and every mutant (its tests and each of its paths' tests must fail
    with exit code 1), ``workers`` runs at a time."""
    for mutant in mutants:  # fail fast, before any run, if some mutant no longer matches the code
        apply(mutant, (REPO / TARGET).read_text())
    _preload()
    pending = [(mutant, tests) for mutant in (BASELINE, *mutants) for tests in (mutant.tests, *((p,) for p in mutant.paths))]
    running: dict[int, tuple[Mutant, Path, float]] = {}
    runs: dict[Mutant, list[tuple[bool, str]]] = {mutant: [] for mutant in (BASELINE, *mutants)}
    while pending or running:
        while pending and len(running) < workers:
            mutant, tests = pending.pop(0)
            root = _copy_tree(mutant)
            running[_fork_pytest(root, tests)] = (mutant, root, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for child, (mutant, _, started) in running.items():
                if time.monotonic() - started > timeout_s:
                    os.kill(child, signal.SIGKILL)
            time.sleep(0.05)
            continue
        mutant, root, started = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        log = (root / "pytest.log").read_text(errors="replace")
        shutil.rmtree(root, ignore_errors=True)
        caught = code == 0 if mutant is BASELINE else code == 1
        runs[mutant].append((caught, f"exit {code} in {time.monotonic() - started:.0f}s: {_summary(log)}"))
    return [
        Outcome(mutant, all(caught for caught, _ in runs[mutant]), " | ".join(detail for _, detail in runs[mutant]))
        for mutant in (BASELINE, *mutants)
    ]


def main() -> int:
    outcomes = run_all()
    for outcome in outcomes:
        verdict = ("ok      " if outcome.caught else "FAILED  ") if outcome.mutant is BASELINE else (
            "caught  " if outcome.caught else "SURVIVED")
        print(f"{verdict} {outcome.mutant.name}: {outcome.detail}", flush=True)
    return 0 if all(o.caught for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
