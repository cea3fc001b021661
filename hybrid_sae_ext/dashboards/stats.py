"""The streaming statistics pass: two passes over a token stream, every latent batched together.

Why two passes: the histogram bins of a latent span 0..its max, and the label of a quantile example
must be its *true* quantile among all the latent's firings; neither is known before a first pass.
Pass 1 counts, sums, keeps maxima, the top examples, a uniform sample of firings (random keys, the
smallest kept) and co-firing counts; pass 2 fills the histograms, ranks the chosen quantile examples
exactly among all firings, and collects the text and activations around every example.
Memory is bounded by the batch and by ``d_sae x examples`` (plus ``d_sae^2`` int32 for co-firing).
State is checkpointed atomically every few batches; a killed build resumes where it stopped and ends
with the same statistics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hybrid_sae_ext.dashboards.accumulate import (
    NO_EXAMPLE,
    add_cofiring,
    add_histogram,
    count_below,
    merge_top,
    rank_keys,
    ranks_from_slots,
)
from hybrid_sae_ext.dashboards.config import DashboardConfig
from hybrid_sae_ext.dashboards.source import (
    Firings,
    GateCandidates,
    SAESource,
    corpus_rows,
    encode_firings,
    hook_activations,
)
from hybrid_sae_ext.dashboards.weights import cofiring_neighbours
from hybrid_sae_ext.io import atomic_path, sha256_file
from hybrid_sae_ext.progress import progress_bar

STATE_FILE = ".stats-state.safetensors"
STATS_FILE = "stats.safetensors"
OUTPUT_ONLY = {"out", "progress", "device", "checkpoint_every", "threads", "overwrite"}


@dataclasses.dataclass
class StatsPlan:
    """What the passes run over, derived from the config and the SAE."""

    rows: int
    context: int
    skip_first: bool
    header: dict[str, Any]

    @property
    def tokens(self) -> int:
        return self.rows * (self.context - int(self.skip_first))


def make_plan(cfg: DashboardConfig, source: SAESource) -> StatsPlan:
    skip_first = cfg.skip_bos and source.prepend_bos
    per_row = source.context_size - int(skip_first)
    header = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OUTPUT_ONLY}
    header |= {"sae_weights_sha256": sha256_file(Path(cfg.sae_path) / "sae_weights.safetensors"),
               "model_name": source.model_name, "hook_name": source.hook_name, "context_size": source.context_size}
    return StatsPlan(max(1, math.ceil(cfg.tokens / per_row)), source.context_size, skip_first, header)


def _fresh_pass1(cfg: DashboardConfig, d_sae: int, hybrid: bool) -> dict[str, Tensor]:
    state = {"count": torch.zeros(d_sae, dtype=torch.long), "total": torch.zeros(d_sae, dtype=torch.float64),
             "max": torch.zeros(d_sae)}
    for prefix, r in (("top", cfg.n_top), ("sample", cfg.sample_size)):
        state |= {f"{prefix}_score": torch.full((d_sae, r), float("-inf")), f"{prefix}_value": torch.zeros(d_sae, r),
                  f"{prefix}_loc": torch.full((d_sae, r), NO_EXAMPLE, dtype=torch.long)}
    if d_sae <= cfg.max_cofiring_latents:
        state |= {"cooc": torch.zeros(d_sae, d_sae, dtype=torch.int32), "cooc_count": torch.zeros(d_sae, dtype=torch.long)}
    if hybrid:
        state |= {"candidate_count": torch.zeros(d_sae, dtype=torch.long),
                  "gate_open_count": torch.zeros(d_sae, dtype=torch.long),
                  "gate_low": torch.full((d_sae,), float("inf")), "gate_high": torch.full((d_sae,), float("-inf"))}
    return state


def _update_pass1(state: dict[str, Tensor], cfg: DashboardConfig, batch_index: int, firings: Firings,
                  location: Tensor, candidates: GateCandidates | None, n_tokens: int) -> None:
    latent, value = firings.latent, firings.value
    d_sae = state["count"].shape[0]
    state["count"] += torch.bincount(latent, minlength=d_sae)
    state["total"] += torch.bincount(latent, weights=value.double(), minlength=d_sae)
    state["max"].scatter_reduce_(0, latent, value, "amax")
    merge_top(state, "top", value, value, location, latent)
    keys = torch.rand(len(latent), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + batch_index))
    merge_top(state, "sample", -keys, value, location, latent)  # smallest random keys: a uniform sample
    if "cooc" in state and batch_index * n_tokens < cfg.cofiring_tokens:
        add_cofiring(state["cooc"], firings.token, latent, n_tokens)
        state["cooc_count"] += torch.bincount(latent, minlength=d_sae)
    if candidates is not None:
        state["candidate_count"] += torch.bincount(candidates.latent, minlength=d_sae)
        state["gate_open_count"] += torch.bincount(candidates.latent[candidates.gate > 0], minlength=d_sae)
        state["gate_low"].scatter_reduce_(0, candidates.latent, candidates.gate, "amin")
        state["gate_high"].scatter_reduce_(0, candidates.latent, candidates.gate, "amax")


def choose_quantile_examples(value: Tensor, loc: Tensor, groups: int, per_group: int) -> dict[str, Tensor]:
    """From each latent's uniform sample, pick ``per_group`` firings around each quantile (i + 0.5) / groups."""
    n = (loc >= 0).sum(1)
    order = torch.argsort(torch.where(loc >= 0, value, float("inf")), dim=1)
    sorted_value, sorted_loc = value.gather(1, order), loc.gather(1, order)
    centre = (torch.arange(groups) + 0.5) / groups
    offset = torch.arange(per_group) - (per_group - 1) // 2
    picks = (centre[None, :, None] * n[:, None, None]).floor().long() + offset
    picks = torch.minimum(picks.clamp_min(0), (n - 1).clamp_min(0)[:, None, None]).reshape(len(n), -1)
    picks = torch.cummax(picks, dim=1).values
    repeated = torch.zeros_like(picks, dtype=torch.bool)
    repeated[:, 1:] = picks[:, 1:] == picks[:, :-1]
    missing = repeated | (n == 0)[:, None]
    return {"quantile_loc": torch.where(missing, NO_EXAMPLE, sorted_loc.gather(1, picks)),
            "quantile_value": torch.where(missing, 0.0, sorted_value.gather(1, picks)),
            "quantile_group": centre.repeat_interleave(per_group).expand_as(picks).contiguous()}


def _start_pass2(state: dict[str, Tensor], cfg: DashboardConfig, hybrid: bool) -> dict[str, Tensor]:
    """Pass-1 results kept for the output, and the empty accumulators of pass 2."""
    d_sae = state["count"].shape[0]
    kept = {k: state[k] for k in ("count", "total", "max", "top_value")}
    if hybrid:
        kept |= {k: state[k] for k in ("candidate_count", "gate_open_count", "gate_low", "gate_high")}
    if "cooc" in state:
        kept |= cofiring_neighbours(state["cooc"], state["cooc_count"], cfg.n_neighbours)
    chosen = choose_quantile_examples(state["sample_value"], state["sample_loc"], cfg.quantile_groups,
                                      cfg.examples_per_group)
    kept |= chosen
    kept["example_loc"] = torch.cat([state["top_loc"], chosen["quantile_loc"]], 1)
    kept["rank_scale"] = (state["max"] * (1 + 1e-6)).double().clamp_min(1e-30)
    width = cfg.context_before + 1 + cfg.context_after
    shape = (*kept["example_loc"].shape, width)
    kept |= {"hist": torch.zeros(d_sae, cfg.histogram_bins, dtype=torch.long),
             "window_tokens": torch.full(shape, -1, dtype=torch.int32), "window_values": torch.zeros(shape)}
    valid = chosen["quantile_loc"] >= 0
    latent = torch.arange(d_sae)[:, None].expand_as(valid)
    keys, _ = rank_keys(latent[valid], chosen["quantile_value"][valid], kept["rank_scale"], d_sae)
    kept |= {"rank_keys": keys, "rank_slots": torch.zeros(len(keys), dtype=torch.long)}
    if hybrid:
        kept["gate_hist"] = torch.zeros(d_sae, cfg.histogram_bins, dtype=torch.long)
    return kept


def _fill_windows(state: dict[str, Tensor], cfg: DashboardConfig, plan: StatsPlan, first_row: int,
                  tokens: Tensor, firings: Firings) -> None:
    """Copy the tokens and this latent's activations around every example whose row is in this batch."""
    context, offset = plan.context, int(plan.skip_first)
    loc = state["example_loc"]
    row = torch.div(loc, context, rounding_mode="floor")
    here = (loc >= 0) & (row >= first_row) & (row < first_row + tokens.shape[0])
    latent, slot = here.nonzero(as_tuple=True)
    if len(latent) == 0:
        return
    position = (loc[latent, slot] % context)[:, None] + torch.arange(-cfg.context_before, cfg.context_after + 1)
    inside = (position >= 0) & (position < context)
    position = position.clamp(0, context - 1)
    local_row = (row[latent, slot] - first_row)[:, None].expand_as(position)
    window_tokens = torch.where(inside, tokens[local_row, position], -1)
    d_sae = state["count"].shape[0]
    firing_keys = firings.token * d_sae + firings.latent
    query = (local_row * (context - offset) + position - offset) * d_sae + latent[:, None]
    values = torch.zeros(position.shape)
    if len(firing_keys):
        found = torch.searchsorted(firing_keys, query).clamp(max=len(firing_keys) - 1)
        hit = inside & (position >= offset) & (firing_keys[found] == query)
        values = torch.where(hit, firings.value[found], 0.0)
    state["window_tokens"][latent, slot] = window_tokens.int()
    state["window_values"][latent, slot] = values


def _update_pass2(state: dict[str, Tensor], cfg: DashboardConfig, plan: StatsPlan, first_row: int, tokens: Tensor,
                  firings: Firings, candidates: GateCandidates | None) -> None:
    latent, value = firings.latent, firings.value
    add_histogram(state["hist"], latent, value, torch.zeros_like(state["max"]), state["max"])
    state["rank_slots"] += count_below(state["rank_keys"], latent, value, state["rank_scale"])
    if candidates is not None:
        add_histogram(state["gate_hist"], candidates.latent, candidates.gate, state["gate_low"], state["gate_high"])
    _fill_windows(state, cfg, plan, first_row, tokens, firings)


def _finish(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Exact quantile (fraction of the latent's firings strictly below) of every quantile example."""
    valid = state["quantile_loc"] >= 0
    d_sae = state["count"].shape[0]
    latent = torch.arange(d_sae)[:, None].expand_as(valid)
    keys, positions = rank_keys(latent[valid], state["quantile_value"][valid], state["rank_scale"], d_sae)
    below = ranks_from_slots(state["rank_slots"], keys, positions)
    quantile = torch.full(valid.shape, -1.0, dtype=torch.float64)
    quantile[valid] = below.double() / state["count"][latent[valid]].double()
    out = {k: v for k, v in state.items() if k not in {"rank_keys", "rank_slots", "rank_scale"}}
    out["quantile_true"] = quantile
    out["mean"] = torch.where(state["count"] > 0, state["total"] / state["count"].clamp_min(1), 0.0)
    return out


def _save_state(path: Path, state: dict[str, Tensor], progress: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"progress": json.dumps(progress)})


def _load_state(path: Path, header: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """The checkpointed state if it belongs to this build; a state of another build is an error."""
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as handle:
        progress = json.loads(handle.metadata()["progress"])
        if progress["header"] != header:
            diff = {k: (progress["header"].get(k), header.get(k)) for k in header if progress["header"].get(k) != header.get(k)}
            raise ValueError(f"{path}: an unfinished build with another config is here (existing vs requested: {diff}); "
                             "choose another --out or delete that file")
        return {name: handle.get_tensor(name) for name in handle.keys()}, progress


def compute_statistics(cfg: DashboardConfig, source: SAESource, stop_after_batches: int | None = None) -> dict[str, Tensor]:
    """Run (or resume) both passes; returns the per-latent statistics and writes them to ``out/stats.safetensors``.

    ``stop_after_batches`` stops after that many batches of this call, leaving a resumable state (an
    interruption at a known point, for tests); it returns an empty dict then.
    """
    out = Path(cfg.out)
    plan = make_plan(cfg, source)
    state_path = out / STATE_FILE
    loaded = _load_state(state_path, plan.header)
    state, progress = loaded or (_fresh_pass1(cfg, source.d_sae, source.is_hybrid),
                                 {"header": plan.header, "pass": 1, "rows_done": 0})
    budget = itertools.count() if stop_after_batches is None else iter(range(stop_after_batches))
    with progress_bar(total=2 * plan.rows, initial=(progress["pass"] - 1) * plan.rows + progress["rows_done"],
                      unit="row", desc="dashboard statistics", enabled=cfg.progress) as bar:
        while progress["pass"] <= 2:
            rows = itertools.islice(corpus_rows(source, cfg.dataset, cfg.split), progress["rows_done"], plan.rows)
            while progress["rows_done"] < plan.rows:
                if next(budget, None) is None:
                    _save_state(state_path, state, progress)
                    return {}
                first_row = progress["rows_done"]
                tokens = _next_batch(rows, min(cfg.batch_rows, plan.rows - first_row), first_row, cfg)
                _run_batch(state, progress["pass"], cfg, source, plan, first_row, tokens)
                progress["rows_done"] += tokens.shape[0]
                bar.update(tokens.shape[0])
                if (first_row // cfg.batch_rows + 1) % cfg.checkpoint_every == 0:
                    _save_state(state_path, state, progress)
            if progress["pass"] == 1:
                state = _start_pass2(state, cfg, source.is_hybrid)
            progress = {**progress, "pass": progress["pass"] + 1, "rows_done": 0}
            _save_state(state_path, state, progress)
    stats = _finish(state)
    with atomic_path(out / STATS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp),
                  metadata={"header": json.dumps(plan.header), "tokens": str(plan.tokens)})
    state_path.unlink(missing_ok=True)
    return stats


def _next_batch(rows: Iterator[Tensor], n_rows: int, first_row: int, cfg: DashboardConfig) -> Tensor:
    batch = list(itertools.islice(rows, n_rows))
    if len(batch) < n_rows:
        raise ValueError(f"the dataset {cfg.dataset!r} ({cfg.split} split) has only {first_row + len(batch)} rows of "
                         "the SAE's context size; ask for fewer --tokens")
    return torch.stack(batch)


def _run_batch(state: dict[str, Tensor], pass_number: int, cfg: DashboardConfig, source: SAESource,
               plan: StatsPlan, first_row: int, tokens: Tensor) -> None:
    """Encode one batch of rows (without the BOS position when it is excluded) and fold it into ``state``."""
    acts = hook_activations(source, tokens)
    offset = int(plan.skip_first)
    if offset:
        acts = acts.view(tokens.shape[0], plan.context, -1)[:, offset:].reshape(-1, acts.shape[-1])
    firings, candidates = encode_firings(source, acts)
    per_row = plan.context - offset
    row = torch.div(firings.token, per_row, rounding_mode="floor")
    location = (first_row + row) * plan.context + firings.token % per_row + offset
    if pass_number == 1:
        _update_pass1(state, cfg, first_row // cfg.batch_rows, firings, location, candidates, acts.shape[0])
    else:
        _update_pass2(state, cfg, plan, first_row, tokens, firings, candidates)
