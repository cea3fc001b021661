"""Exact top-k indices of wide score rows, faster than ``torch.topk`` on CPU and on CUDA.

Why: ``torch.topk`` (a per-row partial sort on CPU, a radix select on CUDA) was the largest single cost
of a training step on both (measured: docs/performance.md#measurements-behind-the-defaults). The methods
here rest on one fact: split a row into disjoint groups; a group whose maximum is below the k-th largest
score holds none of the k largest, so the k largest scores lie in the k groups with the largest maxima.

* ``halving`` (CPU): groups are the pairs ``(j, j + width / 2)``; one vectorised ``maximum`` halves the
  row; recursing until the row is short and then taking, level by level, the k best of the ``2k``
  members of the k best pairs gives the exact top-k with small ``topk`` calls only.
* ``native`` (CPU, where the C++ kernels of ``native.py`` build): the same bound in one pass per row
  (strided groups, the k-th largest group maximum as a threshold, a scan of the groups that reach
  it), faster than ``halving``; it returns the indices ascending.
* ``grouped`` (CUDA): group ``j`` is the scores ``j + i * width / GROUP`` (``halving`` applied
  ``log2(GROUP)`` times at once); one ``amax`` over the strided view (each thread reduces one group,
  neighbouring threads read neighbouring scores), a top-k of the ``width / GROUP`` group maxima, and a
  top-k of the ``k * GROUP`` members of the best groups, instead of the radix select's passes over every
  score. (Strided, not consecutive, groups: torch reduces a 16-wide inner dimension at a fraction of the
  memory bandwidth.)
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.native import native_kernels

TopKMethod = Literal["auto", "native", "halving", "grouped", "torch"]
TOPK_METHODS: tuple[str, ...] = ("auto", "native", "halving", "grouped", "torch")
NATIVE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
HALVING_MIN_WIDTH = 8
"""Rows narrower than this many times ``k`` go to ``torch.topk`` directly (halving gains nothing there)."""
GROUP = 16
"""Scores per group of the ``grouped`` method."""
GROUPED_MIN_WIDTH = 4 * GROUP
"""``grouped`` needs rows at least this many times ``k`` wide (else the members' top-k is not small)."""
NATIVE_GROUPS_PER_K = 4
"""``native`` splits a row into the power of two >= this many times ``k`` groups: fewer make the member scan
longer, more the selection among group maxima (measured: docs/performance.md#measurements-behind-the-defaults)."""


def topk_indices(scores: Float[Tensor, "n width"], k: int, method: TopKMethod = "auto") -> Int[Tensor, "n k"]:
    """Indices (in no particular order) of the ``k`` largest scores of each row.

    The same set as ``scores.topk(k).indices`` except, where several scores tie at the k-th place, in
    which of them is taken; the chosen values are always exactly the k largest (NaN counts as largest,
    as in ``torch.topk``). ``auto``: native on CPU (halving where the kernel is not built or the dtype
    is not one of ``NATIVE_DTYPES``), grouped elsewhere; rows too narrow for halving or grouped (or of
    an odd width / a width not a multiple of ``GROUP``) go to ``torch.topk``.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [rows, width], got shape {tuple(scores.shape)}")
    width = scores.shape[1]
    if not 0 <= k <= width:
        raise ValueError(f"k must be in [0, width={width}], got k={k}")
    if method not in TOPK_METHODS:
        raise ValueError(f"method={method!r} is not one of {TOPK_METHODS}")
    if method == "auto":
        method = "native" if scores.device.type == "cpu" else "grouped"
    if method == "native":
        if k > 0 and _native_applies(scores):
            return _native_sorted_topk(scores, k)
        method = "halving"  # where the kernel is not built or does not apply
    if method == "halving" and width % 2 == 0 and width >= HALVING_MIN_WIDTH * max(k, 1):
        half = width // 2
        best_pairs = topk_indices(torch.maximum(scores[:, :half], scores[:, half:]), k, "halving")
        return _best_members(scores, torch.cat([best_pairs, best_pairs + half], dim=1), k)
    if method == "grouped" and width % GROUP == 0 and width >= GROUPED_MIN_WIDTH * max(k, 1):
        n_groups = width // GROUP
        group_max = scores.reshape(scores.shape[0], GROUP, n_groups).amax(1)
        best_groups = group_max.topk(k, dim=-1, sorted=False).indices
        offsets = torch.arange(0, width, n_groups, device=scores.device)
        return _best_members(scores, (best_groups.unsqueeze(-1) + offsets).flatten(1), k)
    return scores.topk(k, dim=-1, sorted=False).indices


def _best_members(scores: Tensor, members: Tensor, k: int) -> Tensor:
    """The ``k`` of ``members`` (indices into each row of ``scores``) with the largest scores."""
    return members.gather(1, scores.gather(1, members).topk(k, dim=-1, sorted=False).indices)


def sorted_topk_indices(scores: Float[Tensor, "n width"], k: int, method: TopKMethod = "auto") -> Int[Tensor, "n k"]:
    """``topk_indices`` with each row's indices ascending (the native kernel returns them so)."""
    indices = topk_indices(scores, k, method)
    if method in ("auto", "native") and k > 0 and _native_applies(scores):
        return indices
    return indices.sort(dim=-1).values


def _native_applies(scores: Tensor) -> bool:
    return scores.device.type == "cpu" and scores.dtype in NATIVE_DTYPES and native_kernels() is not None


def _native_sorted_topk(scores: Tensor, k: int) -> Tensor:
    groups = 1 << max(0, NATIVE_GROUPS_PER_K * k - 1).bit_length()
    if 2 * groups > scores.shape[1]:
        groups = 0  # too narrow to gain from groups: select among all scores
    kernels = native_kernels()
    assert kernels is not None
    return kernels.sorted_topk_indices(scores.contiguous(), k, groups)  # type: ignore[no-any-return]
