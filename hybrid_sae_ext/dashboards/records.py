"""Per-latent records: the statistics of one latent as plain JSON, read by the site, the exports and the server.

Why one place: the page a person reads, the SAEDashboard/Neuronpedia files and the live demo must show the
same numbers; they all go through ``DashboardData.record``.
"""

from __future__ import annotations

import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from hybrid_sae_ext.dashboards.accumulate import NO_EXAMPLE
from hybrid_sae_ext.dashboards.decode import texts_from_bytes

META_FILE = "dashboard.json"
VOCAB_FILE = "vocab.json"
VOCAB_BYTES_FILE = "vocab_bytes.json"
"""Each token's raw bytes as hex: example windows decode from them (a character split over tokens stays whole)."""
WEIGHT_STATS_FILE = "weight_stats.safetensors"
FORMAT = "hybrid_sae_ext.dashboards/1"


def _rounded(values: torch.Tensor, digits: int = 4) -> list[float]:
    return [round(v, digits) for v in values.tolist()]


class DashboardData:
    """The statistics of a dashboard folder (``stats.safetensors``, weight stats, metadata, vocabulary)."""

    def __init__(self, folder: Path | str) -> None:
        from hybrid_sae_ext.dashboards.stats import STATS_FILE

        self.folder = Path(folder)
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise ValueError(f"{meta_path}: no dashboard here; build one with hybrid-sae dashboards")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}, expected {FORMAT!r}")
        self.vocab: list[str] = json.loads((self.folder / VOCAB_FILE).read_text())
        bytes_path = self.folder / VOCAB_BYTES_FILE  # absent in folders built before it existed
        self.vocab_bytes: list[str] | None = json.loads(bytes_path.read_text()) if bytes_path.is_file() else None
        self.stats = load_file(str(self.folder / STATS_FILE)) | load_file(str(self.folder / WEIGHT_STATS_FILE))

    @property
    def d_sae(self) -> int:
        return int(self.meta["d_sae"])

    @cached_property
    def density(self) -> torch.Tensor:
        return self.stats["count"].double() / max(int(self.meta["tokens"]), 1)

    def _examples(self, latent: int) -> list[dict[str, Any] | None]:
        """Every example slot of one latent (top examples first, then quantile examples); None where empty."""
        before = int(self.meta["config"]["context_before"])
        locations = self.stats["example_loc"][latent].tolist()
        ids, values = self.stats["window_tokens"][latent].tolist(), self.stats["window_values"][latent].tolist()
        out: list[dict[str, Any] | None] = []
        for location, row_ids, row_values in zip(locations, ids, values):
            if location == NO_EXAMPLE:
                out.append(None)
                continue
            kept = [j for j, t in enumerate(row_ids) if t >= 0]
            out.append({**self._window_tokens([row_ids[j] for j in kept]),
                        "values": [round(row_values[j], 4) for j in kept],
                        "center": before - sum(1 for t in row_ids[:before] if t < 0), "location": location})
        return out

    def _window_tokens(self, ids: list[int]) -> dict[str, list[str]]:
        """An example window's token texts (decoded across tokens where the bytes are known) and their bytes."""
        if self.vocab_bytes is None:
            return {"tokens": [self.vocab[i] for i in ids]}
        hexes = [self.vocab_bytes[i] for i in ids]
        return {"tokens": texts_from_bytes([bytes.fromhex(h) for h in hexes]), "token_bytes": hexes}

    @cached_property
    def _top_token_ids(self) -> list[list[int]]:
        """Per latent, the distinct tokens on which it fires most strongly (centres of its top examples)."""
        n_top, before = int(self.meta["config"]["n_top"]), int(self.meta["config"]["context_before"])
        centres = self.stats["window_tokens"][:, :n_top, before].tolist()
        valid = (self.stats["example_loc"][:, :n_top] != NO_EXAMPLE).tolist()
        return [list(dict.fromkeys(t for t, ok in zip(row, oks) if ok)) for row, oks in zip(centres, valid)]

    def top_token_ids(self, latent: int, n: int = 3) -> list[int]:
        return self._top_token_ids[latent][:n]

    def record(self, latent: int) -> dict[str, Any]:
        """Everything known about one latent, JSON-ready."""
        if not 0 <= latent < self.d_sae:
            raise ValueError(f"latent {latent} is out of range; this SAE has latents 0..{self.d_sae - 1}")
        s, cfg = self.stats, self.meta["config"]
        n_top = int(cfg["n_top"])
        examples = self._examples(latent)
        top = []
        for e, activation in zip(examples[:n_top], s["top_value"][latent].tolist()):
            if e is not None:
                top.append(e | {"activation": round(activation, 4)})
        quantiles = []
        for e, group, quantile, activation in zip(examples[n_top:], s["quantile_group"][latent].tolist(),
                                                  s["quantile_true"][latent].tolist(), s["quantile_value"][latent].tolist()):
            if e is not None:
                quantiles.append(e | {"group": round(group, 4), "quantile": round(quantile, 4), "activation": round(activation, 4)})
        count, density = int(s["count"][latent]), float(self.density[latent])
        record: dict[str, Any] = {
            "index": latent, "count": count, "density": density, "max": round(float(s["max"][latent]), 4),
            "mean": round(float(s["mean"][latent]), 4), "dead": count == 0,
            "dense": density > float(cfg["dense_density"]),
            "top_tokens": [self.vocab[t] for t in self.top_token_ids(latent)],
            "histogram": {"low": 0.0, "high": round(float(s["max"][latent]), 4), "counts": s["hist"][latent].tolist()},
            "top_examples": top, "quantile_examples": quantiles,
            "logits": {
                "positive": [{"token": self.vocab[i], "value": round(v, 4)}
                             for i, v in zip(s["logit_pos_ids"][latent].tolist(), s["logit_pos_values"][latent].tolist())],
                "negative": [{"token": self.vocab[i], "value": round(v, 4)}
                             for i, v in zip(s["logit_neg_ids"][latent].tolist(), s["logit_neg_values"][latent].tolist())],
                "histogram": {"low": round(float(s["logit_low"][latent]), 4), "high": round(float(s["logit_high"][latent]), 4),
                              "counts": s["logit_hist"][latent].tolist()},
            },
            "decoder_neighbours": [{"latent": i, "cosine": round(c, 4)} for i, c in
                                   zip(s["decoder_neighbour_ids"][latent].tolist(),
                                       s["decoder_neighbour_cosines"][latent].tolist())],
            "cofiring": [{"latent": i, "jaccard": round(j, 4), "count": n} for i, j, n in
                         zip(s["cofiring_ids"][latent].tolist(), s["cofiring_jaccard"][latent].tolist(),
                             s["cofiring_counts"][latent].tolist()) if n > 0] if "cofiring_ids" in s else None,
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
            "top": [[self.vocab[t] for t in self.top_token_ids(i)] for i in range(self.d_sae)],
        }

    def density_histogram(self, bins_per_decade: int = 5) -> dict[str, Any]:
        """Firing densities of all latents in log-spaced bins from the smallest possible density (1 / tokens) to 1.

        Why log bins: densities span several decades, and the shape on a log axis (a bulk, a dense tail, a spike
        of rare latents) is what tells a healthy SAE from a broken one. Dead latents have no place on a log axis
        and are counted apart.
        """
        lowest = math.floor(math.log10(1 / max(int(self.meta["tokens"]), 1)))
        edges = [10 ** (lowest + i / bins_per_decade) for i in range(-lowest * bins_per_decade + 1)]
        alive = self.density[self.density > 0]
        bins = torch.bucketize(alive, torch.tensor(edges, dtype=alive.dtype), right=True).clamp(1, len(edges) - 1) - 1
        return {"edges": edges, "counts": torch.bincount(bins, minlength=len(edges) - 1).tolist(),
                "dead": self.d_sae - len(alive)}
