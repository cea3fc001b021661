"""Train-step and inference benchmark: HybridSAE against SAELens' SAEs and sparsify, side by side.

All SAEs run in ONE process on the SAME seeded activations (~k/2 of 4*d_in directions per token +
a rank-8 part + noise, E||x||^2 = d_in) for the SAME number of Adam steps, each stepped like its
own trainer does it: SAELens SAEs via ``training_forward_pass``, the hybrid via its sparse
``sparse_training_step`` (what ``hybrid_sae_ext.training.Trainer`` calls), sparsify with
``fvu + auxk_alpha * auxk_loss``, parallel-gradient removal and decoder renormalisation; all with
grad clipping at 1.0 and the Adam of ``hybrid_sae_ext.training.optimizer.make_adam``.

On CPU, glibc malloc is first told to keep freed memory (``--keep-freed-memory``): otherwise
page faults on fresh ``batch x d_sae`` temporaries make the dense peers' steps slow and erratic.

Every peer runs in fp32 and under bf16 autocast (``<label>@bf16-autocast``); the hybrid runs in its
default settings (``hybrid``: the capped batch gate at mean L0 k, ``selection_dtype="auto"``) and with each
selection dtype. Each SAE is
timed twice: ``steps`` steps with no dead latents, then ``steps`` steps with half of the latents
marked dead (AuxK active). Reported: median ms/step with min and max, tokens/s from the same
median, peak memory (CUDA allocator; on CPU the process RSS, indicative only), and held-out FVU
and L0 after all timed steps, with ratios to the fastest peer, to sparsify (the faster of its two
precisions) and to SAELens ``topk``. L1-style SAEs use fixed coefficients, so their L0 is not
matched to k: their FVU only shows that training works.

    python benchmarks/bench_train_step.py --steps 20 --only hybrid,topk,sparsify
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import simple_parsing
import torch
import torch.nn.functional as F
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainCoefficientConfig, TrainStepInput
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
from torch import Tensor, nn

from hybrid_sae_ext import HybridSAE, HybridSAEConfig, register_architectures
from hybrid_sae_ext.architectures.hybrid_config import DEFAULT_BATCH_TARGET_FRACTION
from hybrid_sae_ext.architectures.protocols import SparseTrainingStep
from hybrid_sae_ext.cli_errors import LiteralPercentHelpFormatter
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import (
    cpu_peak_method,
    device_name,
    keep_freed_memory,
    load_watch,
    peak_memory,
    timed,
    versions,
)
from hybrid_sae_ext.training.optimizer import make_adam

L1_COEFFICIENT = 5.0  # standard & gated: SAELens' usual range for inputs with E||x||^2 = d_in
JUMPRELU_L0_COEFFICIENT = 1.0  # one firing latent costs as much as 1/d_in of the input's energy
AUXK_ALPHA = 1 / 32  # sparsify's AuxK weight: the hybrid's default aux_k_coefficient
DEAD_FRACTION = 0.5  # latents marked dead in the AuxK-active timing
AUTOCAST = "@bf16-autocast"
HYBRIDS: dict[str, dict[str, Any]] = {
    # The default (the capped batch gate) at mean L0 k, as the comparison matches it: per-token cap
    # k / DEFAULT_BATCH_TARGET_FRACTION, so it handles 1.25 x the picks of the k-based peers per token.
    "hybrid": {"k": "cap", "target_l0": "k"},
    "hybrid@sel-float32": {"k": "cap", "target_l0": "k", "selection_dtype": "float32"},
    "hybrid@sel-bfloat16": {"k": "cap", "target_l0": "k", "selection_dtype": "bfloat16"},
    "hybrid-dense-reference": {"k": "cap", "target_l0": "k", "kernel_backend": "dense", "selection_dtype": "float32"},
    # The earlier hybrids (``experiments/variants.py``), opt-in (``--only``): the refined fixed-k default of
    # sessions 3-5, the hybrid as issue 28 found it (fixed k, unrefined), and the batch gates at cap 2 x target.
    "hybrid@fixed-k": {"gate_rule": "token", "refine_steps": 1},
    "hybrid@no-refine": {"gate_rule": "token", "refine_steps": 0},
    "hybrid@batch": {"gate_rule": "batch", "target_l0": "k/2", "refine_steps": 0},
    "hybrid@batch-refine": {"gate_rule": "batch", "target_l0": "k/2", "refine_steps": 1},
}
REDESIGNS = ("hybrid@fixed-k", "hybrid@no-refine", "hybrid@batch", "hybrid@batch-refine")


def hybrid_sizes(extra: dict[str, Any], k: int) -> dict[str, Any]:
    """A hybrid entry's ``k`` and ``target_l0`` for the peers' k: "cap" is k / DEFAULT_BATCH_TARGET_FRACTION,
    "k" and "k/2" what they say; an entry without ``k`` has the peers' k."""
    sizes = {"cap": round(k / DEFAULT_BATCH_TARGET_FRACTION), "k": k, "k/2": k / 2}
    return {**extra, "k": sizes[extra.get("k", "k")], **({"target_l0": sizes[extra["target_l0"]]} if "target_l0" in extra else {})}


SAELENS_PEERS: dict[str, dict[str, Any]] = {
    "standard": {"l1_coefficient": L1_COEFFICIENT},
    "gated": {"l1_coefficient": L1_COEFFICIENT},
    "topk": {},
    "batchtopk": {},
    "jumprelu": {"l0_coefficient": JUMPRELU_L0_COEFFICIENT},
}
K_BASED = {"topk", "batchtopk"}
PEERS = (*SAELENS_PEERS, "sparsify")
PEER_LABELS = tuple(f"{p}{suffix}" for p in PEERS for suffix in ("", AUTOCAST))
ALL_LABELS = (*HYBRIDS, *PEER_LABELS)
DEFAULT_LABELS = tuple(label for label in ALL_LABELS if label not in ("hybrid-dense-reference", *REDESIGNS))
REFERENCE = "topk"


@dataclass
class BenchConfig:
    """Command-line flags (``--d_in`` or ``--d-in``, ``--d_sae``, ...)."""

    d_in: int = 256
    """Width of the activations (the model's d_model)."""
    d_sae: int = 8192
    """Latents per SAE."""
    k: int = 32
    """Latents per token for the k-sparse SAEs."""
    batch: int = simple_parsing.field(default=1024, alias="--batch_tokens")
    """Tokens (activation rows) per training step."""
    steps: int = 10
    """Timed steps in each of the two timings (no dead latents / AuxK active)."""
    warmup: int = 2
    """Untimed steps before each timing."""
    lr: float = 4e-4
    """Adam's learning rate."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Storage dtype of every SAE and of the activations."""
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")
    """Device (default: cuda when there is one, else cpu)."""
    only: str = ""
    """Comma list of labels (see ALL_LABELS); empty: all but hybrid-dense-reference and the redesigns."""
    out: str = "benchmarks/results"
    """Folder for the result tables (<device>-d..-s..-k..-b...{json,md})."""
    inference_batch: int = simple_parsing.field(default=8192, alias="--inference_batch_tokens")
    """Tokens per encode+decode call in the inference section; 0 skips it."""
    inference_reps: int = 3
    """Timed repetitions of the inference section."""
    seed: int = 0
    """Seeds the activations and every SAE's initialisation."""
    keep_freed_memory: bool = True
    """CPU: glibc malloc keeps freed memory (``measure.keep_freed_memory``), so no peer pays page faults."""


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        ms = [1e3 * s for s in seconds]
        return cls(statistics.median(ms), min(ms), max(ms))


@dataclass
class TrainResult:
    label: str
    step: Timing
    """No dead latents."""
    step_auxk: Timing
    """Half of the latents dead: AuxK (or the peer's dead-latent loss) active."""
    tokens_per_s: float
    """From ``step.median_ms``."""
    peak_mem_mib: float
    l0: float
    fvu: float
    vs_fastest_peer: float | None = None
    vs_sparsify: float | None = None
    vs_topk: float | None = None
    mem_vs_topk: float | None = None


@dataclass
class InferenceResult:
    label: str
    batch: Timing
    tokens_per_s: float
    """From ``batch.median_ms``."""
    vs_sparsify: float | None = None
    vs_topk: float | None = None


@dataclass
class Contender:
    """An SAE ready to train: ``step(x, dead)`` is one optimiser step; ``evaluate(x)`` -> (L0, x_hat)."""

    step: Callable[[Tensor, Tensor], None]
    evaluate: Callable[[Tensor], tuple[float, Tensor]]
    module: nn.Module | None = None


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


def _autocast(label: str, device: str) -> contextlib.AbstractContextManager[Any]:
    if label.endswith(AUTOCAST):
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _finish_step(params: Sequence[nn.Parameter], opt: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def saelens_contender(label: str, cfg: BenchConfig) -> Contender:
    """A SAELens TrainingSAE (the ``hybrid`` plug-in included) stepped like SAELens' trainer."""
    arch = "hybrid" if label in HYBRIDS else label.removesuffix(AUTOCAST)
    extra = HYBRIDS[label] if label in HYBRIDS else SAELENS_PEERS[arch]
    sae_cls, cfg_cls = get_sae_training_class(arch)
    if label in HYBRIDS:
        extra = hybrid_sizes(extra, cfg.k)
    elif arch in K_BASED:
        extra = {**extra, "k": cfg.k}
    sae = sae_cls(cfg_cls(d_in=cfg.d_in, d_sae=cfg.d_sae, dtype=cfg.dtype, device=cfg.device, **extra))
    params = list(sae.parameters())
    opt = make_adam(params, cfg.lr)
    coefficients = {
        name: c.value if isinstance(c, TrainCoefficientConfig) else float(c)
        for name, c in sae.get_coefficients().items()
    }
    n_steps = [0]

    def step(x: Tensor, dead: Tensor) -> None:
        with _autocast(label, cfg.device):
            if isinstance(sae, SparseTrainingStep):  # the project's trainer takes the sparse step directly
                loss = sae.sparse_training_step(x, dead, coefficients).loss
            else:
                loss = sae.training_forward_pass(TrainStepInput(
                    sae_in=x, coefficients=coefficients, dead_neuron_mask=dead,
                    n_training_steps=n_steps[0], is_logging_step=False,
                )).loss
        loss.backward()
        _finish_step(params, opt)
        n_steps[0] += 1

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        acts = sae.encode(x)
        return (acts != 0).sum(-1).float().mean().item(), sae.decode(acts)

    return Contender(step, evaluate, sae)


def sparse_coder(cfg: BenchConfig) -> nn.Module:
    if not cfg.device.startswith("cuda"):  # with Triton installed sparsify picks its CUDA-only decoder
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    from sparsify import SparseCoder, SparseCoderConfig

    coder_cfg = SparseCoderConfig(num_latents=cfg.d_sae, k=cfg.k)
    return SparseCoder(cfg.d_in, coder_cfg, cfg.device, getattr(torch, cfg.dtype))


def sparsify_contender(label: str, cfg: BenchConfig) -> Contender:
    """sparsify's SparseCoder stepped like sparsify's trainer (Adam instead of its Signum)."""
    coder = sparse_coder(cfg)
    params = list(coder.parameters())
    opt = make_adam(params, cfg.lr)

    def step(x: Tensor, dead: Tensor) -> None:
        with _autocast(label, cfg.device):
            out = coder(x, dead_mask=dead)
        (out.fvu + AUXK_ALPHA * out.auxk_loss).backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        _finish_step(params, opt)
        coder.set_decoder_norm_to_unit_norm()

    def evaluate(x: Tensor) -> tuple[float, Tensor]:
        acts, indices, _ = coder.encode(x)
        return (acts != 0).sum(-1).float().mean().item(), coder.decode(acts, indices)

    return Contender(step, evaluate, coder)


def make_contender(label: str, cfg: BenchConfig) -> Contender:
    build = sparsify_contender if label.removesuffix(AUTOCAST) == "sparsify" else saelens_contender
    return build(label, cfg)


@torch.no_grad()
def l0_and_fvu(contender: Contender, x: Tensor) -> tuple[float, float]:
    l0, x_hat = contender.evaluate(x)
    x64 = x.double()
    return l0, ((x64 - x_hat.double()).pow(2).sum() / (x64 - x64.mean(0)).pow(2).sum()).item()


def dead_mask(cfg: BenchConfig, fraction: float) -> Tensor:
    """``[d_sae]`` bool, about ``fraction`` of the latents marked dead, the same ones for every SAE."""
    return (torch.rand(cfg.d_sae, generator=torch.Generator().manual_seed(cfg.seed)) < fraction).to(cfg.device)


def bench_train(label: str, cfg: BenchConfig, pool: Tensor, held_out: Tensor) -> TrainResult:
    """Build one SAE, warm it up, time ``steps`` steps without and ``steps`` with dead latents,
    then evaluate it on ``held_out``."""
    batches = pool.split(cfg.batch)
    no_dead, half_dead = dead_mask(cfg, 0.0), dead_mask(cfg, DEAD_FRACTION)
    with peak_memory(cfg.device) as peak_mib:
        contender = make_contender(label, cfg)
        counter = iter(range(10**9))

        def run(dead: Tensor) -> float:
            return timed(lambda: contender.step(batches[next(counter) % len(batches)], dead), cfg.device)

        for _ in range(cfg.warmup):
            run(half_dead)
        plain = [run(no_dead) for _ in range(cfg.steps)]
        auxk = [run(half_dead) for _ in range(cfg.steps)]
    l0, fvu = l0_and_fvu(contender, held_out)  # outside the block: its dense codes are not training's
    step = Timing.of(plain)
    return TrainResult(label, step, Timing.of(auxk), 1e3 * cfg.batch / step.median_ms, peak_mib(), l0, fvu)


def prime(labels: Sequence[str], cfg: BenchConfig) -> None:
    """Run every SAE once at toy size, so one-time library set-up is not charged to the first."""
    tiny = replace(cfg, d_in=16, d_sae=64, k=4, batch=32, steps=1, warmup=1)
    data = make_data(tiny, 32, part=0)
    for label in labels:
        bench_train(label, tiny, data, data)


@torch.no_grad()
def bench_inference(cfg: BenchConfig, labels: Sequence[str]) -> list[InferenceResult]:
    """Encode + decode (no grad) of one large batch: the hybrid's sparse path, ``topk``, sparsify."""
    common = dict(d_in=cfg.d_in, d_sae=cfg.d_sae, k=cfg.k, dtype=cfg.dtype, device=cfg.device)
    runs: dict[str, Callable[[Tensor], Tensor]] = {}
    if "hybrid" in labels:
        hybrid = HybridSAE(HybridSAEConfig(**{**common, "k": hybrid_sizes(HYBRIDS["hybrid"], cfg.k)["k"]}))
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
        timing = Timing.of([timed(lambda: run(x), cfg.device) for _ in range(cfg.inference_reps)])
        results.append(InferenceResult(label, timing, 1e3 * cfg.inference_batch / timing.median_ms))
    return results


def _ratio(value: float, ref: float | None) -> float | None:
    return value / ref if ref else None


def add_ratios(train: list[TrainResult], inference: list[InferenceResult]) -> None:
    """Fill the ratio fields (None where the reference was not run)."""
    tps = {r.label: r.tokens_per_s for r in train}
    fastest_peer = max((tps[p] for p in PEER_LABELS if p in tps), default=None)
    sparsify = max((tps[p] for p in ("sparsify", f"sparsify{AUTOCAST}") if p in tps), default=None)
    topk = next((r for r in train if r.label == REFERENCE), None)
    for r in train:
        r.vs_fastest_peer = _ratio(r.tokens_per_s, fastest_peer)
        r.vs_sparsify = _ratio(r.tokens_per_s, sparsify)
        r.vs_topk = _ratio(r.tokens_per_s, topk.tokens_per_s if topk else None)
        r.mem_vs_topk = _ratio(r.peak_mem_mib, topk.peak_mem_mib if topk and topk.peak_mem_mib > 0 else None)
    itps = {r.label: r.tokens_per_s for r in inference}
    for r in inference:
        r.vs_sparsify = _ratio(r.tokens_per_s, itps.get("sparsify"))
        r.vs_topk = _ratio(r.tokens_per_s, itps.get(REFERENCE))


def _ms(t: Timing) -> str:
    return f"{t.median_ms:.1f} ({t.min_ms:.1f}-{t.max_ms:.1f})"


def markdown(meta: dict[str, Any], train: list[TrainResult], inference: list[InferenceResult]) -> str:
    c, fmt = meta["config"], lambda v: "-" if v is None else f"{v:.2f}"
    memory = "peak RSS MiB (indicative)" if meta["memory_metric"].startswith("CPU") else "peak MiB"
    lines = [
        f"# SAE train-step benchmark on {meta['device_name']}", "",
        f"d_in={c['d_in']} d_sae={c['d_sae']} k={c['k']} batch={c['batch']} storage dtype={c['dtype']} "
        f"lr={c['lr']}; {c['warmup']} warm-up steps, then {c['steps']} timed steps without dead latents and "
        f"{c['steps']} with {DEAD_FRACTION:.0%} of the latents dead (AuxK active). {meta['versions']}",
        f"Load: {meta['load']}. Memory: {meta['memory_metric']}. Allocator: {meta['allocator']}.",
        "ms/step: median (min-max); tokens/s from the median of the no-dead-latent steps. "
        "L0 and FVU: held-out batch after all timed steps. Ratios are tokens/s ratios measured in this run.",
        "", f"| SAE | ms/step | ms/step, AuxK active | tokens/s | {memory} | L0 | FVU | "
        "vs fastest peer | vs sparsify | vs topk | mem vs topk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.label} | {_ms(r.step)} | {_ms(r.step_auxk)} | {r.tokens_per_s:,.0f} | {r.peak_mem_mib:.1f} | "
        f"{r.l0:.1f} | {r.fvu:.3f} | {fmt(r.vs_fastest_peer)} | {fmt(r.vs_sparsify)} | {fmt(r.vs_topk)} | "
        f"{fmt(r.mem_vs_topk)} |"
        for r in train
    ]
    if inference:
        lines += ["", f"Inference: encode + decode, no grad, batch {c['inference_batch']}, "
                  f"{c['inference_reps']} repetitions.", "",
                  "| SAE | ms/batch | tokens/s | vs sparsify | vs topk |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r.label} | {_ms(r.batch)} | {r.tokens_per_s:,.0f} | {fmt(r.vs_sparsify)} | "
                  f"{fmt(r.vs_topk)} |" for r in inference]
    return "\n".join(lines) + "\n"


def selected_labels(cfg: BenchConfig) -> list[str]:
    labels = [s.strip() for s in cfg.only.split(",") if s.strip()] or list(DEFAULT_LABELS)
    if unknown := sorted(set(labels) - set(ALL_LABELS)):
        raise ValueError(f"unknown labels {unknown}; allowed: {', '.join(ALL_LABELS)}")
    if importlib.util.find_spec("sparsify") is None:
        print("note: sparsify is not importable; skipping it")
        labels = [label for label in labels if label.removesuffix(AUTOCAST) != "sparsify"]
    return labels


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark, print its tables, write ``<out>/<device>-d..-s..-k..-b..[-bf16].{json,md}``."""
    cfg = simple_parsing.parse(BenchConfig, args=argv, formatter_class=LiteralPercentHelpFormatter,
                               add_option_string_dash_variants=simple_parsing.DashVariant.UNDERSCORE_AND_DASH)
    register_architectures()
    on_cpu = not cfg.device.startswith("cuda")
    memory_kept = (cfg.keep_freed_memory and keep_freed_memory()) if on_cpu else None
    labels, start = selected_labels(cfg), time.perf_counter()
    with load_watch() as load:
        prime(labels, cfg)
        pool = make_data(cfg, cfg.batch * min(cfg.warmup + 2 * cfg.steps, 32), part=0)
        held_out = make_data(cfg, cfg.batch, part=1)
        train = [bench_train(label, cfg, pool, held_out) for label in labels]
        inference = bench_inference(cfg, labels) if cfg.inference_batch > 0 else []
    add_ratios(train, inference)
    meta = {
        "config": asdict(cfg),
        "device_name": device_name(cfg.device),
        "memory_metric": "CUDA max_memory_allocated minus allocation before build"
        if cfg.device.startswith("cuda") else
        f"CPU peak RSS ({cpu_peak_method()}, minus RSS before build, over build + training); indicative only",
        "load": load(),
        "allocator": "CUDA caching allocator" if memory_kept is None else
        "glibc malloc keeps freed memory (no trim, no mmap below 1 GiB)" if memory_kept else "default",
        "versions": versions(),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    suffix = "" if cfg.dtype == "float32" else f"-{cfg.dtype}"
    stem = Path(cfg.out) / f"{meta['device_name']}-d{cfg.d_in}-s{cfg.d_sae}-k{cfg.k}-b{cfg.batch}{suffix}"
    text = markdown(meta, train, inference)
    print(text)
    write_text_atomic(f"{stem}.md", text)
    results = {"train": [asdict(r) for r in train], "inference": [asdict(r) for r in inference]}
    write_json_atomic(f"{stem}.json", {**meta, **results})
    return Path(f"{stem}.json")


if __name__ == "__main__":
    main()
