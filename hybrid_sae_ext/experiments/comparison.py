"""The SAE comparison: vanilla (L1), gated, K-sparse and hybrid on identical activations and budget.

Activations are captured once into a cache; every SAE of every architecture and sparsity setting
trains in one pass over that stream (``MultiTrainer``), with the same token budget, learning-rate
schedule and seed. Sparsity is matched by sweeping each architecture's knob (k, or the L1
coefficient) and (a) plotting the L0-vs-loss frontiers, (b) tabulating, per architecture, the
setting whose L0 lands closest to the target L0. Each SAE is then splice-evaluated.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

from hybrid_sae_ext.activations import CaptureConfig, capture_activations, open_cache
from hybrid_sae_ext.evals import evaluate_sae, load_eval_tokens
from hybrid_sae_ext.experiments.report import comparison_markdown, plot_comparison
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import device_name, peak_memory, versions
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import TensorActivationSource, unit_energy_scale
from hybrid_sae_ext.training.multi import BroadcastSource, MultiTrainer, SingleHookSource
from hybrid_sae_ext.training.trainer import Trainer

K_ARCHITECTURES = ("ksparse", "hybrid")
REFERENCE = "ksparse"


@dataclass
class ComparisonConfig:
    """One comparison run (flags of ``scripts/run_comparison.py``)."""

    model: str = TINY_LM_NAME
    """TransformerLens model name (e.g. gpt2), a saved model folder, or the embedded default."""
    layer: int = 1
    """Block whose residual stream input (``blocks.<layer>.hook_resid_pre``) the SAEs learn."""
    n_features: int = 4096
    batch_size: int = 8
    """Sequences per optimizer step (each gives context_size - 1 activations; BOS is skipped)."""
    context_size: int = 128
    epochs: int = 2
    """Passes over the captured activations."""
    tokens: int = 1_000_000
    """Activations captured for training."""
    architectures: list[str] = field(default_factory=lambda: ["vanilla", "gated", "ksparse", "hybrid"])
    k: list[int] = field(default_factory=lambda: [16, 32, 64])
    """k values swept for ksparse and hybrid; the middle one is the target L0 of the table."""
    l1_coefficient: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0, 16.0])
    """L1 coefficients swept for vanilla and gated (activations are scaled to E|x|^2 = d_in)."""
    lr: float = 1e-3
    eval_batches: int = 16
    """Held-out batches (of batch_size sequences) for the splice evaluation."""
    cache_dir: str = ""
    """Activation cache folder (default: <out>/cache); reused and resumed across runs."""
    device: str = "cpu"
    out: str = "results/comparison"
    wandb: str = ""
    """wandb project to log each SAE's training to (WANDB_MODE=offline works); empty disables."""
    debug: bool = False
    """Small and fast: 131,072 tokens, 8 eval batches."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.debug:
            self.tokens, self.eval_batches = min(self.tokens, 131_072), min(self.eval_batches, 8)
        for name in ("n_features", "batch_size", "epochs", "tokens", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_size < 2:
            raise ValueError(f"context_size must be >= 2, got {self.context_size}")
        if any(k < 1 or k > self.n_features for k in self.k):
            raise ValueError(f"every k must satisfy 1 <= k <= n_features={self.n_features}, got {self.k}")
        for arch in self.architectures:
            TrainConfig(architecture=arch, d_sae=self.n_features, k=min(self.k))  # validates the names

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    @property
    def target_l0(self) -> int:
        return sorted(self.k)[len(self.k) // 2]


def sweep(cfg: ComparisonConfig) -> dict[str, tuple[str, dict[str, float]]]:
    """Run name -> (architecture, its sparsity setting)."""
    runs: dict[str, tuple[str, dict[str, float]]] = {}
    for arch in cfg.architectures:
        if arch in K_ARCHITECTURES:
            runs.update({f"{arch}-k{k}": (arch, {"k": k}) for k in cfg.k})
        else:
            runs.update({f"{arch}-l1_{c:g}": (arch, {"l1_coefficient": c}) for c in cfg.l1_coefficient})
    return runs


def capture(cfg: ComparisonConfig, model: Any) -> torch.Tensor:
    """The training activations (captured once into the cache, resumed if a capture was killed)."""
    cache_dir = Path(cfg.cache_dir or Path(cfg.out) / "cache")
    capture_activations(
        CaptureConfig(output_dir=str(cache_dir), model_name=cfg.model, hook_names=[cfg.hook_name],
                      context_size=cfg.context_size, skip_bos_activations=True, total_tokens=cfg.tokens,
                      tokens_per_shard=min(cfg.tokens, 1 << 16), device=cfg.device),
        model=model,
    )
    return open_cache(cache_dir, hook_name=cfg.hook_name).load_all(cfg.hook_name)


def train_config(cfg: ComparisonConfig, arch: str, setting: dict[str, float], steps: int) -> TrainConfig:
    batch_tokens = cfg.batch_size * (cfg.context_size - 1)
    return TrainConfig(
        architecture=arch, d_sae=cfg.n_features, lr=cfg.lr, batch_size=batch_tokens, total_steps=steps,
        lr_warmup_steps=max(1, steps // 20), lr_decay_steps=max(1, steps // 5),
        dead_after_tokens=min(cfg.tokens, 1_000_000), device=cfg.device, seed=cfg.seed, progress_bar=False,
        wandb_project=cfg.wandb or None, k=int(setting.get("k", cfg.target_l0)),
        l1_coefficient=float(setting.get("l1_coefficient", 0.0)),
    )


def step_memory_mib(train_cfg: TrainConfig, acts: torch.Tensor) -> float:
    """Peak memory of building one SAE and running 3 steps, measured alone (not interleaved)."""
    with peak_memory(train_cfg.device) as peak:
        trainer = Trainer(dataclasses.replace(train_cfg, wandb_project=None), TensorActivationSource(acts))
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


def run_comparison(cfg: ComparisonConfig) -> dict[str, Any]:
    """Capture, train every run in one pass, evaluate; returns the JSON-able results."""
    start = time.perf_counter()
    model = load_model(cfg.model, device=cfg.device)
    acts = capture(cfg, model)
    scale = unit_energy_scale(acts)
    acts = acts * scale
    batch_tokens = cfg.batch_size * (cfg.context_size - 1)
    steps = max(1, cfg.epochs * acts.shape[0] // batch_tokens)
    upstream = SingleHookSource(TensorActivationSource(acts, seed=cfg.seed))
    runs = sweep(cfg)
    configs = {name: train_config(cfg, arch, setting, steps) for name, (arch, setting) in runs.items()}
    trainers = {name: Trainer(c, BroadcastSource(acts.shape[1], upstream)) for name, c in configs.items()}
    trained = MultiTrainer(trainers, upstream, dict.fromkeys(trainers, upstream.hook)).train(steps)

    tokens = load_eval_tokens(model, context_size=cfg.context_size, n_rows=cfg.eval_batches * cfg.batch_size)
    results = []
    for name, (arch, setting) in runs.items():
        sae = inference_sae(trainers[name], Path(cfg.out) / "saes" / name, scale, cfg.hook_name)
        evaluation = evaluate_sae(model, sae, tokens, cfg.hook_name, batch_size=cfg.batch_size)
        results.append({
            "run": name, "architecture": arch, **setting,
            "l0": evaluation.l0_mean, "normalized_mse": evaluation.normalized_mse, "fvu": evaluation.fvu,
            "explained_variance": evaluation.explained_variance, "ce_loss_recovered": evaluation.ce_loss_recovered,
            "ce_loss_with_sae": evaluation.ce_loss_with_sae, "kl_div": evaluation.kl_div_with_sae,
            "dead_fraction": evaluation.n_dead / evaluation.d_sae,
            "train_seconds": trained.train_seconds[name], "peak_memory_mib": step_memory_mib(configs[name], acts),
            "curve": [dataclasses.asdict(m) for m in trained.history[name]],
            "feature_density": evaluation.feature_density,
        })
    clean = {"ce_loss_clean": evaluation.ce_loss_clean, "ce_loss_zero_ablation": evaluation.ce_loss_zero_ablation}
    return {
        "config": dataclasses.asdict(cfg), "hook_name": cfg.hook_name, "target_l0": cfg.target_l0,
        "steps": steps, "train_tokens": steps * batch_tokens, "activation_scale": scale,
        "device_name": device_name(cfg.device), "versions": versions(), "eval": clean,
        "eval_tokens": int(tokens.numel()), "data_seconds": trained.data_seconds,
        "wall_seconds": time.perf_counter() - start, "runs": results,
        "table": comparison_table(results, cfg.target_l0),
    }


def comparison_table(results: list[dict[str, Any]], target_l0: float) -> list[dict[str, Any]]:
    """Per architecture, the run whose L0 is closest to ``target_l0`` (in log space), with time/memory relative
    to K-sparse. Runs that collapsed (FVU >= 1: no better than predicting the mean) are not candidates
    unless an architecture has nothing else."""

    def distance(row: dict[str, Any]) -> tuple[bool, float]:
        return row["fvu"] >= 1.0, abs(math.log(max(row["l0"], 1e-9) / target_l0))

    picks: dict[str, dict[str, Any]] = {}
    for row in results:
        best = picks.get(row["architecture"])
        if best is None or distance(row) < distance(best):
            picks[row["architecture"]] = row
    reference = picks.get(REFERENCE)
    table = []
    for arch, row in picks.items():
        entry = {key: value for key, value in row.items() if key not in ("curve", "feature_density")}
        if reference is not None:
            entry["time_vs_ksparse"] = row["train_seconds"] / reference["train_seconds"]
            entry["memory_vs_ksparse"] = (
                row["peak_memory_mib"] / reference["peak_memory_mib"] if reference["peak_memory_mib"] > 0 else None
            )
        table.append(entry)
    return table


def write_results(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "comparison.json", results)
    write_text_atomic(out / "comparison.md", comparison_markdown(results))
    plot_comparison(results, out)
