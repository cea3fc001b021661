"""Scaling-law sweep: SAEs over widths x k, each evaluated at several token budgets of one run.

Each SAE is built as the comparison builds its variant (``variants.build_variant_sae``: same overrides,
encoder init and seeding), so a sweep's laws and the comparison's table describe the same SAEs.
Why this shape: the cost of a scaling study is training, so every SAE of the grid trains in one
``MultiTrainer`` pass (each batch read once for all of them), and the token axis comes from
evaluating each run at checkpoints T1 < T2 < ... instead of retraining per budget. Losses are
held-out FVU, measured with the SAE's own forward on activations of the corpus' validation split,
which no SAE trains on. Fits use ``experiments.scaling``; ``sweep_report`` writes tables and figures.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simple_parsing
import torch
from sae_lens import registry
from sae_lens.saes.sae import TrainingSAE
from torch import Tensor

from hybrid_sae_ext.activations import CaptureConfig, capture_activations, open_cache, read_manifest
from hybrid_sae_ext.architectures.registry import register_architectures, resolve_architecture
from hybrid_sae_ext.evals.stats import LatentAccumulator, ReconstructionAccumulator
from hybrid_sae_ext.experiments.scaling import PowerLawFit, fit_joint_power_law, fit_power_law
from hybrid_sae_ext.experiments.sweep_report import write_report
from hybrid_sae_ext.experiments.variants import VARIANTS, ComparisonVariant, build_variant_sae, run_config, settings_at
from hybrid_sae_ext.measure import device_name, versions
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import TensorActivationSource
from hybrid_sae_ext.training.multi import BroadcastSource, MultiTrainer, SingleHookSource
from hybrid_sae_ext.training.trainer import Trainer

logger = logging.getLogger(__name__)

_GRIDS: dict[bool, dict[str, Any]] = {
    # debug: minutes on 2 CPU cores; full: one epoch of the embedded corpus (~544k tokens), for a GPU.
    True: {"widths": [256, 512, 1024, 2048], "ks": [8, 16, 32],
           "token_checkpoints": [12_288, 24_576, 49_152, 98_304, 196_608], "heldout_tokens": 8_192},
    False: {"widths": [512, 1024, 2048, 4096, 8192], "ks": [8, 16, 32, 64],
            "token_checkpoints": [32_768, 65_536, 131_072, 262_144, 524_288], "heldout_tokens": 24_576},
}
_EVAL_ROWS = 4096  # held-out rows per forward: bounds the dense [rows, d_sae] codes in memory


@dataclass
class SweepConfig:
    """A scaling sweep: what to train, on which activations, and where the results go."""

    out: str = ""
    """Output folder; empty: ``results/scaling-<name>``, or ``results/scaling-<UTC timestamp>`` without a name."""
    name: str = ""
    """Names the default output folder."""
    debug: bool = False
    """Use the small grid (minutes on a CPU) for every grid field left unset."""
    model: str = TINY_LM_NAME
    """Model to capture from (the embedded default, a saved folder, or a TransformerLens name)."""
    layer: int = 1
    """Block whose ``hook_site`` is captured."""
    hook_site: str = "hook_resid_pre"
    """Hook inside the block: the SAEs read ``blocks.<layer>.<hook_site>``."""
    dataset: str = "embedded"
    """Text to capture: train split for training, validation split for held-out evaluation."""
    cache_dir: str = ""
    """Activation caches (reused across sweeps); empty: ``cache/activations/<model>-<dataset>-<hook>`` (git-ignored)."""
    architecture: str = "hybrid-batch-refine-cap1.25"
    """A comparison variant set by k or target_l0 (hybrid-batch-refine-cap1.25: ``architecture="hybrid"`` at its
    defaults, k the mean L0; hybrid-refine: the refined fixed-k hybrid; hybrid: the unrefined fixed-k hybrid;
    hybrid-adaptive, ksparse, ksparse-matched, batchtopk, jumprelu...), built as the comparison builds it; or a
    SAELens architecture with a k (topk...), its defaults."""
    widths: list[int] = simple_parsing.field(default_factory=list, alias="--d_sae")
    """SAE widths (latents, d_sae); empty: the debug or full grid."""
    ks: list[int] = simple_parsing.field(default_factory=list, alias="--k")
    """k values (latents per token; the target L0 of target_l0 variants); empty: the debug or full grid."""
    token_checkpoints: list[int] = field(default_factory=list)
    """Tokens after which every SAE is evaluated (increasing, multiples of batch_size); the last ends the run."""
    heldout_tokens: int = 0
    """Held-out activations (validation split) for evaluation; 0: the debug or full grid."""
    batch_size: int = simple_parsing.field(default=1024, alias="--batch_tokens")
    """Tokens (activation rows) per optimizer step, shared by all SAEs."""
    lr: float = 2e-3
    """Adam learning rate, constant after warmup (so checkpoints are points on one schedule)."""
    lr_warmup_steps: int = 10
    """Linear warmup steps."""
    n_boot: int = 500
    """Bootstrap resamples per fit."""
    confidence: float = 0.95
    """Bootstrap interval coverage."""
    device: str = "cpu"
    """Device for capture, training and evaluation."""
    seed: int = 0
    """Seeds SAE initialisation, data order and the bootstrap."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        for key, value in _GRIDS[self.debug].items():
            if not getattr(self, key):
                setattr(self, key, value)
        self.out = self.out or f"results/scaling-{self.name or time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        source = f"{Path(self.model).name}-{Path(self.dataset).name}-{self.hook}"
        self.cache_dir = self.cache_dir or f"cache/activations/{source}"
        widths, ks, budgets = self.widths, self.ks, self.token_checkpoints
        if len(set(widths)) < 4 or len(set(ks)) < 2 or len(set(widths)) < len(widths) or len(set(ks)) < len(ks):
            raise ValueError(f"the N and (N, k) fits need >= 4 distinct widths and >= 2 distinct k, got {widths}, {ks}")
        if len(budgets) < 4 or budgets != sorted(set(budgets)) or any(t % self.batch_size for t in budgets):
            raise ValueError(f"token_checkpoints must be >= 4 increasing multiples of batch_size={self.batch_size} "
                             f"(the L(T) fit has 3 parameters), got {budgets}")
        variant = self.variant  # refuses architectures without a k or target_l0 before the grid checks
        caps = [settings_at(variant, k).get("k", k) for k in ks]
        if min(ks) < 1 or max(caps) > min(widths):
            cap = "" if variant.k_cap_factor is None else f" (its cap k = {variant.k_cap_factor:g} x target too)"
            raise ValueError(f"every k must satisfy 1 <= k <= min(widths)={min(widths)}{cap}, got {ks}")

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.{self.hook_site}"

    @property
    def variant(self) -> ComparisonVariant:
        return sweep_variant(self.architecture)


def sweepable_architectures() -> list[str]:
    """Names a sweep accepts: comparison variants whose L0 is set by k or target_l0, then SAELens
    architectures with a k that are not already one of those."""
    register_architectures()
    variants = [name for name, variant in VARIANTS.items() if not variant.searched]
    with_k = [name for name, (_, cfg_cls) in registry.SAE_TRAINING_CLASS_REGISTRY.items()
              if "k" in {f.name for f in dataclasses.fields(cfg_cls)} and name not in variants]
    return variants + with_k


def sweep_variant(name: str) -> ComparisonVariant:
    """The variant a sweep trains for ``name``: the comparison's, or a plain SAELens architecture with a k."""
    allowed = sweepable_architectures()
    if name not in allowed:
        raise ValueError(f"architecture {name!r} has no k or target_l0 to sweep (coefficient-searched variants "
                         f"such as vanilla and gated cannot be swept); allowed: {', '.join(allowed)}")
    return VARIANTS.get(name) or ComparisonVariant(resolve_architecture(name), "k")


@dataclass
class Point:
    """One SAE at one token budget, measured on the held-out activations."""

    n_features: int
    k: int
    """The grid's sparsity value: k, or the target L0 of target_l0 variants."""
    tokens: int
    fvu: float
    """``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over held-out tokens."""
    l0: float
    """Mean latents firing per held-out token."""
    dead_fraction: float
    """Latents that fired on no held-out token."""


def load_activations(cfg: SweepConfig) -> tuple[Tensor, Tensor]:
    """Training rows (train split) and held-out rows (validation split), captured once into resumable caches."""
    total = {"train": cfg.token_checkpoints[-1], "validation": cfg.heldout_tokens}
    model = None
    tensors = []
    for split, tokens in total.items():
        directory = Path(cfg.cache_dir) / f"{split}-{tokens}tok"
        if not ((directory / "manifest.json").exists() and read_manifest(directory).complete):
            model = model or load_model(cfg.model, device=cfg.device)
            capture_activations(CaptureConfig(
                output_dir=str(directory), model_name=cfg.model, hook_names=[cfg.hook], dataset_path=cfg.dataset,
                dataset_split=split, total_tokens=tokens, skip_bos_activations=True, device=cfg.device,
                progress=cfg.progress), model)
        cache = open_cache(directory, hook_name=cfg.hook, model_name=cfg.model)
        tensors.append(cache.load_all(cfg.hook))
    if (rows := tensors[0].shape[0]) < total["train"]:
        logger.warning("the train split has %d tokens; the sweep repeats them %.2f times", rows, total["train"] / rows)
    return tensors[0], tensors[1]


@torch.no_grad()
def evaluate(sae: TrainingSAE[Any], heldout: Tensor) -> tuple[float, float, float]:
    """Held-out (FVU, L0, dead fraction) through the SAE's forward, codes read at ``hook_sae_acts_post``."""
    sae.eval()
    recon, latents = ReconstructionAccumulator(), LatentAccumulator.for_latents(sae.cfg.d_sae)
    for x in heldout.split(_EVAL_ROWS):
        x = x.to(sae.device)
        x_hat, cache = sae.run_with_cache(x, names_filter="hook_sae_acts_post")
        recon.add(x, x_hat)
        latents.add(cache["hook_sae_acts_post"])
    return 1.0 - recon.explained_variance(), latents.l0_mean(), float((latents.fire_counts == 0).double().mean())


def build_trainer(cfg: SweepConfig, variant: ComparisonVariant, settings: dict[str, float], n_features: int, k: int,
                  d_in: int, upstream: SingleHookSource) -> Trainer:
    """The trainer of grid cell (n_features, k): the variant's SAE at ``settings`` (``settings_at(variant, k)``),
    the sweep's shared schedule."""
    sae = build_variant_sae(variant, settings, d_in, n_features, cfg.device, cfg.seed)
    train_cfg = TrainConfig(
        architecture=variant.architecture, d_sae=n_features, k=int(settings.get("k", k)), lr=cfg.lr,
        lr_warmup_steps=cfg.lr_warmup_steps, batch_size=cfg.batch_size,
        total_steps=cfg.token_checkpoints[-1] // cfg.batch_size, seed=cfg.seed, device=cfg.device, progress_bar=False,
    )
    return Trainer(train_cfg, BroadcastSource(d_in, upstream), sae=sae)


def run_sweep(cfg: SweepConfig, train: Tensor, heldout: Tensor) -> tuple[list[Point], list[dict[str, Any]], dict[str, float]]:
    """Train every (width, k) SAE in one pass over ``train``, evaluating all of them at each checkpoint.
    Returns the points, each run's full config (``variants.run_config``) and the seconds spent."""
    upstream = SingleHookSource(TensorActivationSource(train, seed=cfg.seed), cfg.hook)
    grid = [(n, k) for n in cfg.widths for k in cfg.ks]
    variant = cfg.variant
    trainers: dict[str, Trainer] = {}
    runs: list[dict[str, Any]] = []
    for n, k in grid:
        settings = settings_at(variant, k)
        trainer = trainers[f"n{n}-k{k}"] = build_trainer(cfg, variant, settings, n, k, train.shape[1], upstream)
        runs.append({"n_features": n, "k": k, "variant": cfg.architecture, "settings": settings,
                     "config": run_config(trainer, variant)})
    multi = MultiTrainer(trainers, upstream, dict.fromkeys(trainers, cfg.hook))
    points: list[Point] = []
    seconds, steps_done = {"train": 0.0, "evaluate": 0.0}, 0
    for tokens in cfg.token_checkpoints:
        start = time.perf_counter()
        multi.train(tokens // cfg.batch_size - steps_done, progress=cfg.progress)
        steps_done = tokens // cfg.batch_size
        seconds["train"] += time.perf_counter() - start
        start = time.perf_counter()
        for (n, k), trainer in zip(grid, trainers.values()):
            points.append(Point(n, k, trainer.tokens_seen, *evaluate(trainer.sae, heldout)))
        seconds["evaluate"] += time.perf_counter() - start
        logger.info("evaluated %d SAEs at %d tokens", len(grid), tokens)
    return points, runs, seconds


def _fit(fn: Callable[[], PowerLawFit]) -> dict[str, Any]:
    """A fit as a dict; a failed fit is recorded with its reason, so one bad cell does not lose the sweep."""
    try:
        with np.errstate(over="ignore"):  # bootstrap resamples probe extreme exponents; exp overflow there is expected
            return fn().to_dict()
    except (ValueError, RuntimeError, FloatingPointError) as err:
        logger.warning("fit failed: %s", err)
        return {"error": f"{type(err).__name__}: {err}"}


def fit_laws(cfg: SweepConfig, points: list[Point]) -> dict[str, Any]:
    """L(N) per k and L(N, k) at the final budget; L(T) per (N, k) over the checkpoints."""
    opts = {"n_boot": cfg.n_boot, "confidence": cfg.confidence, "seed": cfg.seed}
    final = [p for p in points if p.tokens == max(q.tokens for q in points)]

    def law_n(k: int) -> PowerLawFit:
        chosen = [p for p in final if p.k == k]
        return fit_power_law([p.n_features for p in chosen], [p.fvu for p in chosen], **opts)

    def law_t(n: int, k: int) -> PowerLawFit:
        run = [p for p in points if (p.n_features, p.k) == (n, k)]
        return fit_power_law([p.tokens for p in run], [p.fvu for p in run], **opts)

    return {
        "final_tokens": final[0].tokens,
        "n_per_k": {str(k): _fit(lambda k=k: law_n(k)) for k in cfg.ks},
        "joint_n_k": _fit(lambda: fit_joint_power_law([p.n_features for p in final], [p.k for p in final],
                                                      [p.fvu for p in final], **opts)),
        "tokens_per_run": [{"n_features": n, "k": k, "fit": _fit(lambda n=n, k=k: law_t(n, k))}
                           for n in cfg.widths for k in cfg.ks],
    }


def derive_scaling_laws(cfg: SweepConfig) -> dict[str, Any]:
    """Capture (or reuse) activations, run the sweep, fit, and write ``scaling.json``, ``scaling.md`` and figures."""
    begin = time.perf_counter()
    train, heldout = load_activations(cfg)
    data_seconds = time.perf_counter() - begin
    points, runs, seconds = run_sweep(cfg, train, heldout)
    start = time.perf_counter()
    fits = fit_laws(cfg, points)
    seconds.update(activations=data_seconds, fit=time.perf_counter() - start, total=time.perf_counter() - begin)
    report = {
        "config": dataclasses.asdict(cfg),
        "variant": dataclasses.asdict(cfg.variant),
        "runs": runs,
        "hook": cfg.hook,
        "d_in": int(train.shape[1]),
        "train_rows": int(train.shape[0]),
        "heldout_rows": int(heldout.shape[0]),
        "device": device_name(cfg.device),
        "versions": versions(),
        "points": [dataclasses.asdict(p) for p in points],
        "fits": fits,
        "seconds": seconds,
    }
    write_report(Path(cfg.out), report)
    return report
