"""Power-law fits with an irreducible term, and bootstrap confidence intervals.

Why: scaling laws are only as credible as their fits. We fit ``L(N) = a * N^-alpha + c`` and the
joint ``L(N, k) = a * N^-alpha * k^-beta + c`` by least squares in log-parameter space (which keeps
``a`` and ``c`` positive), report R^2, and resample the points (bootstrap) for confidence intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import least_squares

Array = NDArray[np.float64]


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted law: parameter estimates, their bootstrap intervals, and the goodness of fit."""

    form: str
    """The fitted formula, e.g. ``"L = a * N^-alpha + c"``."""
    params: dict[str, float]
    """Point estimates by name."""
    ci_low: dict[str, float]
    """Lower end of the bootstrap interval per parameter."""
    ci_high: dict[str, float]
    """Upper end of the bootstrap interval per parameter."""
    r_squared: float
    """Coefficient of determination of the point fit on the data."""
    n_points: int
    confidence: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _law_n(theta: Array, n: Array) -> Array:
    log_a, alpha, log_c = theta
    return np.exp(log_a) * n ** (-alpha) + np.exp(log_c)


def _law_nk(theta: Array, n: Array, k: Array) -> Array:
    log_a, alpha, beta, log_c = theta
    return np.exp(log_a) * n ** (-alpha) * k ** (-beta) + np.exp(log_c)


def _fit(model: Callable[[Array], Array], y: Array, theta0: Array) -> Array:
    result = least_squares(lambda t: np.log(model(t)) - np.log(y), theta0, method="lm")
    return np.asarray(result.x, dtype=np.float64)


def _r_squared(y: Array, y_hat: Array) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / total if total > 0 else float("nan")


def _check(y: Sequence[float], *xs: Sequence[float], n_params: int) -> None:
    arrays = [np.asarray(a, dtype=np.float64) for a in (y, *xs)]
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"inputs must have equal lengths, got {[a.shape for a in arrays]}")
    if arrays[0].size <= n_params:
        raise ValueError(f"need more than {n_params} points to fit {n_params} parameters, got {arrays[0].size}")
    if any((a <= 0).any() or not np.isfinite(a).all() for a in arrays):
        raise ValueError("power-law fits need finite, strictly positive losses, widths and k")


def _bootstrap(
    fit_on: Callable[[NDArray[np.int64]], Array], n_points: int, n_boot: int, confidence: float, seed: int
) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        sample = rng.integers(0, n_points, n_points)
        try:
            draws.append(fit_on(sample))
        except (ValueError, RuntimeError, FloatingPointError):
            continue  # a degenerate resample (e.g. one distinct x) has no fit; skip it
    if not draws:
        raise ValueError("no bootstrap resample could be fitted")
    tail = (1 - confidence) / 2 * 100
    return np.percentile(draws, tail, axis=0), np.percentile(draws, 100 - tail, axis=0)


def _natural(theta: Array, names: Sequence[str]) -> dict[str, float]:
    """Parameters in natural units (``a`` and ``c`` back from log space)."""
    return {n: float(np.exp(v) if n in ("a", "c") else v) for n, v in zip(names, theta)}


def _package(form: str, names: Sequence[str], theta: Array, lo: Array, hi: Array, y: Array,
             y_hat: Array, confidence: float) -> PowerLawFit:
    return PowerLawFit(
        form=form,
        params=_natural(theta, names),
        ci_low=_natural(lo, names),
        ci_high=_natural(hi, names),
        r_squared=_r_squared(y, y_hat),
        n_points=int(y.size),
        confidence=confidence,
    )


def fit_power_law(
    n: Sequence[float], loss: Sequence[float], *, n_boot: int = 500, confidence: float = 0.95, seed: int = 0
) -> PowerLawFit:
    """Fit ``loss = a * n^-alpha + c`` (``n``: width, k or tokens)."""
    _check(loss, n, n_params=3)
    x, y = np.asarray(n, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    theta0 = np.array([np.log(max(y.max() - y.min(), 1e-6) * x.min() ** 0.5), 0.5, np.log(max(y.min() * 0.5, 1e-9))])
    theta = _fit(lambda t: _law_n(t, x), y, theta0)
    lo, hi = _bootstrap(lambda s: _fit(lambda t: _law_n(t, x[s]), y[s], theta), y.size, n_boot, confidence, seed)
    return _package("L = a * N^-alpha + c", ("a", "alpha", "c"), theta, lo, hi, y, _law_n(theta, x), confidence)


def fit_joint_power_law(
    n: Sequence[float], k: Sequence[float], loss: Sequence[float], *, n_boot: int = 500,
    confidence: float = 0.95, seed: int = 0,
) -> PowerLawFit:
    """Fit ``loss = a * n^-alpha * k^-beta + c`` jointly over widths ``n`` and sparsities ``k``."""
    _check(loss, n, k, n_params=4)
    xn, xk = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    theta0 = np.array([np.log(max(y.max(), 1e-6)), 0.3, 0.3, np.log(max(y.min() * 0.5, 1e-9))])
    theta = _fit(lambda t: _law_nk(t, xn, xk), y, theta0)
    lo, hi = _bootstrap(
        lambda s: _fit(lambda t: _law_nk(t, xn[s], xk[s]), y[s], theta), y.size, n_boot, confidence, seed
    )
    return _package("L = a * N^-alpha * k^-beta + c", ("a", "alpha", "beta", "c"), theta, lo, hi, y,
                    _law_nk(theta, xn, xk), confidence)


def predict(fit: PowerLawFit, n: Array, k: Array | None = None) -> Array:
    """Evaluate a fitted law (``k`` only for the joint form)."""
    p = fit.params
    core = p["a"] * np.asarray(n, dtype=np.float64) ** (-p["alpha"])
    if "beta" in p:
        if k is None:
            raise ValueError("the joint law needs k")
        core = core * np.asarray(k, dtype=np.float64) ** (-p["beta"])
    return core + p["c"]
