"""Three SAEs (two layers, two widths) train in one pass over the embedded model: one forward per batch."""

from __future__ import annotations

import torch

from hybrid_sae_ext.activations import load_text_dataset, token_rows
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.multi import BroadcastSource, ModelActivationSource, MultiTrainer
from hybrid_sae_ext.training.trainer import Trainer

STEPS = 12


def test_three_saes_one_forward_per_batch() -> None:
    model = load_model(TINY_LM_NAME)
    rows = token_rows(load_text_dataset("embedded", split="train"), model.tokenizer, context_size=33)
    tokens = torch.stack([next(rows) for _ in range(64)])
    upstream = ModelActivationSource(model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], tokens)
    plan = {
        "layer0-narrow": ("blocks.0.hook_resid_post", 256),
        "layer1-narrow": ("blocks.1.hook_resid_post", 256),
        "layer1-wide": ("blocks.1.hook_resid_post", 1024),
    }
    trainers = {
        name: Trainer(
            TrainConfig(d_sae=width, k=8, batch_size=256, total_steps=STEPS, lr=2e-3, progress_bar=False),
            BroadcastSource(128, upstream),
        )
        for name, (_, width) in plan.items()
    }
    result = MultiTrainer(trainers, upstream, {name: hook for name, (hook, _) in plan.items()}).train(STEPS, progress=False)

    assert upstream.forward_passes == STEPS  # once per batch, not once per SAE
    for name, history in result.history.items():
        assert len(history) == STEPS
        assert history[-1].normalized_mse < history[0].normalized_mse, name
    first_batch_mse = {name: h[0].normalized_mse for name, h in result.history.items()}
    assert first_batch_mse["layer1-narrow"] != first_batch_mse["layer0-narrow"]  # each SAE saw its own hook
