"""Sparsity matching and table statistics, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_sae_ext.experiments.matching import (
    Probe,
    chosen_coefficient,
    interpolate_log_l0,
    mean_interval,
    next_coefficient,
    search_done,
)
from hybrid_sae_ext.experiments.table import _at_target, flattening, head_to_head, l0_spread


def test_bisection_finds_the_coefficient_of_a_monotone_l0() -> None:
    def l0_at(c: float) -> float:  # L0 falls as the coefficient grows; the target 32 sits at c = 25
        return 800.0 / c

    history: list[Probe] = []
    while not search_done(history, 32.0, 0.1):
        c = next_coefficient(history, 32.0, first=1.0)
        history.append(Probe(c, l0_at(c), 0.5))
        assert len(history) <= 8
    assert [p.coefficient for p in history[:4]] == [1.0, 4.0, 16.0, 64.0]  # x4 until bracketed
    assert history[4].coefficient == pytest.approx(32.0)  # then the geometric midpoint of 16 and 64
    assert abs(history[-1].l0 / 32 - 1) <= 0.1


def test_collapsed_probe_counts_as_too_sparse() -> None:
    history = [Probe(10.0, 50.0, 0.9), Probe(40.0, 48.0, 1.2)]  # the second collapsed: L0 says dense, MSE says no
    assert next_coefficient(history, 32.0, first=1.0) == pytest.approx(20.0)
    assert not search_done([Probe(40.0, 32.0, 1.2)], 32.0, 0.1)


def test_chosen_coefficient_interpolates_between_bracketing_probes() -> None:
    history = [Probe(10.0, 64.0, 0.5), Probe(40.0, 16.0, 0.5)]  # log L0 linear in log c: 32 at c = 20
    assert chosen_coefficient(history, 32.0) == pytest.approx(20.0)
    assert chosen_coefficient([Probe(10.0, 64.0, 0.5), Probe(20.0, 40.0, 0.5)], 32.0) == 20.0  # no bracket


def test_interpolate_log_l0() -> None:
    points = [(8.0, 0.4), (32.0, 0.2), (128.0, 0.1)]
    assert interpolate_log_l0(points, 16.0) == pytest.approx(0.3)
    assert interpolate_log_l0(points, 64.0) == pytest.approx(0.15)
    assert interpolate_log_l0(points, 32.0) == pytest.approx(0.2)
    assert interpolate_log_l0([(8.0, 0.4)], 16.0) == 0.4


def test_mean_interval_is_student_t() -> None:
    mean, half = mean_interval([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert half == pytest.approx(4.302652729911275 * math.sqrt(7.0) / math.sqrt(3))
    assert mean_interval([2.5]) == (2.5, None)


def test_off_target_run_moves_along_the_frontier_but_never_extrapolates() -> None:
    frontier = [{"l0": 16.0, "fvu": 0.3}, {"l0": 40.0, "fvu": 0.2}, {"l0": 64.0, "fvu": 0.1}]
    run = {"l0": 40.0, "fvu": 0.22}  # another seed, 25% off target 32
    expected = 0.22 + (0.3 + (0.2 - 0.3) * math.log(2.0) / math.log(2.5)) - 0.2
    assert _at_target(run, frontier, "fvu", 32.0, 0.1) == pytest.approx(expected)
    assert _at_target({"l0": 32.0, "fvu": 0.22}, frontier, "fvu", 32.0, 0.1) == 0.22  # exactly on target: as measured
    assert _at_target({"l0": 200.0, "fvu": 0.05}, frontier, "fvu", 8.0, 0.1) == 0.05  # frontier misses 8


def test_l0_spread_matches_numpy() -> None:
    histogram = [0, 3, 0, 5, 2, 0, 1]
    tokens = np.repeat(np.arange(len(histogram)), histogram)
    spread = l0_spread(histogram)
    assert spread["mean"] == pytest.approx(tokens.mean()) and spread["std"] == pytest.approx(tokens.std())
    assert (spread["min"], spread["max"]) == (1, 6)


def test_flattening_and_head_to_head() -> None:
    assert flattening({"heldout_curve": [{"tokens": 50, "fvu": 0.5}, {"tokens": 100, "fvu": 0.4}]}) == pytest.approx(0.2)
    assert flattening({"heldout_curve": [{"tokens": 100, "fvu": 0.4}]}) is None
    per_seed = {"hybrid": {s: {"fvu": 0.10 + 0.001 * s, "kl_div": 0.5} for s in range(3)},
                "ksparse": {s: {"fvu": 0.20, "kl_div": 0.5 + 0.1 * (s - 1)} for s in range(3)}}
    rows = {r["metric"]: r for r in head_to_head(per_seed, {"hybrid", "ksparse"}, 32.0, 0.1)}
    assert rows["fvu"]["verdict"] == "lower" and rows["fvu"]["diff"] == pytest.approx(-0.099)
    assert rows["kl_div"]["verdict"] == "not resolved" and rows["kl_div"]["relative"] == pytest.approx(0.0)
    assert head_to_head(per_seed, {"hybrid"}, 32.0, 0.1) == []  # an unmatched opponent is not compared
    for s in range(3):
        per_seed["hybrid"][s].update(heldout_fvu=0.1, heldout_l0=33.0)
        per_seed["ksparse"][s].update(heldout_fvu=0.2, heldout_l0=32.0 if s else 50.0)
    assert "heldout_fvu" not in {r["metric"] for r in head_to_head(per_seed, {"hybrid", "ksparse"}, 32.0, 0.1)}
    per_seed["ksparse"][0]["heldout_l0"] = 32.0
    assert "heldout_fvu" in {r["metric"] for r in head_to_head(per_seed, {"hybrid", "ksparse"}, 32.0, 0.1)}
