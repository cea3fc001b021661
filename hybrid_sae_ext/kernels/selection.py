"""Top-k selection: which latents win, scored in a fast format, with exact values for the winners.

Why: the selection is the only part of the encoder that needs all ``d_sae`` scores, and it does not
need them exact. With ``selection_dtype="bfloat16"`` the full score matrix is one bf16 GEMM (2-4x
faster than fp32 on CPUs with avx512_bf16/AMX and on tensor cores); the top ``k + margin``
candidates are then rescored exactly (gathered dot products, ``(k + margin) x d_in`` per token,
accumulated in fp32) and the final top-k is taken on the exact scores. Values and gradients stay
exact; only near-ties at the k-th place can differ from an exact fp32 selection.

The scores are computed and selected from in row blocks of ``SELECTION_BLOCK_SCORES`` (on CPU each block
is still in cache when its top-k is taken; on CUDA few large blocks keep the launches few and the top-k
kernel busy; no ``batch x d_sae`` matrix is held beyond one block), with the exact
halving top-k of ``topk``. AuxK's dead latents are scored by their own product over the dead columns
only, so its selection costs in proportion to the number of dead latents.
"""

from __future__ import annotations

import time
from typing import Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hybrid_sae_ext.kernels.primitives import gathered_dot
from hybrid_sae_ext.kernels.topk import sorted_topk_indices

SelectionDtype = Literal["auto", "float32", "bfloat16"]
SELECTION_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
AUTO_MIN_SPEEDUP = 1.3
"""``auto`` picks bf16 only when its selection is at least this much faster (robust to timing noise)."""
AUTO_MIN_FLOPS = 2**28
"""Below this encoder GEMM size ``auto`` is exact fp32 without timing: the time is noise there, and a
choice that could flip between runs would make small runs irreproducible."""

SELECTION_BLOCK_SCORES = {"cpu": 2**23, "cuda": 2**26}
"""Scores per row block by device type: big enough that GEMM and top-k calls stay efficient, small enough
to bound the extra memory (measured: docs/performance.md#measurements-behind-the-defaults)."""

_auto_choice: dict[tuple[str, int, int, int, int], str] = {}


class Selection(NamedTuple):
    """The chosen latents (sorted per row) and their exact pre-activations ``x @ W_enc``."""

    indices: Int[Tensor, "n k"]
    values: Float[Tensor, "n k"]


def candidate_margin(k: int, d_sae: int) -> int:
    """Extra candidates rescored exactly when the scores are low precision."""
    return min(max(8, k // 2), d_sae - k)


def _exact_dtype(x: Tensor) -> torch.dtype:
    """The dtype of exact scores: the input's own if it is at least fp32, else fp32."""
    return torch.promote_types(x.dtype, torch.float32)


def select_topk(
    scores: Float[Tensor, "n d_sae"],
    selection_bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None = None,
    k_aux: int = 0,
) -> tuple[Tensor, Tensor | None]:
    """Indices of the top-k of given ``scores = pre + selection_bias`` and, if asked, of the top-``k_aux``
    of ``pre`` over ``aux_mask`` (for callers that already hold the dense scores)."""
    with torch.no_grad():
        indices = sorted_topk_indices(scores, k)
        aux_indices = None
        if aux_mask is not None and k_aux > 0:
            masked = (scores - selection_bias).masked_fill_(~aux_mask, float("-inf"))
            aux_indices = sorted_topk_indices(masked, k_aux)
    return indices, aux_indices


def select(
    x: Float[Tensor, "n d_in"],
    W_enc: Float[Tensor, "d_in d_sae"],
    bias: Float[Tensor, " d_sae"],
    k: int,
    aux_mask: Tensor | None = None,
    k_aux: int = 0,
    selection_dtype: str = "float32",
) -> tuple[Selection, Selection | None]:
    """Top-k of ``x @ W_enc + bias`` and (with ``aux_mask``, ``k_aux > 0``) top-``k_aux`` of ``x @ W_enc``
    over the masked latents. Values are exact gathered dot products in ``x.dtype`` (never
    ``(pre + bias) - bias``); no gradient flows here."""
    if selection_dtype not in SELECTION_DTYPES:
        raise ValueError(f"selection_dtype={selection_dtype!r} is not one of {SELECTION_DTYPES}")
    if selection_dtype == "auto":
        selection_dtype = resolve_auto(x, W_enc, bias, k)
    with torch.no_grad():
        bias = bias.detach()
        W_enc = W_enc.detach()
        exact = selection_dtype == "float32"
        n_candidates = k if exact else k + candidate_margin(k, W_enc.shape[1])
        dead = aux_mask.nonzero().squeeze(1) if aux_mask is not None and k_aux > 0 else None
        if dead is not None and k_aux > dead.numel():
            raise ValueError(f"k_aux={k_aux} exceeds the {dead.numel()} latents in aux_mask")
        candidates, dead_picks = _blocked_topk(
            x, W_enc, bias, n_candidates, dead, k_aux, _exact_dtype(x) if exact else torch.bfloat16
        )
        if exact:
            main = Selection(candidates, gathered_dot(x, W_enc, candidates).to(x.dtype))
        else:
            main = _rescored_topk(x, W_enc, bias, candidates, k)
        aux = None
        if dead_picks is not None:
            aux = Selection(dead_picks, gathered_dot(x, W_enc, dead_picks).to(x.dtype))
    return main, aux


def _blocked_topk(
    x: Tensor, W_enc: Tensor, bias: Tensor, k: int, dead: Tensor | None, k_aux: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    """Sorted indices of the top-k of ``x @ W_enc + bias`` and (with ``dead``) of the top-``k_aux`` of
    ``x @ W_enc[:, dead]``, all scored in ``dtype``, one row block at a time."""
    W_scores, bias_scores = W_enc.to(dtype), bias.to(dtype)  # .to keeps W_enc's latent-major layout
    # index_select on the transpose keeps that layout for the gathered columns, taken from the copy in
    # ``dtype`` already made (no fp32 copy of the dead columns first)
    W_dead = None if dead is None else W_scores.t().index_select(0, dead).t()
    block_scores = SELECTION_BLOCK_SCORES.get(x.device.type, SELECTION_BLOCK_SCORES["cpu"])
    block_rows = max(1, block_scores // W_enc.shape[1])
    main: list[Tensor] = []
    aux: list[Tensor] = []
    for x_block in x.split(block_rows):
        x_block = x_block.to(dtype)
        main.append(sorted_topk_indices(torch.addmm(bias_scores, x_block, W_scores), k))
        if W_dead is not None:
            aux.append(sorted_topk_indices(x_block @ W_dead, k_aux))
    # ``dead`` is ascending, so it maps ascending positions among the dead to ascending latents
    return torch.cat(main), None if dead is None else dead[torch.cat(aux)]


def _rescored_topk(x: Tensor, W_enc: Tensor, bias: Tensor, candidates: Tensor, k: int) -> Selection:
    """The exact top-k among low-precision ``candidates`` (sorted indices, ``k + margin`` per row)."""
    pre = gathered_dot(x, W_enc, candidates)
    pick = sorted_topk_indices(pre + bias.to(pre.dtype)[candidates], k)
    return Selection(candidates.gather(1, pick), pre.gather(1, pick).to(x.dtype))


def resolve_auto(x: Tensor, W_enc: Tensor, bias: Tensor, k: int) -> str:
    """``"bfloat16"`` where a one-time timing of both selections at this shape shows it clearly
    faster (>= ``AUTO_MIN_SPEEDUP``), else ``"float32"``. Cached per device and shape."""
    key = (str(x.device), x.shape[0], x.shape[1], W_enc.shape[1], k)
    if 2 * x.shape[0] * x.shape[1] * W_enc.shape[1] < AUTO_MIN_FLOPS:
        return "float32"
    if key not in _auto_choice:
        times = {name: _best_time(x, W_enc, bias, k, name) for name in ("float32", "bfloat16")}
        faster = times["float32"] >= AUTO_MIN_SPEEDUP * times["bfloat16"]
        _auto_choice[key] = "bfloat16" if faster else "float32"
    return _auto_choice[key]


def _best_time(x: Tensor, W_enc: Tensor, bias: Tensor, k: int, selection_dtype: str, reps: int = 3) -> float:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    best = float("inf")
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        select(x, W_enc, bias, k, selection_dtype=selection_dtype)
        sync()
        best = min(best, time.perf_counter() - start)
    return best
