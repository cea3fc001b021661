"""Per-latent statistics of the weights alone: logit effects (W_dec @ W_U) and decoder-cosine neighbours.

Why: what a latent writes to the residual stream promotes some output tokens and suppresses others;
which latents write in nearly the same direction shows redundancy. Both are computed in blocks of
latents so memory stays at ``block x vocab`` however wide the SAE or the vocabulary is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hybrid_sae_ext.dashboards.accumulate import bin_index

LATENT_BLOCK = 1024


def row_histograms(rows: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Equal-width histogram of each row between its own min and max: counts ``[n, bins]``, low, high."""
    low, high = rows.min(1).values, rows.max(1).values
    index = bin_index(rows, low.unsqueeze(1), high.unsqueeze(1), bins)
    counts = torch.zeros(rows.shape[0], bins, dtype=torch.long).scatter_add_(1, index, torch.ones_like(index))
    return counts, low, high


@torch.inference_mode()
def logit_effects(W_dec: Tensor, W_U: Tensor, n: int, bins: int) -> dict[str, Tensor]:
    """Top ``n`` promoted and suppressed token ids and values of ``W_dec @ W_U`` per latent, and its histogram."""
    out: dict[str, list[Tensor]] = {name: [] for name in
                                    ("logit_pos_ids", "logit_pos_values", "logit_neg_ids", "logit_neg_values",
                                     "logit_hist", "logit_low", "logit_high")}
    n = min(n, W_U.shape[1])
    for start in range(0, W_dec.shape[0], LATENT_BLOCK):
        effects = W_dec[start : start + LATENT_BLOCK].float() @ W_U.float()
        pos, neg = torch.topk(effects, n, dim=1), torch.topk(effects, n, dim=1, largest=False)
        counts, low, high = row_histograms(effects, bins)
        for name, value in (("logit_pos_ids", pos.indices), ("logit_pos_values", pos.values),
                            ("logit_neg_ids", neg.indices), ("logit_neg_values", neg.values),
                            ("logit_hist", counts), ("logit_low", low), ("logit_high", high)):
            out[name].append(value)
    return {name: torch.cat(parts) for name, parts in out.items()}


@torch.inference_mode()
def decoder_neighbours(W_dec: Tensor, n: int) -> dict[str, Tensor]:
    """The ``n`` other latents with the highest cosine between decoder rows, per latent."""
    unit = torch.nn.functional.normalize(W_dec.float(), dim=1)
    n = min(n, unit.shape[0] - 1)
    ids, values = [], []
    for start in range(0, unit.shape[0], LATENT_BLOCK):
        cosine = unit[start : start + LATENT_BLOCK] @ unit.T
        rows = torch.arange(start, start + cosine.shape[0])
        cosine[torch.arange(cosine.shape[0]), rows] = float("-inf")  # not its own neighbour
        top = torch.topk(cosine, n, dim=1)
        ids.append(top.indices)
        values.append(top.values)
    return {"decoder_neighbour_ids": torch.cat(ids), "decoder_neighbour_cosines": torch.cat(values)}


def cofiring_neighbours(cooc_upper: Tensor, counts: Tensor, n: int) -> dict[str, Tensor]:
    """Per latent, the ``n`` latents it fires with most, by Jaccard index, from the upper-triangle counts."""
    d_sae = counts.shape[0]
    n = min(n, d_sae - 1)
    ids, jaccard, together = [], [], []
    for start in range(0, d_sae, LATENT_BLOCK):
        stop = min(start + LATENT_BLOCK, d_sae)
        both = (cooc_upper[start:stop] + cooc_upper[:, start:stop].T).double()  # symmetric rows
        union = counts[start:stop, None].double() + counts[None, :].double() - both
        score = torch.where(union > 0, both / union.clamp_min(1), 0.0)
        score[torch.arange(stop - start), torch.arange(start, stop)] = -1.0
        top = torch.topk(score, n, dim=1)
        ids.append(top.indices)
        jaccard.append(top.values.float())
        together.append(both.gather(1, top.indices).long())
    return {"cofiring_ids": torch.cat(ids), "cofiring_jaccard": torch.cat(jaccard), "cofiring_counts": torch.cat(together)}
