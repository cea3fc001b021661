"""The learning-rate sweep trains each self-sparsifying architecture at every rate and picks the best by
held-out FVU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hybrid_sae_ext.experiments.comparison import ComparisonConfig, RunSpec, build_run
from hybrid_sae_ext.experiments.lr_sweep import lr_sweep_markdown, sweep_learning_rates, write_lr_sweep
from hybrid_sae_ext.experiments.rates import best_rate, l0_adjusted_fvu
from hybrid_sae_ext.experiments.report import _rates

LRS = [1e-3, 3e-2]


def _tiny(out: Path, **overrides: object) -> ComparisonConfig:
    return ComparisonConfig(**{
        "n_features": 64, "tokens": 1024, "context_size": 17, "batch_size": 4, "epochs": 1, "target_l0": 4,
        "heldout_tokens": 512, "curve_points": 2, "eval_batches": 1, "out": str(out),
        "architectures": ["vanilla", "ksparse", "hybrid-adaptive"], "lr_sweep": LRS, **overrides,
    })


def test_sweep_trains_each_architecture_at_each_rate_and_picks_the_lowest_fvu(tmp_path: Path) -> None:
    cfg = _tiny(tmp_path / "out")
    results = sweep_learning_rates(cfg)
    runs = results["runs"]
    # vanilla's L0 comes from a searched coefficient, so it is not swept
    assert sorted((r["architecture"], r["lr"]) for r in runs) == sorted(
        (a, lr) for a in ("ksparse", "hybrid-adaptive") for lr in LRS)
    for run in runs:  # the rate reached the trainer, and nothing else changed between the rates
        assert run["config"]["train"]["lr"] == run["lr"]
    for arch in ("ksparse", "hybrid-adaptive"):
        low, high = (next(r for r in runs if r["architecture"] == arch and r["lr"] == lr) for lr in LRS)
        assert low["fvu"] != high["fvu"], arch
        assert {k: v for k, v in low["config"]["train"].items() if k != "lr"} == \
            {k: v for k, v in high["config"]["train"].items() if k != "lr"}
        low_at_target, high_at_target = (r["fvu"] * (r["l0"] / 4) ** (2 if r["l0"] > 4 else 0.5) for r in (low, high))
        assert results["best_lr"][arch] == (LRS[0] if low_at_target < high_at_target else LRS[1])
    text = lr_sweep_markdown(results)
    for arch, best in results["best_lr"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {arch} |"))
        cells = row.split(" | ")[1:1 + len(LRS)]
        assert [c.startswith("**") for c in cells] == [lr == best for lr in LRS], row
    write_lr_sweep(results, tmp_path / "out")
    assert (tmp_path / "out" / "lr_sweep.md").read_text() == text
    # a rerun reuses each finished rate's pass (kept under partial/) and gives the same table
    assert sorted(p.name for p in (tmp_path / "out" / "partial").iterdir()) == ["lr-0.001.json", "lr-0.03.json"]
    assert lr_sweep_markdown(sweep_learning_rates(cfg)) == text
    # the columns ascend whatever order the rates were given in
    reordered = {**results, "config": {**results["config"], "lr_sweep": LRS[::-1]}}
    assert lr_sweep_markdown(reordered) == text


def test_sweep_refuses_what_it_cannot_sweep(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"None of \['vanilla', 'gated'\] sets its own L0"):
        sweep_learning_rates(_tiny(tmp_path, architectures=["vanilla", "gated"]))
    with pytest.raises(ValueError, match=r"lr_sweep is empty"):
        sweep_learning_rates(_tiny(tmp_path, lr_sweep=[]))
    with pytest.raises(ValueError, match=r"every lr_sweep value must be > 0, got lr=0.001, lr_sweep=\[0.001, -1.0\]"):
        _tiny(tmp_path, lr_sweep=[1e-3, -1.0])


def test_best_rate_never_favours_a_run_for_its_l0() -> None:
    # 0.10 at L0 40 is 0.156 at the target (x 1.25^2): the on-target 0.15 wins; 0.11 at L0 33 (0.117) wins over it
    runs = [{"lr": 1e-3, "fvu": 0.20, "l0": 32.0}, {"lr": 3e-3, "fvu": 0.15, "l0": 32.0},
            {"lr": 1e-2, "fvu": 0.10, "l0": 40.0}]
    assert best_rate(runs, 32) == 3e-3
    assert best_rate([*runs, {"lr": 3e-2, "fvu": 0.11, "l0": 33.0}], 32) == 3e-2
    # below the target a run gets little credit: 0.16 at L0 16 is 0.113 at the target, not 0.16 / 2^2
    assert l0_adjusted_fvu(0.16, 16.0, 32.0) == pytest.approx(0.16 * 0.5**0.5)
    assert best_rate([{"lr": 1e-3, "fvu": 0.11, "l0": 32.0}, {"lr": 1e-2, "fvu": 0.16, "l0": 16.0}], 32) == 1e-3


def test_comparison_trains_each_swept_architecture_at_its_best_rate(tmp_path: Path) -> None:
    sweep = sweep_learning_rates(_tiny(tmp_path / "sweep"))
    write_lr_sweep(sweep, tmp_path / "sweep")
    cfg = _tiny(tmp_path / "cmp", lr_sweep=[], lr=5e-4, lr_from=str(tmp_path / "sweep" / "lr_sweep.json"))
    assert cfg.architecture_lr == sweep["best_lr"]
    for arch, settings in (("ksparse", {"k": 4}), ("hybrid-adaptive", {"k": 8, "target_l0": 4}),
                           ("vanilla", {"l1_coefficient": 1.0})):
        trainer = build_run(cfg, RunSpec(arch, settings, 0, "target"), d_in=8, steps=2)
        assert trainer.cfg.lr == sweep["best_lr"].get(arch, 5e-4), arch
    assert _rates(dataclasses.asdict(cfg)) == (  # the comparison's report names each rate
        f"lr per architecture from the sweep `sweep/lr_sweep.json` (TopK (SAELens defaults) {sweep['best_lr']['ksparse']:g}, "
        f"hybrid (target_l0, k = 2 x target) {sweep['best_lr']['hybrid-adaptive']:g}; the others 0.0005)")
    with pytest.raises(ValueError, match=r"swept other data or budget \(sweep, comparison\): \{'n_features': \(64, 128\)\}"):
        _tiny(tmp_path, lr_sweep=[], n_features=128, lr_from=str(tmp_path / "sweep" / "lr_sweep.json"))
    with pytest.raises(ValueError, match=r"lr_from='nowhere.json' is not a file"):
        _tiny(tmp_path, lr_sweep=[], lr_from="nowhere.json")
    with pytest.raises(ValueError, match=r"lr_sweep=\[0.001, 0.03\] sweeps the rates that lr_from="):
        _tiny(tmp_path, lr_from=str(tmp_path / "sweep" / "lr_sweep.json"))


def test_an_architecture_swept_in_two_files_takes_its_best_rate_over_both(tmp_path: Path) -> None:
    """A finer grid added later (a second ``--lr_sweep`` file) competes with the first file's rates: the best run
    of either file wins, whichever file comes last."""
    first = sweep_learning_rates(_tiny(tmp_path / "first", architectures=["ksparse"]))
    write_lr_sweep(first, tmp_path / "first")
    worst = max(first["runs"], key=lambda r: r["fvu"])
    second = {**first, "runs": [{**worst, "lr": 7e-3, "fvu": worst["fvu"] * 2}], "best_lr": {"ksparse": 7e-3}}
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "lr_sweep.json").write_text(json.dumps(second))
    better = {**first, "runs": [{**worst, "lr": 2e-3, "fvu": worst["fvu"] / 100}], "best_lr": {"ksparse": 2e-3}}
    (tmp_path / "better").mkdir()
    (tmp_path / "better" / "lr_sweep.json").write_text(json.dumps(better))
    files = [str(tmp_path / name / "lr_sweep.json") for name in ("first", "second")]
    cfg = _tiny(tmp_path / "cmp", architectures=["ksparse"], lr_sweep=[], lr_from=",".join(files))
    assert cfg.architecture_lr == {"ksparse": first["best_lr"]["ksparse"]}
    cfg = _tiny(tmp_path / "cmp", architectures=["ksparse"], lr_sweep=[],
                lr_from=",".join([*files, str(tmp_path / "better" / "lr_sweep.json")]))
    assert cfg.architecture_lr == {"ksparse": 2e-3}
