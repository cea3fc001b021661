"""Shared fixtures: the embedded default model, loaded once, and a small capture config."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer

from hybrid_sae_ext.activations import CacheWriter, CaptureConfig, Manifest
from hybrid_sae_ext.models import TINY_LM_NAME, load_model

@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    return load_model(TINY_LM_NAME)


@pytest.fixture
def synthetic_cache() -> Callable[..., Path]:
    """Caches written without a model: row ``i`` of hook ``h`` is filled with ``i`` (``-i`` for the second hook)."""

    def make(directory: Path, shard_tokens: tuple[int, ...] = (50, 50, 50, 30), d_in: int = 3) -> Path:
        hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
        manifest = Manifest(
            model_name="synthetic", hook_names=hooks, d_in={h: d_in for h in hooks}, dtype="float32",
            context_size=10, tokens_per_shard=max(shard_tokens), config={},
        )  # fmt: skip
        writer = CacheWriter.create_or_resume(directory, manifest)
        start = 0
        for tokens in shard_tokens:
            ids = torch.arange(start, start + tokens, dtype=torch.float32)[:, None].expand(tokens, d_in)
            writer.write_shard({hooks[0]: ids.clone(), hooks[1]: -ids})
            start += tokens
        writer.finish()
        return directory

    return make


@pytest.fixture
def small_config() -> Callable[..., CaptureConfig]:
    """Configs of a few hundred tokens in uneven shards; shard and batch edges deliberately misaligned."""

    def make(output_dir: Path, **overrides: object) -> CaptureConfig:
        base = dict(
            output_dir=str(output_dir), model_name=TINY_LM_NAME, context_size=32, total_tokens=700,
            hook_names=["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"],
            tokens_per_shard=200, batch_size=4, progress=False,
        )  # fmt: skip
        return CaptureConfig(**{**base, **overrides})

    return make
