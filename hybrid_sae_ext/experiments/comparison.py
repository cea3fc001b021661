"""The SAE comparison: every architecture at one target L0, on identical activations, budget and seeds.

Activations are captured once into a cache. For each seed, every SAE trains in one ``MultiTrainer``
pass over that seed's data order, with the same token budget, learning-rate schedule and batch;
only the architecture knobs differ (``VARIANTS``). Sparsity is matched without
hand-picking: k-architectures use k = target, ``target_l0`` architectures aim at the target themselves
(the adaptive hybrid with k = 2 x target as the cap; JumpReLU with Gemma Scope 2's quadratic penalty), and
coefficient architectures get their coefficient searched (``matching``). The
first seed's pass also trains a frontier (L0 x ``frontier_factors``). Every SAE is evaluated on
held-out activations along training (FVU curves) and spliced into the model at the end.
Finished passes are kept under ``<out>/partial`` so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import simple_parsing
import torch
from sae_lens import SAE

from hybrid_sae_ext.activations import CaptureConfig, capture_activations, open_cache
from hybrid_sae_ext.evals import evaluate_sae, load_eval_tokens
from hybrid_sae_ext.experiments.matching import Probe, chosen_coefficient, next_coefficient, search_done
from hybrid_sae_ext.experiments.rates import best_rate
from hybrid_sae_ext.experiments.report import comparison_markdown, plot_comparison
from hybrid_sae_ext.experiments.sweep import evaluate as heldout_metrics
from hybrid_sae_ext.experiments.table import comparison_table
from hybrid_sae_ext.experiments.variants import VARIANTS, build_variant_sae, run_config, settings_at
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import device_name, peak_memory, versions
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import TensorActivationSource, unit_energy_scale
from hybrid_sae_ext.training.multi import BroadcastSource, MultiTrainer, SingleHookSource
from hybrid_sae_ext.training.trainer import Trainer

logger = logging.getLogger(__name__)
_RESUME_IGNORES = ("seeds", "lr_sweep", "out", "cache_dir", "wandb", "progress")


FULL_SIZES = {"epochs": 2, "tokens": 1_000_000, "eval_batches": 16, "n_features": 4096}
"""The comparison's sizes for a real model on a GPU."""
DEBUG_SIZES = {"epochs": 4, "tokens": 524_288, "eval_batches": 8, "n_features": 1024}
"""``--debug``'s sizes: minutes per SAE on 2 CPU cores (524,288 tokens: the embedded corpus' train split)."""


@dataclass
class ComparisonConfig:
    """One comparison run (flags of ``hybrid-sae compare``)."""

    model: str = TINY_LM_NAME
    """TransformerLens model name (e.g. gpt2), a saved model folder, or the embedded default."""
    layer: int = 1
    """Block whose activations the SAEs learn (``blocks.<layer>.<hook_site>``)."""
    hook_site: str = "hook_resid_pre"
    """Hook point inside the block: ``hook_resid_pre``, ``hook_mlp_out``, ``hook_attn_out``, ``hook_resid_post``."""
    n_features: int | None = simple_parsing.field(default=None, alias="--d_sae")
    """Latents per SAE (its width; default 4,096, 1,024 with ``--debug``)."""
    batch_size: int = simple_parsing.field(default=8, alias="--batch_sequences")
    """Sequences per optimizer step (each gives context_size - 1 activations; BOS is skipped)."""
    context_size: int = 128
    """Tokens per captured sequence, BOS included."""
    epochs: int | None = None
    """Passes over the captured activations (default 2; 4 with ``--debug``)."""
    tokens: int | None = None
    """Activations captured for training (default 1,000,000; 524,288 with ``--debug``)."""
    architectures: list[str] = field(default_factory=lambda: list(VARIANTS))
    """Variants to train (rows of ``hybrid_sae_ext.experiments.variants.VARIANTS``)."""
    target_l0: int = 32
    """The mean L0 every architecture is matched to."""
    frontier_factors: list[float] = field(default_factory=lambda: [0.5, 2.0])
    """The first seed also trains every architecture at L0 = target x each factor (the frontier)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Each seed sets SAE initialisation and data order; tables give mean and 95% interval over seeds."""
    lr: float = 1e-3
    """Adam's learning rate of every run (of the coefficient-searched ones only, with ``lr_from``)."""
    lr_sweep: list[float] = field(default_factory=list)
    """Instead of the comparison: train every architecture whose L0 its own knobs set (all but the
    coefficient-searched ones) at each of these learning rates on the first seed, and tabulate the held-out
    FVU (``lr_sweep.md``, ``lr_sweep.json``)."""
    lr_from: str = ""
    """``lr_sweep.json`` files of the same data and budget, comma-separated: each architecture they swept trains
    at its best rate over all their runs."""
    architecture_lr: dict[str, float] = field(default_factory=dict, init=False)
    """The per-architecture rates read from ``lr_from`` (the others train at ``lr``)."""
    search_probes: int = 6
    """Most short probes per coefficient architecture in the sparsity search."""
    probe_fraction: float = 0.25
    """A probe's budget as a fraction of the full run's steps."""
    tolerance: float = 0.1
    """A run has landed when its L0 is within this fraction of the target."""
    heldout_tokens: int = 16_384
    """Held-out activations (validation split) for the FVU curves."""
    curve_points: int = 4
    """Held-out evaluations at T, T/2, T/4, ... of the budget T."""
    eval_batches: int | None = None
    """Held-out batches (of batch_size sequences) for the splice evaluation (default 16; 8 with ``--debug``)."""
    cache_dir: str = ""
    """Activation cache folder (default: <out>/cache); reused and resumed across runs."""
    device: str = "cpu"
    """Device for capture, training and evaluation."""
    out: str = "results/comparison"
    """Output folder: comparison.{md,json}, figures, partial/ (per-seed passes, for resuming)."""
    wandb: str = ""
    """wandb project to log each SAE's training to (WANDB_MODE=offline works); empty disables."""
    progress: bool = True
    """Progress of the capture and of each training pass on stderr (a line per 30 s in a log); false: none."""
    debug: bool = False
    """Sized for 2 CPU cores: 524,288 tokens (the embedded corpus' train split), 4 epochs, 1,024 latents,
    8 eval batches; a size given explicitly wins over the preset."""

    def __post_init__(self) -> None:
        # Only the sizes left unset take the preset, so ``--debug --d_sae 4096`` trains 4,096 latents.
        defaults = DEBUG_SIZES if self.debug else FULL_SIZES
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("n_features", "batch_size", "epochs", "tokens", "eval_batches", "search_probes",
                     "heldout_tokens", "curve_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_size < 2:
            raise ValueError(f"context_size must be >= 2, got {self.context_size}")
        if not 1 <= self.target_l0 <= self.n_features // 2:
            raise ValueError(f"target_l0 must satisfy 1 <= target_l0 <= n_features/2={self.n_features // 2} "
                             f"(the adaptive hybrid's cap is 2 x target), got {self.target_l0}")
        if any(not 0 < f or f * self.target_l0 * 2 > self.n_features for f in self.frontier_factors):
            raise ValueError(f"frontier_factors must be > 0 with 2 x target_l0 x factor <= n_features, "
                             f"got {self.frontier_factors}")
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.lr_from and self.lr_sweep:
            raise ValueError(f"lr_sweep={self.lr_sweep} sweeps the rates that lr_from={self.lr_from!r} would fix; give one")
        if self.lr_from:
            # An architecture swept in several files takes its best rate over all of their runs.
            runs = [run for path in self.lr_from.split(",") for run in swept_runs(self, Path(path))]
            for architecture in dict.fromkeys(run["architecture"] for run in runs):
                mine = [run for run in runs if run["architecture"] == architecture]
                self.architecture_lr[architecture] = float(best_rate(mine, self.target_l0))
        if self.lr <= 0 or any(lr <= 0 for lr in self.lr_sweep):
            raise ValueError(f"lr and every lr_sweep value must be > 0, got lr={self.lr}, lr_sweep={self.lr_sweep}")
        if not 0 < self.probe_fraction <= 1 or not 0 < self.tolerance < 1:
            raise ValueError(f"probe_fraction must be in (0, 1] and tolerance in (0, 1), got "
                             f"{self.probe_fraction}, {self.tolerance}")
        unknown = [a for a in self.architectures if a not in VARIANTS]
        if unknown or not self.architectures:
            raise ValueError(f"Unknown comparison architecture(s) {unknown}; allowed: {', '.join(VARIANTS)}")

    def lr_of(self, architecture: str) -> float:
        return self.architecture_lr.get(architecture, self.lr)

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.{self.hook_site}"

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * (self.context_size - 1)


SWEEP_MUST_MATCH = ("model", "layer", "hook_site", "n_features", "batch_size", "context_size", "epochs", "tokens", "target_l0")
"""The fields an ``lr_from`` sweep must share with the comparison for its best rates to apply."""


def swept_runs(cfg: ComparisonConfig, path: Path) -> list[dict[str, Any]]:
    """The runs (architecture, lr, held-out FVU and L0) of the ``lr_sweep.json`` at ``path``, checked to be of
    ``cfg``'s data and budget."""
    if not path.is_file():
        raise ValueError(f"lr_from={str(path)!r} is not a file; give the lr_sweep.json of a --lr_sweep run")
    sweep = json.loads(path.read_text())
    # A field newer than the sweep file has its default there.
    swept = {f.name: sweep["config"].get(f.name, f.default) for f in dataclasses.fields(cfg) if f.name in SWEEP_MUST_MATCH}
    differ = {k: (swept[k], getattr(cfg, k)) for k in SWEEP_MUST_MATCH if swept[k] != getattr(cfg, k)}
    if differ:
        raise ValueError(f"lr_from={str(path)!r} swept other data or budget (sweep, comparison): {differ}")
    return list(sweep["runs"])


@dataclass
class RunSpec:
    """One SAE to train: its architecture, its sparsity setting and its seed."""

    architecture: str
    settings: dict[str, float]
    seed: int
    role: str
    """``target`` (the table) or ``frontier`` (the first seed's extra L0 points)."""

    @property
    def name(self) -> str:
        knob = ",".join(f"{k}={v:g}" for k, v in self.settings.items())
        return f"{self.architecture}[{knob}]-seed{self.seed}"


def build_run(cfg: ComparisonConfig, spec: RunSpec, d_in: int, steps: int, upstream: Any = None) -> Trainer:
    """The trainer of one run: the variant's SAELens config (its overrides + settings), shared schedule."""
    variant = VARIANTS[spec.architecture]
    sae = build_variant_sae(variant, spec.settings, d_in, cfg.n_features, cfg.device, spec.seed)
    train_cfg = TrainConfig(
        architecture=variant.architecture, d_sae=cfg.n_features, lr=cfg.lr_of(spec.architecture), batch_size=cfg.batch_tokens,
        total_steps=steps, lr_warmup_steps=max(1, steps // 20), lr_decay_steps=max(1, steps // 5),
        dead_after_tokens=min(cfg.tokens, 1_000_000), device=cfg.device, seed=spec.seed, progress_bar=False,
        wandb_project=cfg.wandb or None, k=int(spec.settings.get("k", cfg.target_l0)),
        l1_coefficient=spec.settings.get("l1_coefficient"),
    )
    return Trainer(train_cfg, BroadcastSource(d_in, upstream), sae=sae)


def train_pass(cfg: ComparisonConfig, specs: list[RunSpec], acts: torch.Tensor, seed: int, steps: int,
               heldout: torch.Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Train ``specs`` in one pass over ``seed``'s data order; held-out FVU at T/2^j when ``heldout`` is given."""
    upstream = SingleHookSource(TensorActivationSource(acts, seed=seed))
    trainers = {spec.name: build_run(cfg, spec, acts.shape[1], steps, upstream) for spec in specs}
    multi = MultiTrainer(trainers, upstream, dict.fromkeys(trainers, upstream.hook))
    marks = sorted({max(1, steps >> j) for j in range(cfg.curve_points)}) if heldout is not None else [steps]
    out = {name: {"trainer": t, "history": [], "train_seconds": 0.0, "heldout_curve": []} for name, t in trainers.items()}
    done = 0
    for mark in marks:
        result = multi.train(mark - done, progress=cfg.progress)
        done = mark
        for name, trainer in trainers.items():
            out[name]["history"] += result.history[name]
            out[name]["train_seconds"] += result.train_seconds[name]
            if heldout is not None:
                fvu, l0, dead = heldout_metrics(trainer.sae, heldout)
                out[name]["heldout_curve"].append({"tokens": trainer.tokens_seen, "fvu": fvu, "l0": l0, "dead": dead})
    return out


def search_coefficients(cfg: ComparisonConfig, acts: torch.Tensor, steps: int) -> dict[str, Any]:
    """Per coefficient architecture: bisection probes (all architectures in one pass per round)."""
    searched = [a for a in cfg.architectures if VARIANTS[a].searched]
    history: dict[str, list[Probe]] = {a: [] for a in searched}
    probe_steps = max(1, round(steps * cfg.probe_fraction))
    tail = max(1, probe_steps // 5)
    for _ in range(cfg.search_probes):
        pending = [a for a in searched if not search_done(history[a], cfg.target_l0, cfg.tolerance)]
        if not pending:
            break
        coefficients = {a: next_coefficient(history[a], cfg.target_l0, VARIANTS[a].first_coefficient)
                        for a in pending}
        specs = {a: RunSpec(a, {VARIANTS[a].sparsity_knob: c}, cfg.seeds[0], "probe")
                 for a, c in coefficients.items()}
        logger.info("search round: %s", {a: f"{c:.3g}" for a, c in coefficients.items()})
        trained = train_pass(cfg, list(specs.values()), acts, cfg.seeds[0], probe_steps)
        for a, spec in specs.items():
            last = trained[spec.name]["history"][-tail:]
            history[a].append(Probe(coefficients[a], sum(m.l0 for m in last) / len(last),
                                    sum(m.normalized_mse for m in last) / len(last)))
    return {
        "probe_steps": probe_steps,
        "coefficients": {a: chosen_coefficient(history[a], cfg.target_l0) for a in searched},
        "probes": {a: [dataclasses.asdict(p) for p in history[a]] for a in searched},
    }


def run_specs(cfg: ComparisonConfig, seed: int, coefficients: dict[str, float]) -> list[RunSpec]:
    """The target runs of every architecture, plus the frontier on the first seed."""
    specs = []
    for arch in cfg.architectures:
        variant = VARIANTS[arch]
        coefficient = coefficients.get(arch)
        specs.append(RunSpec(arch, settings_at(variant, cfg.target_l0, coefficient), seed, "target"))
        if seed == cfg.seeds[0]:
            for factor in cfg.frontier_factors:
                scaled = None if coefficient is None else coefficient / factor
                specs.append(RunSpec(arch, settings_at(variant, cfg.target_l0 * factor, scaled), seed, "frontier"))
    return specs


def step_memory_mib(cfg: ComparisonConfig, spec: RunSpec, acts: torch.Tensor) -> float:
    """Peak memory of building one SAE and running 3 steps, measured alone (not interleaved)."""
    with peak_memory(cfg.device) as peak:
        trainer = build_run(cfg, spec, acts.shape[1], 3)
        trainer.source = TensorActivationSource(acts)
        for _ in range(3):
            trainer.train_step()
    return peak()


def inference_sae(trainer: Trainer, folder: Path, scale: float, hook_name: str) -> SAE[Any]:
    """Save the trained SAE for inference with the activation scale folded in (raw activations in)."""
    trainer.sae.save_inference_model(str(folder))
    sae = SAE.load_from_disk(str(folder))
    sae.fold_activation_norm_scaling_factor(scale)
    sae.cfg.metadata.hook_name = hook_name
    sae.save_model(str(folder))
    return sae


def evaluate_pass(cfg: ComparisonConfig, specs: list[RunSpec], trained: dict[str, dict[str, Any]], context: dict[str, Any],
                  acts: torch.Tensor) -> list[dict[str, Any]]:
    """Splice-evaluate every trained SAE; one JSON-able record per run."""
    records = []
    for spec in specs:
        run = trained[spec.name]
        trainer: Trainer = run["trainer"]
        sae = inference_sae(trainer, Path(cfg.out) / "saes" / spec.name, context["scale"], cfg.hook_name)
        ev = evaluate_sae(context["model"], sae, context["tokens"], cfg.hook_name, batch_size=cfg.batch_size)
        records.append({
            "run": spec.name, "architecture": spec.architecture, "seed": spec.seed, "role": spec.role, **spec.settings,
            "config": run_config(trainer, VARIANTS[spec.architecture]),
            "l0": ev.l0_mean, "l0_histogram": ev.l0_histogram, "normalized_mse": ev.normalized_mse, "fvu": ev.fvu,
            "explained_variance": ev.explained_variance, "ce_loss_recovered": ev.ce_loss_recovered,
            "ce_loss_with_sae": ev.ce_loss_with_sae, "kl_div": ev.kl_div_with_sae, "dead_fraction": ev.n_dead / ev.d_sae,
            "train_seconds": run["train_seconds"],
            "peak_memory_mib": step_memory_mib(cfg, spec, acts) if spec.role == "target" and spec.seed == cfg.seeds[0] else None,
            "curve": [dataclasses.asdict(m) for m in run["history"]], "heldout_curve": run["heldout_curve"],
            "eval": {"ce_loss_clean": ev.ce_loss_clean, "ce_loss_zero_ablation": ev.ce_loss_zero_ablation},
        })
    return records


def capture(cfg: ComparisonConfig, model: Any, split: str = "train", tokens: int | None = None) -> torch.Tensor:
    """Activations of ``split`` (captured once into the cache, resumed if a capture was killed)."""
    tokens = tokens or cfg.tokens
    cache_dir = Path(cfg.cache_dir or Path(cfg.out) / "cache") / ("" if split == "train" else f"{split}-{tokens}")
    capture_activations(
        CaptureConfig(output_dir=str(cache_dir), model_name=cfg.model, hook_names=[cfg.hook_name], dataset_split=split,
                      context_size=cfg.context_size, skip_bos_activations=True, total_tokens=tokens,
                      tokens_per_shard=min(tokens, 1 << 16), device=cfg.device, progress=cfg.progress),
        model=model,
    )
    return open_cache(cache_dir, hook_name=cfg.hook_name).load_all(cfg.hook_name)


def resumable(path: Path, cfg: ComparisonConfig, build: Any) -> tuple[Any, float]:
    """``build()``'s result and the seconds it took, kept at ``path`` and reused by a later run of the
    same configuration (so a killed run loses at most the pass it was in)."""
    key = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUME_IGNORES}
    if path.exists():
        saved = json.loads(path.read_text())
        if saved["config"] == key:
            return saved["value"], saved["seconds"]
    start = time.perf_counter()
    value = build()
    seconds = time.perf_counter() - start
    write_json_atomic(path, {"config": key, "value": value, "seconds": seconds})
    return value, seconds


@dataclass
class ComparisonData:
    """What every pass trains and is measured on: the model, the scaled activations and the budget."""

    model: Any
    acts: torch.Tensor
    """Training activations, scaled to unit mean energy (``scale``)."""
    heldout: torch.Tensor
    """Validation activations, same scale, for the held-out FVU curves."""
    scale: float
    steps: int


def prepare_data(cfg: ComparisonConfig) -> ComparisonData:
    """Load the model and capture (or reuse) the train and validation activations."""
    model = load_model(cfg.model, device=cfg.device)
    acts = capture(cfg, model)
    scale = unit_energy_scale(acts)
    acts = acts * scale
    heldout = capture(cfg, model, "validation", cfg.heldout_tokens) * scale
    steps = max(1, cfg.epochs * acts.shape[0] // cfg.batch_tokens)
    return ComparisonData(model, acts, heldout, scale, steps)


def run_comparison(cfg: ComparisonConfig) -> dict[str, Any]:
    """Capture, search the coefficients, train and evaluate every seed's pass; returns the JSON-able results."""
    start = time.perf_counter()
    data = prepare_data(cfg)
    model, acts, heldout, scale, steps = data.model, data.acts, data.heldout, data.scale, data.steps
    partial = Path(cfg.out) / "partial"
    search, search_seconds = resumable(partial / "search.json", cfg, lambda: search_coefficients(cfg, acts, steps))
    seconds = {"search": search_seconds}
    tokens = load_eval_tokens(model, context_size=cfg.context_size, n_rows=cfg.eval_batches * cfg.batch_size)
    context = {"model": model, "tokens": tokens, "scale": scale}
    runs: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        specs = run_specs(cfg, seed, search["coefficients"])

        def one_pass(specs: list[RunSpec] = specs, seed: int = seed) -> list[dict[str, Any]]:
            logger.info("seed %d: training %d SAEs for %d steps", seed, len(specs), steps)
            return evaluate_pass(cfg, specs, train_pass(cfg, specs, acts, seed, steps, heldout), context, acts)

        records, seconds[f"seed-{seed}"] = resumable(partial / f"seed-{seed}.json", cfg, one_pass)
        runs += records
    return {
        "config": dataclasses.asdict(cfg), "hook_name": cfg.hook_name, "target_l0": cfg.target_l0,
        "steps": steps, "train_tokens": steps * cfg.batch_tokens, "activation_scale": scale,
        "device_name": device_name(cfg.device), "versions": versions(), "eval": runs[0]["eval"],
        "eval_tokens": int(tokens.numel()), "search": search,
        "seconds": seconds, "compute_seconds": sum(seconds.values()), "wall_seconds": time.perf_counter() - start,
        "runs": runs, "table": comparison_table(runs, cfg.target_l0, cfg.tolerance),
    }


def write_results(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "comparison.json", results)
    write_text_atomic(out / "comparison.md", comparison_markdown(results))
    plot_comparison(results, out)
