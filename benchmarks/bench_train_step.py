"""Train-step and inference benchmark: HybridSAE against SAELens' SAEs and sparsify, side by side.

Why: the hybrid's sparse kernels should make a gated + top-k SAE train about as fast and lean as
SAELens' ``topk``. All SAEs run in ONE process on the SAME seeded activations (~k/2 of 4*d_in
directions per token + a rank-8 part + noise, E||x||^2 = d_in) for the SAME number of Adam steps,
each stepped like its own trainer does it: SAELens SAEs via ``training_forward_pass``, the hybrid
via its sparse ``hybrid_forward`` (what ``hybrid_sae_ext.training.Trainer`` calls), all with the
dead-latent mask and grad clipping at 1.0; sparsify with
``fvu + auxk_alpha * auxk_loss``, parallel-gradient removal and decoder renormalisation (and, on
CUDA, its own bf16 autocast). Reported: tokens/s, ms/step, peak memory (CUDA allocator, or CPU RSS
sampled in a thread; both minus the level before the SAE was built), and held-out L0 and NMSE.
L1-style SAEs use fixed coefficients (below), so their L0 is not matched to k: short runs measure
speed and memory; L0/NMSE only show that training works.

    python benchmarks/bench_train_step.py --steps 20 --only hybrid,topk
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import simple_parsing
import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from torch import Tensor, nn

from hybrid_sae_ext import HybridSAE, HybridSAEConfig, HybridTrainingSAE, register_architectures
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import device_name, peak_memory, timed, versions

L1_COEFFICIENT = 5.0  # standard & gated: SAELens' usual range for inputs with E||x||^2 = d_in
JUMPRELU_L0_COEFFICIENT = 1.0  # one firing latent costs as much as 1/d_in of the input's energy
AUXK_ALPHA = 1 / 32  # sparsify's AuxK weight: the hybrid's default aux_k_coefficient
REFERENCE = "topk"
SAELENS_SETUPS: dict[str, tuple[str, dict[str, Any]]] = {
    "hybrid": ("hybrid", {"kernel_backend": "sparse"}),
    "hybrid-dense-reference": ("hybrid", {"kernel_backend": "dense"}),
    "standard": ("standard", {"l1_coefficient": L1_COEFFICIENT}),
    "gated": ("gated", {"l1_coefficient": L1_COEFFICIENT}),
    "topk": ("topk", {}),
    "batchtopk": ("batchtopk", {}),
    "jumprelu": ("jumprelu", {"l0_coefficient": JUMPRELU_L0_COEFFICIENT}),
}
K_BASED = {"hybrid", "topk", "batchtopk"}
ALL_LABELS = (*SAELENS_SETUPS, "sparsify")


@dataclass
class BenchConfig:
    """Command-line flags (``--d-in``, ``--d-sae``, ...)."""

    d_in: int = 256
    d_sae: int = 8192
    k: int = 32
    batch: int = 1024
    steps: int = 10
    warmup: int = 2
    lr: float = 4e-4
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    only: str = ""  # comma list of labels; empty = all
    out: str = "benchmarks/results"
    inference_batch: int = 8192  # 0 skips the inference section
    inference_reps: int = 3
    dead_window: int = 1000  # steps without firing before a latent is dead (SAELens' default)
    seed: int = 0


@dataclass
class TrainResult:
    label: str
    tokens_per_s: float
    ms_per_step: float
    peak_mem_mib: float
    l0: float
    nmse: float
    tokens_per_s_vs_topk: float | None = None
    mem_vs_topk: float | None = None


@dataclass
class InferenceResult:
    label: str
    tokens_per_s: float
    ms_per_batch: float
    tokens_per_s_vs_topk: float | None = None


@dataclass
class Contender:
    """An SAE ready to train: ``step(x)`` is one optimiser step; ``evaluate(x)`` -> (L0, x_hat)."""

    step: Callable[[Tensor], None]
    evaluate: Callable[[Tensor], tuple[float, Tensor]]


def make_data(cfg: BenchConfig, rows: int, part: int) -> Tensor:
    """``rows`` activations (sparse + low-rank + noise); ``part`` picks a disjoint sample set,
    the ground-truth directions come from ``cfg.seed`` alone, so every part shares them."""
    gen, n_true = torch.Generator().manual_seed(cfg.seed), 4 * cfg.d_in
    dirs = F.normalize(torch.randn(n_true, cfg.d_in, generator=gen), dim=-1)
    low_rank = torch.randn(8, cfg.d_in, generator=gen) * 4 / cfg.d_in**0.5
    gen.manual_seed(cfg.seed * 1000 + 1 + part)
    idx = torch.randint(0, n_true, (rows, max(1, cfg.k // 2)), generator=gen)
    mags = torch.empty(idx.shape).exponential_(generator=gen)
    x = F.embedding_bag(idx, dirs, per_sample_weights=mags, mode="sum")
    x += torch.randn(rows, 8, generator=gen) @ low_rank
    x += 0.05 * torch.randn(rows, cfg.d_in, generator=gen)
    x *= (cfg.d_in / x.pow(2).sum(-1).mean()) ** 0.5
    return x.to(cfg.device, getattr(torch, cfg.dtype))


def make_adam(params: Sequence[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # fused unsupported on this device / dtype
        return torch.optim.Adam(params, lr=lr, foreach=True)


def saelens_contender(label: str, cfg: BenchConfig) -> Contender:
    """A SAELens TrainingSAE (the ``hybrid`` plug-in included) stepped like SAELens' trainer."""
    arch, extra = SAELENS_SETUPS[label]
    sae_cls, cfg_cls = get_sae_training_class(arch)
    extra = {**extra, "k": cfg.k} if arch in K_BASED else extra
    sae_cfg = cfg_cls(d_in=cfg.d_in, d_sae=cfg.d_sae, dtype=cfg.dtype, device=cfg.device, **extra)
    sae = sae_cls(sae_cfg)
    opt = make_adam(list(sae.parameters()), cfg.lr)
    coefficients = {
        name: c.value if isinstance(c, TrainCoefficientConfig) else float(c)
        for name, c in sae.get_coefficients().items()
    }
    since_fired = torch.zeros(cfg.d_sae, device=cfg.device)
    n_steps = [0]

    def step(x: Tensor) -> None:
        dead = since_fired > cfg.dead_window
        if isinstance(sae, HybridTrainingSAE):  # the project's trainer takes the sparse step directly
            out = sae.hybrid_forward(x, dead)
            loss, fired = out.losses.total(), out.codes.indices[out.codes.values > 0]
        else:
            step_out = sae.training_forward_pass(TrainStepInput(
                sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                n_training_steps=n_steps[0], is_logging_step=False,
            ))
            loss, fired = step_out.loss, step_out.feature_acts.bool().any(0)
        with torch.no_grad():
            since_fired.add_(1)[fired] = 0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_steps[0] += 1

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        acts = sae.encode(x)
        return (acts != 0).sum(-1).float().mean().item(), sae.decode(acts)

    return Contender(step, evaluate)


def sparse_coder(cfg: BenchConfig) -> nn.Module:
    from sparsify import SparseCoder, SparseCoderConfig

    coder_cfg = SparseCoderConfig(num_latents=cfg.d_sae, k=cfg.k)
    return SparseCoder(cfg.d_in, coder_cfg, cfg.device, getattr(torch, cfg.dtype))


def sparsify_contender(cfg: BenchConfig) -> Contender:
    """sparsify's SparseCoder stepped like sparsify's trainer (Adam instead of its Signum)."""
    coder = sparse_coder(cfg)
    opt = make_adam(list(coder.parameters()), cfg.lr)
    since_fired = torch.zeros(cfg.d_sae, device=cfg.device)

    def step(x: Tensor) -> None:
        out = coder(x, dead_mask=since_fired > cfg.dead_window)
        since_fired.add_(1)[out.latent_indices.flatten()] = 0
        (out.fvu + AUXK_ALPHA * out.auxk_loss).backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(coder.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        coder.set_decoder_norm_to_unit_norm()

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        acts, indices, _ = coder.encode(x)
        return (acts != 0).sum(-1).float().mean().item(), coder.decode(acts, indices)

    return Contender(step, evaluate)


@torch.no_grad()
def l0_and_nmse(contender: Contender, x: Tensor) -> tuple[float, float]:
    l0, x_hat = contender.evaluate(x)
    x32 = x.float()
    return l0, ((x32 - x_hat.float()).pow(2).sum() / (x32 - x32.mean(0)).pow(2).sum()).item()


def bench_train(label: str, cfg: BenchConfig, pool: Tensor, held_out: Tensor) -> TrainResult:
    """Build one SAE, warm it up, time ``cfg.steps`` steps, then evaluate it on ``held_out``."""
    batches = pool.split(cfg.batch)
    with peak_memory(cfg.device) as peak_mib:
        build = sparsify_contender if label == "sparsify" else partial(saelens_contender, label)
        contender = build(cfg)
        times = [timed(lambda: contender.step(batches[i % len(batches)]), cfg.device)
                 for i in range(cfg.warmup + cfg.steps)][cfg.warmup:]
    l0, nmse = l0_and_nmse(contender, held_out)
    tokens_per_s = cfg.batch * len(times) / sum(times)
    return TrainResult(label, tokens_per_s, 1e3 * statistics.median(times), peak_mib(), l0, nmse)


def prime(labels: Sequence[str], cfg: BenchConfig) -> None:
    """Run every SAE once at toy size, so one-time library set-up is not charged to the first."""
    tiny = replace(cfg, d_in=16, d_sae=64, k=4, batch=32, steps=1, warmup=1)
    data = make_data(tiny, 32, part=0)
    for label in labels:
        bench_train(label, tiny, data, data)


@torch.no_grad()
def bench_inference(cfg: BenchConfig, labels: Sequence[str]) -> list[InferenceResult]:
    """Encode + decode throughput (no grad) on one large batch: hybrid's sparse path vs ``topk``."""
    common = dict(d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k, dtype=cfg.dtype, device=cfg.device)
    runs: dict[str, Callable[[Tensor], Tensor]] = {}
    if "hybrid" in labels:
        hybrid = HybridSAE(HybridSAEConfig(**common))
        runs["hybrid"] = lambda x: hybrid.decode_sparse(hybrid.encode_sparse(x))
    if REFERENCE in labels:
        runs[REFERENCE] = TopKSAE(TopKSAEConfig(**common))
    if "sparsify" in labels:
        coder = sparse_coder(cfg)
        runs["sparsify"] = lambda x: coder.decode(*coder.encode(x)[:2])
    x = make_data(cfg, cfg.inference_batch, part=2)
    results = []
    for label, run in runs.items():
        run(x)  # warm-up
        times = [timed(lambda: run(x), cfg.device) for _ in range(cfg.inference_reps)]
        tokens_per_s = cfg.inference_batch / statistics.mean(times)
        results.append(InferenceResult(label, tokens_per_s, 1e3 * statistics.median(times)))
    return results


def add_ratios(train: list[TrainResult], inference: list[InferenceResult]) -> None:
    """Fill the ``*_vs_topk`` fields (left None when ``topk`` was not run)."""
    if ref := next((r for r in train if r.label == REFERENCE), None):
        for r in train:
            r.tokens_per_s_vs_topk = r.tokens_per_s / ref.tokens_per_s
            r.mem_vs_topk = r.peak_mem_mib / ref.peak_mem_mib if ref.peak_mem_mib > 0 else None
    if iref := next((r for r in inference if r.label == REFERENCE), None):
        for r in inference:
            r.tokens_per_s_vs_topk = r.tokens_per_s / iref.tokens_per_s


def markdown(
    meta: dict[str, Any], train: list[TrainResult], inference: list[InferenceResult]
) -> str:
    c, fmt = meta["config"], lambda v: "-" if v is None else f"{v:.2f}"
    lines = [
        f"# SAE train-step benchmark on {meta['device_name']}", "",
        f"d_in={c['d_in']} d_sae={c['d_sae']} k={c['k']} batch={c['batch']} steps={c['steps']} "
        f"(+{c['warmup']} warm-up) dtype={c['dtype']} lr={c['lr']}; {meta['versions']}",
        f"Memory: {meta['memory_metric']}. L0 and NMSE: held-out batch after training.", "",
        "| SAE | tokens/s | ms/step | peak MiB | L0 | NMSE | tokens/s vs topk | mem vs topk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.label} | {r.tokens_per_s:,.0f} | {r.ms_per_step:.1f} | {r.peak_mem_mib:.1f} | "
        f"{r.l0:.1f} | {r.nmse:.3f} | {fmt(r.tokens_per_s_vs_topk)} | {fmt(r.mem_vs_topk)} |"
        for r in train
    ]
    if inference:
        lines += ["", f"Inference: encode + decode, no grad, batch {c['inference_batch']}.", "",
                  "| SAE | tokens/s | ms/batch | tokens/s vs topk |", "|---|---:|---:|---:|"]
        lines += [f"| {r.label} | {r.tokens_per_s:,.0f} | {r.ms_per_batch:.1f} | "
                  f"{fmt(r.tokens_per_s_vs_topk)} |" for r in inference]
    return "\n".join(lines) + "\n"


def selected_labels(cfg: BenchConfig) -> list[str]:
    labels = [s.strip() for s in cfg.only.split(",") if s.strip()] or list(ALL_LABELS)
    if unknown := sorted(set(labels) - set(ALL_LABELS)):
        raise ValueError(f"unknown labels {unknown}; allowed: {', '.join(ALL_LABELS)}")
    if "sparsify" in labels and importlib.util.find_spec("sparsify") is None:
        print("note: sparsify is not importable; skipping it")
        labels.remove("sparsify")
    return labels


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark, print its tables, write ``<out>/<device>-d..-s..-k..-b...{json,md}``."""
    cfg = simple_parsing.parse(
        BenchConfig, args=argv, add_option_string_dash_variants=simple_parsing.DashVariant.DASH
    )
    register_architectures()
    labels, start = selected_labels(cfg), time.perf_counter()
    prime(labels, cfg)
    pool = make_data(cfg, cfg.batch * min(cfg.warmup + cfg.steps, 32), part=0)
    held_out = make_data(cfg, cfg.batch, part=1)
    train = [bench_train(label, cfg, pool, held_out) for label in labels]
    inference = bench_inference(cfg, labels) if cfg.inference_batch > 0 else []
    add_ratios(train, inference)
    cuda = cfg.device.startswith("cuda")
    meta = {
        "config": asdict(cfg),
        "device_name": device_name(cfg.device),
        "memory_metric": "CUDA max_memory_allocated minus allocation before build" if cuda else
        "CPU peak of RSS sampled every 2 ms minus RSS before build, over build + training",
        "versions": versions(),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    stem = Path(cfg.out) / f"{meta['device_name']}-d{cfg.d_in}-s{cfg.d_sae}-k{cfg.k}-b{cfg.batch}"
    text = markdown(meta, train, inference)
    print(text)
    write_text_atomic(f"{stem}.md", text)
    results = {"train": [asdict(r) for r in train], "inference": [asdict(r) for r in inference]}
    write_json_atomic(f"{stem}.json", {**meta, **results})
    return Path(f"{stem}.json")


if __name__ == "__main__":
    main()
