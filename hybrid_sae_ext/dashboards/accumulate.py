"""Per-latent reductions over a flat list of firings, for every latent at once.

Why: a dashboard needs, per latent, counts, maxima, histograms, the top examples and a uniform sample.
Written as sorts, bincounts and scatters over ``(latent, value)`` pairs, each costs O(firings) per batch
whatever the number of latents, and no Python loop ever runs per latent.
"""

from __future__ import annotations

import torch
from torch import Tensor

NO_EXAMPLE = -1


def segment_top(latent: Tensor, score: Tensor, r: int, d_sae: int) -> Tensor:
    """``[d_sae, r]`` indices into the firing list: each latent's ``r`` highest-scoring firings, best first.

    Missing entries (a latent with fewer than ``r`` firings) are ``NO_EXAMPLE``. One sort of the key
    ``latent + rank-of-score / n`` groups firings by latent, best first.
    """
    by_score = torch.argsort(score, descending=True)
    rank = torch.empty_like(by_score)
    rank[by_score] = torch.arange(len(score))
    order = torch.argsort(latent * len(score) + rank)
    grouped = latent[order]
    counts = torch.bincount(grouped, minlength=d_sae)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(len(order)) - starts[grouped]
    keep = position < r
    out = torch.full((d_sae, r), NO_EXAMPLE, dtype=torch.long)
    out[grouped[keep], position[keep]] = order[keep]
    return out


def merge_top(state: dict[str, Tensor], prefix: str, score: Tensor, value: Tensor, location: Tensor,
              latent: Tensor) -> None:
    """Fold this batch's firings into ``state``'s running per-latent top-r by ``score`` (in place).

    Firings that cannot beat their latent's current r-th best are dropped first, so after a few batches
    almost nothing is sorted.
    """
    best_score, best_value, best_loc = (state[f"{prefix}_{name}"] for name in ("score", "value", "loc"))
    contender = score > best_score[:, -1][latent]
    score, value, location, latent = score[contender], value[contender], location[contender], latent[contender]
    if len(latent) == 0:
        return
    picked = segment_top(latent, score, best_score.shape[1], best_score.shape[0])
    valid = picked >= 0
    safe = picked.clamp_min(0)
    all_score = torch.cat([best_score, torch.where(valid, score[safe], float("-inf"))], 1)
    all_value = torch.cat([best_value, torch.where(valid, value[safe], 0.0)], 1)
    all_loc = torch.cat([best_loc, torch.where(valid, location[safe], NO_EXAMPLE)], 1)
    top = torch.topk(all_score, best_score.shape[1], dim=1).indices
    best_score.copy_(all_score.gather(1, top))
    best_value.copy_(all_value.gather(1, top))
    best_loc.copy_(all_loc.gather(1, top))


def bin_index(value: Tensor, low: Tensor, high: Tensor, bins: int) -> Tensor:
    """Equal-width bin of each value in ``[low, high]`` (per entry), the top edge in the last bin."""
    width = (high - low).clamp_min(1e-12)
    return ((value - low) / width * bins).floor().long().clamp_(0, bins - 1)


def add_histogram(hist: Tensor, latent: Tensor, value: Tensor, low: Tensor, high: Tensor) -> None:
    """Count each ``value`` into its latent's equal-width bins ``[low, high]`` (``hist``: ``[d_sae, bins]``)."""
    bins = hist.shape[1]
    flat = latent * bins + bin_index(value, low[latent], high[latent], bins)
    hist.view(-1).index_add_(0, flat, torch.ones_like(flat))


def add_cofiring(cooc: Tensor, token: Tensor, latent: Tensor, n_tokens: int, max_pairs: int = 1 << 22) -> None:
    """Add 1 to ``cooc[i, j]`` (i < j) for every token on which latents i and j both fire."""
    d_sae = cooc.shape[0]
    per_token = torch.bincount(token, minlength=n_tokens)
    width = int(per_token.max()) if len(token) else 0
    if width < 2:
        return
    starts = torch.cumsum(per_token, 0) - per_token
    padded = torch.full((n_tokens, width), -1, dtype=torch.long)
    padded[token, torch.arange(len(token)) - starts[token]] = latent
    step = max(1, max_pairs // (width * width))
    for begin in range(0, n_tokens, step):  # bounded memory: at most max_pairs pairs at a time
        block = padded[begin : begin + step]
        first, second = block.unsqueeze(2), block.unsqueeze(1)
        pair = (first >= 0) & (first < second)
        ids = (first * d_sae + second)[pair]
        cooc.view(-1).index_add_(0, ids, torch.ones_like(ids, dtype=cooc.dtype))


def count_below(keys: Tensor, latent: Tensor, value: Tensor, scale: Tensor) -> Tensor:
    """For the sorted per-latent ``keys`` (latent + value/scale, a sentinel ending each latent), count the
    firings strictly below each key's value: ``out[j]`` adds to the ranks of keys ``>= j`` of that latent."""
    firing_keys = latent.double() + value.double() / scale[latent]
    slot = torch.searchsorted(keys, firing_keys, right=True)
    return torch.bincount(slot, minlength=len(keys))


def rank_keys(latent: Tensor, value: Tensor, scale: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """Sorted keys ``latent + value/scale`` with one sentinel per latent after its values, and the
    position of each input in that order (``scale`` slightly above each latent's max keeps values < 1)."""
    sentinel = torch.arange(d_sae, dtype=torch.float64) + (1 - 1e-9)
    keys = torch.cat([latent.double() + value.double() / scale[latent], sentinel])
    sorted_keys, order = torch.sort(keys)
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    return sorted_keys, position[: len(latent)]


def ranks_from_slots(slot_counts: Tensor, keys: Tensor, positions: Tensor) -> Tensor:
    """Turn the accumulated ``count_below`` slots into, per queried key, the firings strictly below it."""
    cumulative = torch.cumsum(slot_counts, 0)
    latent = keys.floor().long()
    first_slot = torch.searchsorted(keys, latent.double())  # first key of each latent
    before = torch.where(first_slot > 0, cumulative[(first_slot - 1).clamp_min(0)], 0)
    return (cumulative - before)[positions]
