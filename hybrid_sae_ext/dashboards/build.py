"""Build a dashboard folder for every latent of a saved SAE: statistics, weight statistics, site, exports.

Why one entry point: ``hybrid-sae dashboards`` stays a thin parser, and tests call ``build_dashboards``
directly. Every check that can fail runs before the first forward pass; every file is written atomically;
the folder is locked for the whole build.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from hybrid_sae_ext.dashboards.config import DashboardConfig
from hybrid_sae_ext.dashboards.decode import token_bytes
from hybrid_sae_ext.dashboards.exports import write_exports
from hybrid_sae_ext.dashboards.records import (
    FORMAT,
    META_FILE,
    VOCAB_BYTES_FILE,
    VOCAB_FILE,
    WEIGHT_STATS_FILE,
    DashboardData,
)
from hybrid_sae_ext.dashboards.render import write_site
from hybrid_sae_ext.dashboards.source import SAESource, load_source, read_sae_metadata
from hybrid_sae_ext.dashboards.stats import STATE_FILE, compute_statistics, make_plan
from hybrid_sae_ext.dashboards.weights import decoder_neighbours, logit_effects
from hybrid_sae_ext.folders import LOCK_FILE, check_output_dir, folder_lock
from hybrid_sae_ext.io import atomic_path, write_json_atomic


@dataclasses.dataclass
class BuildReport:
    """Where the dashboards went and what they cost."""

    out: Path
    tokens: int
    d_sae: int
    seconds: dict[str, float]


def vocabulary(source: SAESource) -> list[str]:
    """The text of every token id, decoded one at a time (what a reader sees for that token)."""
    tokenizer = source.model.tokenizer
    return [tokenizer.decode([i]) for i in range(source.model.cfg.d_vocab)]


def write_weight_stats(cfg: DashboardConfig, source: SAESource) -> None:
    W_dec = source.sae.W_dec.detach().float().cpu()
    stats = logit_effects(W_dec, source.model.W_U.detach().cpu(), cfg.n_logits, cfg.histogram_bins)
    stats |= decoder_neighbours(W_dec, cfg.n_neighbours)
    with atomic_path(Path(cfg.out) / WEIGHT_STATS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp))


def check_out_is_free(cfg: DashboardConfig, out: Path) -> None:
    """Refuse an --out holding anything but this builder's lock and unfinished state, unless --overwrite.

    Why: the build replaces site/ (with any file a user put in it), the vocabulary files and exports/; an --out that
    already holds a build or other files is a mistake more often than a wish to replace them.
    """
    own = {LOCK_FILE, STATE_FILE}
    found = sorted(p.name for p in out.iterdir() if p.name not in own) if out.is_dir() else []
    if found and not cfg.overwrite:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ValueError(f"--out={str(out)!r} already holds files ({shown}); pass --overwrite to replace the "
                         "dashboards there, or choose another folder")


def build_dashboards(cfg: DashboardConfig, stop_after_batches: int | None = None) -> BuildReport | None:
    """Build (or resume building) the dashboards of ``cfg.sae_path`` into ``cfg.out``.

    Returns None when ``stop_after_batches`` interrupted the statistics pass (its state is kept to resume).
    """
    read_sae_metadata(cfg.sae_path)
    out = check_output_dir(cfg.out, "--out")
    seconds: dict[str, float] = {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_out_is_free(cfg, out)
    with folder_lock(out, "dashboard folder"):
        check_out_is_free(cfg, out)  # again, now that no other builder can add files
        start = time.perf_counter()
        source = load_source(cfg.sae_path, cfg.device)
        plan = make_plan(cfg, source)
        seconds["load"] = time.perf_counter() - start
        if not compute_statistics(cfg, source, stop_after_batches):
            return None
        seconds["statistics"] = time.perf_counter() - start - seconds["load"]
        mark = time.perf_counter()
        write_weight_stats(cfg, source)
        write_json_atomic(out / VOCAB_FILE, vocabulary(source))
        write_json_atomic(out / VOCAB_BYTES_FILE, token_bytes(source.model.tokenizer, range(source.model.cfg.d_vocab)))
        write_json_atomic(out / META_FILE, {
            "format": FORMAT, "sae_path": str(Path(cfg.sae_path).resolve()), "model_name": source.model_name,
            "hook_name": source.hook_name, "architecture": source.sae.cfg.architecture(), "d_sae": source.d_sae,
            "d_in": int(source.sae.cfg.d_in), "model_layers": int(source.model.cfg.n_layers),
            "model_d_mlp": int(source.model.cfg.d_mlp or 0), "tokens": plan.tokens, "rows": plan.rows,
            "context_size": source.context_size, "bos_excluded": plan.skip_first, "config": dataclasses.asdict(cfg),
            "cofiring": source.d_sae <= cfg.max_cofiring_latents,
        })
        seconds["weights"] = time.perf_counter() - mark
        mark = time.perf_counter()
        data = DashboardData(out)
        write_site(data, out / "site", progress=cfg.progress)
        seconds["site"] = time.perf_counter() - mark
        mark = time.perf_counter()
        write_exports(data, out / "exports", progress=cfg.progress)
        seconds["exports"] = time.perf_counter() - mark
    return BuildReport(out, plan.tokens, source.d_sae, seconds)
