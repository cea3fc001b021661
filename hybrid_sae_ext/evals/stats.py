"""Streaming accumulators for the splice evaluation, exact over any number of batches.

Why: evaluations run over many batches, and averaging per-batch means would weight batches
instead of tokens (and would make explained variance wrong, since the variance needs the mean
over *all* tokens). Each accumulator keeps float64 sums and counts on the CPU and turns them
into metrics once at the end, so the result is independent of how tokens were batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

DENSITY_LOG10_EDGES: tuple[float, ...] = tuple(-8.0 + 0.25 * i for i in range(33))
"""Fixed bin edges (log10 of firing frequency, 1e-8 .. 1) so histograms of different runs compare."""


@dataclass
class Histogram:
    """Counts per bin; ``counts[i]`` covers ``[bin_edges[i], bin_edges[i + 1])`` (last bin closed)."""

    bin_edges: list[float]
    """Bin boundaries, ``len(counts) + 1`` of them, increasing."""
    counts: list[int]
    """Number of items per bin."""


@dataclass
class MeanAccumulator:
    """Mean of a per-token quantity over the kept tokens of every batch."""

    total: float = 0.0
    """Sum of the values added so far."""
    count: int = 0
    """Number of values added so far."""

    def add(self, values: Tensor) -> None:
        self.total += values.detach().double().sum().item()
        self.count += values.numel()

    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")


@dataclass
class ReconstructionAccumulator:
    """Sums for MSE, normalized MSE, explained variance and cosine similarity of ``x_hat`` vs ``x``."""

    sum_sq_error: float = 0.0
    """Sum over tokens of ``||x - x_hat||^2``."""
    sum_sq_norm: float = 0.0
    """Sum over tokens of ``||x||^2``."""
    sum_x: Tensor | None = None
    """Sum over tokens of ``x`` (float64, CPU), for the mean in the variance."""
    cosine: MeanAccumulator = field(default_factory=MeanAccumulator)
    """Per-token cosine similarity of ``x`` and ``x_hat``."""

    def add(self, x: Tensor, x_hat: Tensor) -> None:
        """Add tokens; both ``[n_tokens, d_in]``."""
        x, x_hat = x.double(), x_hat.double()
        self.sum_sq_error += (x - x_hat).pow(2).sum().item()
        self.sum_sq_norm += x.pow(2).sum().item()
        batch_sum = x.sum(0).cpu()
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        # eps keeps a zero reconstruction at cosine 0 (SAELens' formula gives NaN there).
        self.cosine.add(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-8))

    @property
    def n_tokens(self) -> int:
        return self.cosine.count

    def mse(self) -> float:
        """Mean over tokens of ``||x - x_hat||^2`` (sum over dimensions), as SAELens' ``mse``."""
        return self.sum_sq_error / self.n_tokens

    def normalized_mse(self) -> float:
        """``sum ||x - x_hat||^2 / sum ||x||^2``: the error relative to reconstructing with zeros."""
        return self.sum_sq_error / self.sum_sq_norm if self.sum_sq_norm > 0 else float("nan")

    def explained_variance(self) -> float:
        """``1 - E||x - x_hat||^2 / Var(x)``, Var summed over dimensions; as SAELens' ``explained_variance``."""
        assert self.sum_x is not None, "no tokens were added"
        n = self.n_tokens
        total_variance = self.sum_sq_norm / n - (self.sum_x / n).pow(2).sum().item()
        if total_variance < 1e-10:  # constant activations: same convention as SAELens
            return 1.0 if self.mse() < 1e-10 else 0.0
        return 1.0 - self.mse() / total_variance


@dataclass
class LatentAccumulator:
    """How often each latent fires and how many latents fire per token."""

    fire_counts: Tensor
    """``[d_sae]`` int64: tokens on which each latent was non-zero."""
    l0_counts: Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.long))
    """``l0_counts[j]``: tokens on which exactly ``j`` latents fired."""

    @classmethod
    def for_latents(cls, d_sae: int) -> LatentAccumulator:
        return cls(fire_counts=torch.zeros(d_sae, dtype=torch.long))

    def add(self, codes: Tensor) -> None:
        """Add tokens' codes ``[n_tokens, d_sae]``; non-zero (either sign) counts as firing, as in SAELens."""
        active = codes != 0
        self.fire_counts += active.sum(0).cpu()
        per_token = torch.bincount(active.sum(-1).cpu(), minlength=self.l0_counts.numel())
        if per_token.numel() > self.l0_counts.numel():
            per_token[: self.l0_counts.numel()] += self.l0_counts
            self.l0_counts = per_token
        else:
            self.l0_counts += per_token

    @property
    def n_tokens(self) -> int:
        return int(self.l0_counts.sum())

    def l0_mean(self) -> float:
        values = torch.arange(self.l0_counts.numel(), dtype=torch.float64)
        return float((values * self.l0_counts).sum() / self.n_tokens)

    def density(self) -> Tensor:
        """Fraction of tokens on which each latent fired, ``[d_sae]`` float64."""
        return self.fire_counts.double() / self.n_tokens

    def density_histogram(self) -> Histogram:
        """Histogram of log10 density of the latents that fired at least once (dead ones are counted apart)."""
        density = self.density()
        log_density = density[density > 0].log10().clamp_min(DENSITY_LOG10_EDGES[0])
        counts = torch.histogram(log_density, bins=torch.tensor(DENSITY_LOG10_EDGES, dtype=torch.float64))[0]
        return Histogram(bin_edges=list(DENSITY_LOG10_EDGES), counts=[int(c) for c in counts])
