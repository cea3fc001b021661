"""Per-latent records: the statistics of one latent as plain JSON, read by the site, the exports and the server.

Why one place: the page a person reads, the SAEDashboard/Neuronpedia files and the live demo must show the
same numbers; they all go through ``DashboardData.record``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from hybrid_sae_ext.dashboards.accumulate import NO_EXAMPLE

META_FILE = "dashboard.json"
VOCAB_FILE = "vocab.json"
WEIGHT_STATS_FILE = "weight_stats.safetensors"
FORMAT = "hybrid_sae_ext.dashboards/1"


def _rounded(values: torch.Tensor, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in values]


class DashboardData:
    """The statistics of a dashboard folder (``stats.safetensors``, weight stats, metadata, vocabulary)."""

    def __init__(self, folder: Path | str) -> None:
        from hybrid_sae_ext.dashboards.stats import STATS_FILE

        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise ValueError(f"{meta_path}: no dashboard here; build one with scripts/build_dashboards.py")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.vocab: list[str] = json.loads((self.folder / VOCAB_FILE).read_text())
        self.stats = load_file(str(self.folder / STATS_FILE)) | load_file(str(self.folder / WEIGHT_STATS_FILE))

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @cached_property
    def density(self) -> torch.Tensor:
        return self.stats["count"].double() / max(int(self.meta["tokens"]), 1)

    def _example(self, latent: int, slot: int) -> dict[str, Any] | None:
        ids = self.stats["window_tokens"][latent, slot]
        if int(self.stats["example_loc"][latent, slot]) == NO_EXAMPLE:
            return None
        keep = ids >= 0
        before = int(self.meta["config"]["context_before"])
        return {
            "tokens": [self.vocab[int(t)] for t in ids[keep]],
            "values": _rounded(self.stats["window_values"][latent, slot][keep]),
            "center": before - int((~keep[:before]).sum()),
            "location": int(self.stats["example_loc"][latent, slot]),
        }

    def top_token_ids(self, latent: int, n: int = 3) -> list[int]:
        """The distinct tokens on which the latent fires most strongly (centres of its top examples)."""
        before = int(self.meta["config"]["context_before"])
        seen: list[int] = []
        for slot in range(int(self.meta["config"]["n_top"])):
            if int(self.stats["example_loc"][latent, slot]) != NO_EXAMPLE:
                token = int(self.stats["window_tokens"][latent, slot, before])
                if token not in seen:
                    seen.append(token)
        return seen[:n]

    def record(self, latent: int) -> dict[str, Any]:
        """Everything known about one latent, JSON-ready."""
        if not 0 <= latent < self.d_sae:
            raise ValueError(f"latent {latent} is out of range; this SAE has latents 0..{self.d_sae - 1}")
        s, cfg = self.stats, self.meta["config"]
        n_top = int(cfg["n_top"])
        top = [e for slot in range(n_top) if (e := self._example(latent, slot))]
        for e, slot in zip(top, range(n_top)):
            e["activation"] = round(float(s["top_value"][latent, slot]), 4)
        quantiles = []
        for j in range(s["quantile_loc"].shape[1]):
            if (e := self._example(latent, n_top + j)) is not None:
                e |= {"group": round(float(s["quantile_group"][latent, j]), 4),
                      "quantile": round(float(s["quantile_true"][latent, j]), 4),
                      "activation": round(float(s["quantile_value"][latent, j]), 4)}
                quantiles.append(e)
        count, density = int(s["count"][latent]), float(self.density[latent])
        record: dict[str, Any] = {
            "index": latent, "count": count, "density": density, "max": round(float(s["max"][latent]), 4),
            "mean": round(float(s["mean"][latent]), 4), "dead": count == 0,
            "dense": density > float(cfg["dense_density"]),
            "top_tokens": [self.vocab[t] for t in self.top_token_ids(latent)],
            "histogram": {"low": 0.0, "high": round(float(s["max"][latent]), 4), "counts": s["hist"][latent].tolist()},
            "top_examples": top, "quantile_examples": quantiles,
            "logits": {
                "positive": [{"token": self.vocab[int(i)], "value": round(float(v), 4)}
                             for i, v in zip(s["logit_pos_ids"][latent], s["logit_pos_values"][latent])],
                "negative": [{"token": self.vocab[int(i)], "value": round(float(v), 4)}
                             for i, v in zip(s["logit_neg_ids"][latent], s["logit_neg_values"][latent])],
                "histogram": {"low": round(float(s["logit_low"][latent]), 4), "high": round(float(s["logit_high"][latent]), 4),
                              "counts": s["logit_hist"][latent].tolist()},
            },
            "decoder_neighbours": [{"latent": int(i), "cosine": round(float(c), 4)} for i, c in
                                   zip(s["decoder_neighbour_ids"][latent], s["decoder_neighbour_cosines"][latent])],
            "cofiring": [{"latent": int(i), "jaccard": round(float(j), 4), "count": int(n)} for i, j, n in
                         zip(s["cofiring_ids"][latent], s["cofiring_jaccard"][latent], s["cofiring_counts"][latent])
                         if n > 0] if "cofiring_ids" in s else None,
            "hybrid": None,
        }
        if "candidate_count" in s:
            candidates, opened = int(s["candidate_count"][latent]), int(s["gate_open_count"][latent])
            record["hybrid"] = {
                "candidate_count": candidates, "gate_open_count": opened,
                "open_given_candidate": opened / candidates if candidates else 0.0,
                "gate_histogram": {"low": round(float(s["gate_low"][latent]), 4) if candidates else 0.0,
                                   "high": round(float(s["gate_high"][latent]), 4) if candidates else 0.0,
                                   "counts": s["gate_hist"][latent].tolist()},
            }
        return record

    def index_columns(self) -> dict[str, list[Any]]:
        """The index table as columns (compact: one list per field, not one object per latent)."""
        s = self.stats
        return {
            "density": [float(f"{d:.3g}") for d in self.density.tolist()],
            "max": _rounded(s["max"], 3), "mean": _rounded(s["mean"], 3),
            "top": ["".join(f"[{self.vocab[t]}]" for t in self.top_token_ids(i)) for i in range(self.d_sae)],
        }
