"""Many SAEs in one pass vs one after another, on the embedded model's live activations.

One pass: each batch runs the model once (all hooks) and every SAE trains on it (``MultiTrainer``).
One after another: each SAE gets its own stream, so the model runs once per batch per SAE. Both
train the same SAEs on the same tokens for the same steps; the output is tokens/s per SAE-step
and the speed-up, written to ``benchmarks/results/<device>-many-saes.{json,md}``.

    python benchmarks/bench_many_saes.py --n_saes 4 --steps 20
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import simple_parsing
import torch

import hybrid_sae_ext  # noqa: F401
from hybrid_sae_ext.activations import load_text_dataset, token_rows
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import device_name, versions
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from hybrid_sae_ext.training import TrainConfig, Trainer
from hybrid_sae_ext.training.multi import BroadcastSource, ModelActivationSource, MultiTrainer

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@dataclass
class ManyConfig:
    n_saes: int = 4
    """SAEs trained; they alternate between the two layers' residual streams."""
    d_sae: int = 2048
    k: int = 32
    batch: int = 4064
    """Tokens per step (a multiple of context_size - 1 gives exactly one forward per batch)."""
    context_size: int = 128
    steps: int = 20
    device: str = "cpu"
    out: str = "benchmarks/results"


def _trainers(cfg: ManyConfig, upstream: ModelActivationSource) -> dict[str, Trainer]:
    train_cfg = TrainConfig(d_sae=cfg.d_sae, k=cfg.k, batch_size=cfg.batch, total_steps=cfg.steps, progress_bar=False,
                            device=cfg.device)
    return {f"sae{i}": Trainer(dataclasses.replace(train_cfg, seed=i), BroadcastSource(upstream.d_in[HOOKS[0]], upstream))
            for i in range(cfg.n_saes)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    cfg = simple_parsing.parse(ManyConfig, args=argv)
    model = load_model(TINY_LM_NAME, device=cfg.device)
    rows = token_rows(load_text_dataset("embedded", split="train"), model.tokenizer, context_size=cfg.context_size)
    per_step = -(-cfg.batch // (cfg.context_size - 1))
    tokens = torch.stack([next(rows) for _ in range(per_step * cfg.steps)])
    hooks = {f"sae{i}": HOOKS[i % len(HOOKS)] for i in range(cfg.n_saes)}

    upstream = ModelActivationSource(model, HOOKS, tokens)
    start = time.perf_counter()
    MultiTrainer(_trainers(cfg, upstream), upstream, hooks).train(cfg.steps, progress=False)
    one_pass = time.perf_counter() - start
    one_pass_forwards = upstream.forward_passes

    sequential, sequential_forwards = 0.0, 0
    for name, trainer in _trainers(cfg, upstream).items():
        own = ModelActivationSource(model, [hooks[name]], tokens)
        trainer.source = BroadcastSource(trainer.source.d_in, own)
        start = time.perf_counter()
        MultiTrainer({name: trainer}, own, {name: hooks[name]}).train(cfg.steps, progress=False)
        sequential += time.perf_counter() - start
        sequential_forwards += own.forward_passes

    sae_tokens = cfg.n_saes * cfg.steps * cfg.batch
    result = {
        "config": dataclasses.asdict(cfg), "device_name": device_name(cfg.device), "versions": versions(),
        "one_pass": {"seconds": one_pass, "model_forwards": one_pass_forwards, "sae_tokens_per_s": sae_tokens / one_pass},
        "one_after_another": {"seconds": sequential, "model_forwards": sequential_forwards,
                              "sae_tokens_per_s": sae_tokens / sequential},
        "speedup": sequential / one_pass,
    }
    text = "\n".join([
        f"# {cfg.n_saes} SAEs on {TINY_LM_NAME} ({result['device_name']})", "",
        f"d_sae={cfg.d_sae}, k={cfg.k}, {cfg.steps} steps of {cfg.batch} tokens, hooks {HOOKS} alternating.", "",
        "| schedule | model forwards | seconds | SAE-tokens/s |", "|---|---|---|---|",
        *[f"| {name} | {r['model_forwards']} | {r['seconds']:.1f} | {r['sae_tokens_per_s']:,.0f} |"
          for name, r in (("one pass", result["one_pass"]), ("one after another", result["one_after_another"]))],
        "", f"Speed-up of one pass: {result['speedup']:.2f}x", "",
    ])
    print(text)
    stem = Path(cfg.out) / f"{result['device_name']}-many-saes"
    write_json_atomic(f"{stem}.json", result)
    write_text_atomic(f"{stem}.md", text)
    return result


if __name__ == "__main__":
    main()
