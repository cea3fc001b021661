"""Matching sparsity across architectures, and the statistics of a table cell.

Why: comparing SAEs at different L0 says nothing about their architectures. Architectures whose
sparsity is set by a loss coefficient get it searched (bisection on the log-coefficient, short
probes) until the L0 lands on the target; where a full run still misses, its metrics are moved to
the target along its architecture's frontier (piecewise linear in log-L0). Every table cell is a
mean over seeds with a Student-t 95% interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

SEARCH_STEP = 4.0
"""Factor the coefficient moves by while only one side of the target is known."""


@dataclass
class Probe:
    """One short training run of the coefficient search."""

    coefficient: float
    l0: float
    """Mean latents per token over the probe's last steps."""
    normalized_mse: float
    """Over the same steps; >= 1 means the SAE collapsed (no better than predicting the mean)."""


def landed(l0: float, target: float, tolerance: float) -> bool:
    return abs(l0 / target - 1.0) <= tolerance


def _too_sparse(probe: Probe, target: float) -> bool:
    """L0 below target, or collapsed: the coefficient must go down."""
    return probe.l0 < target or probe.normalized_mse >= 1.0


def next_coefficient(history: list[Probe], target: float, first: float) -> float:
    """Bisect in log-coefficient between the largest too-dense and the smallest too-sparse probe.

    L0 falls as the coefficient grows; until both sides are known the coefficient moves by
    ``SEARCH_STEP``.
    """
    if not history:
        return first
    dense = [p.coefficient for p in history if not _too_sparse(p, target)]
    sparse = [p.coefficient for p in history if _too_sparse(p, target)]
    if dense and sparse:
        return math.sqrt(max(dense) * min(sparse))
    return max(dense) * SEARCH_STEP if dense else min(sparse) / SEARCH_STEP


def search_done(history: list[Probe], target: float, tolerance: float) -> bool:
    return any(landed(p.l0, target, tolerance) and p.normalized_mse < 1.0 for p in history)


def chosen_coefficient(history: list[Probe], target: float) -> float:
    """The probe closest to the target in log-L0, or, when the target lies between two probes,
    the coefficient interpolated between them in log-coefficient vs log-L0."""
    usable = [p for p in history if p.normalized_mse < 1.0 and p.l0 > 0] or history
    closest = min(usable, key=lambda p: abs(math.log(max(p.l0, 1e-9) / target)))
    above = [p for p in usable if p.l0 >= target]
    below = [p for p in usable if p.l0 < target]
    if not (above and below) or landed(closest.l0, target, 0.0):
        return closest.coefficient
    hi, lo = min(above, key=lambda p: p.l0), max(below, key=lambda p: p.l0)
    return math.exp(interpolate_log_l0([(hi.l0, math.log(hi.coefficient)), (lo.l0, math.log(lo.coefficient))], target))


def interpolate_log_l0(points: list[tuple[float, float]], target: float) -> float:
    """The value at L0 = ``target`` on the piecewise-linear curve through ``(l0, value)`` in log-L0
    (extended linearly past the end points; constant when there is a single point)."""
    ordered = sorted((math.log(max(l0, 1e-9)), value) for l0, value in points)
    if len(ordered) == 1:
        return ordered[0][1]
    x = math.log(target)
    index = next((i for i in range(1, len(ordered) - 1) if x < ordered[i][0]), len(ordered) - 1)
    (x0, y0), (x1, y1) = ordered[index - 1], ordered[index]
    if x1 == x0:
        return (y0 + y1) / 2
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t interval (None with a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
