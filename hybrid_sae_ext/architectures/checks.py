"""Checks every training SAE config gets at construction, written once.

Why: SAELens' own configs check nothing (``k > d_sae`` would fail only at the first training step, after the
activations were captured), so the project's builder runs these on every registered config; the hybrid's
config runs them itself, so SAELens' runner gets them too.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def validate_sizes(d_in: int, d_sae: int, k: int | None = None) -> None:
    """``d_in, d_sae >= 1`` and, for a k-sparse SAE, ``1 <= k <= d_sae``."""
    if d_in < 1:
        raise ValueError(f"d_in must be >= 1, got d_in={d_in}")
    if d_sae < 1:
        raise ValueError(f"d_sae must be >= 1, got d_sae={d_sae}")
    if k is not None and not 1 <= k <= d_sae:
        raise ValueError(f"k must satisfy 1 <= k <= d_sae={d_sae}, got k={k}")


def validate_coefficients(cfg: Any) -> None:
    """Every loss weight (a field named ``*_coefficient``) is ``>= 0``."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name.endswith("_coefficient") and isinstance(value, (int, float)) and value < 0:
            raise ValueError(f"{field.name} must be >= 0, got {value}")


def validate_training_config(cfg: Any) -> None:
    """The checks above on a training config dataclass."""
    validate_sizes(cfg.d_in, cfg.d_sae, getattr(cfg, "k", None))
    validate_coefficients(cfg)
