"""Exact top-k indices of wide score rows, about 2x faster than ``torch.topk`` on CPU.

Why: ``torch.topk`` on CPU costs ~2.6 ns per score (a per-row partial sort of (value, index) pairs),
which made it the largest single cost of a training step at ``d_sae = 8192``. Halving avoids most of
it: split each row into the pairs ``(j, j + width / 2)``; a pair whose larger member is below the
k-th largest score holds none of the k largest, so the k largest scores lie in the k pairs with the
largest maxima. One vectorised ``maximum`` halves the row; recursing until the row is short and then
taking, level by level, the k best of the ``2k`` members of the k best pairs gives the exact top-k
with small ``topk`` calls only.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

HALVING_MIN_WIDTH = 8
"""Rows narrower than this many times ``k`` go to ``torch.topk`` directly (halving gains nothing there)."""


def topk_indices(scores: Float[Tensor, "n width"], k: int) -> Int[Tensor, "n k"]:
    """Indices (in no particular order) of the ``k`` largest scores of each row.

    The same set as ``scores.topk(k).indices`` except, where several scores tie at the k-th place, in
    which of them is taken; the chosen values are always exactly the k largest (NaN counts as largest,
    as in ``torch.topk``). Halving runs on CPU only; elsewhere this is ``torch.topk``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [rows, width], got shape {tuple(scores.shape)}")
    width = scores.shape[1]
    if not 0 <= k <= width:
        raise ValueError(f"k must be in [0, width={width}], got k={k}")
    if scores.device.type != "cpu" or width % 2 or width < HALVING_MIN_WIDTH * max(k, 1):
        return scores.topk(k, dim=-1, sorted=False).indices
    half = width // 2
    best_pairs = topk_indices(torch.maximum(scores[:, :half], scores[:, half:]), k)
    members = torch.cat([best_pairs, best_pairs + half], dim=1)
    return members.gather(1, scores.gather(1, members).topk(k, dim=-1, sorted=False).indices)
