"""How a learning-rate sweep picks each architecture's rate: the lowest held-out FVU after moving every run to
the target L0 at exchange rates that never favour a run for being off it. Shared by the sweep that writes
``lr_sweep.json`` and the comparison that reads one or more of them (``--lr_from``)."""

from __future__ import annotations

from typing import Any

ABOVE_TARGET_EXPONENT = 2.0
"""An above-target run's FVU is scaled by (L0 / target)^2: at least as steep as the frontiers measured
from L0 32 to 64 in the committed comparison (log-log slopes 1.1-2.2), so more L0 never buys a rate."""
BELOW_TARGET_EXPONENT = 0.5
"""A below-target run's FVU is scaled by (L0 / target)^0.5: flatter than those frontiers from L0 16 to 32
(slopes 0.57-0.81), so a run is never credited more than its lower L0 could have cost it."""


def l0_adjusted_fvu(fvu: float, l0: float, target_l0: float) -> float:
    """``fvu`` moved to the target L0 at exchange rates that never favour a run for being off the target."""
    exponent = ABOVE_TARGET_EXPONENT if l0 > target_l0 else BELOW_TARGET_EXPONENT
    return fvu * (l0 / target_l0) ** exponent


def best_rate(runs: list[dict[str, Any]], target_l0: float) -> float:
    """The rate of the lowest L0-adjusted held-out FVU (JumpReLU's and the adaptive hybrid's L0 move with
    the rate, and more L0 buys FVU)."""
    return min(runs, key=lambda r: l0_adjusted_fvu(r["fvu"], r["l0"], target_l0))["lr"]
