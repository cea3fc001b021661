"""Tiny SAEs of every architecture registered with SAELens (``hybrid`` included), the embedded model and
its activations: what the conformance tests run the invariants on.

Two groups, read from SAELens' registries at import (so an architecture SAELens adds is covered without
editing this file): the *trainable* ones (``SAE_TRAINING_CLASS_REGISTRY``: SAELens' runner trains them and
they map ``x -> x_hat``), which get every invariant, and the *inference-only* ones (transcoders, temporal),
which map one hook to another or read the sequence, so they get the module invariants only (configs,
save/load, dtype moves).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from sae_lens import SAE, HookedSAETransformer, registry
from sae_lens.saes.sae import TrainingSAE

import hybrid_sae_ext  # noqa: F401  (registers "hybrid")
from hybrid_sae_ext.models import TINY_LM_NAME, load_model

D_IN, D_SAE, K = 128, 64, 6
"""``D_IN`` is the embedded model's d_model, so every SAE here also splices into it."""
HOOK = "blocks.1.hook_resid_pre"

TRAINABLE = sorted(registry.SAE_TRAINING_CLASS_REGISTRY)

_EXTRA_FIELDS: dict[str, dict[str, Any]] = {
    "matryoshka_batchtopk": {"matryoshka_widths": [16, D_SAE]},
    **{name: {"d_out": D_IN, "apply_b_dec_to_input": False}
       for name in ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")},
    "temporal": {"n_heads": 2, "bottleneck_factor": 16},  # its attention needs d_in % (heads x factor) == 0
}
"""Fields an architecture's config requires beyond d_in, d_sae (and k where it has one)."""


def training_config(architecture: str, **fields: Any) -> Any:
    """A tiny training config of ``architecture`` (SAELens' class for it, from the registry)."""
    _, cfg_cls = registry.get_sae_training_class(architecture)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    settings: dict[str, Any] = {"d_in": D_IN, "d_sae": D_SAE, **_EXTRA_FIELDS.get(architecture, {})}
    if "k" in names:
        settings["k"] = K
    return cfg_cls(**{**settings, **fields})


INFERENCE_ONLY = sorted(
    set(registry.SAE_CLASS_REGISTRY) - {training_config(a).get_inference_config_class().architecture() for a in TRAINABLE}
)


def perturb(sae: SAE[Any], seed: int) -> SAE[Any]:
    """Random, non-trivial parameters: every bias non-zero, decoder rows of different norms (so folds
    have something to fold), gate biases of the gated architectures mostly negative (some gates closed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if name == "W_dec":
                param.mul_(torch.rand(param.shape[0], 1, generator=generator, dtype=param.dtype) * 1.5 + 0.5)
            elif name == "b_gate":
                param.copy_(noise - 1.0)
            elif name == "threshold":  # JumpReLU's: kept positive, as its training step does
                param.copy_(0.1 * noise.abs())
            elif param.ndim == 1:
                param.add_(0.1 * noise)
    return sae


def training_sae(architecture: str, seed: int = 0, **fields: Any) -> TrainingSAE[Any]:
    torch.manual_seed(seed)
    sae = TrainingSAE.from_dict(training_config(architecture, **fields).to_dict())
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.model_name = TINY_LM_NAME
    sae.cfg.metadata.prepend_bos = True
    return perturb(sae, seed)  # type: ignore[return-value]


def inference_sae(architecture: str, tmp_path: Any, seed: int = 0, **fields: Any) -> SAE[Any]:
    """The inference SAE SAELens makes of a trained one: ``save_inference_model`` then ``load_from_disk``."""
    sae = training_sae(architecture, seed, **fields)
    sae.save_inference_model(tmp_path / f"inference-{architecture}")
    return SAE.load_from_disk(str(tmp_path / f"inference-{architecture}"))


def inference_only_sae(architecture: str, seed: int = 0) -> SAE[Any]:
    torch.manual_seed(seed)
    sae = SAE.from_dict({"architecture": architecture, "d_in": D_IN, "d_sae": D_SAE, **_EXTRA_FIELDS.get(architecture, {})})
    return perturb(sae, seed)


@pytest.fixture(scope="session")
def sae_model() -> HookedSAETransformer:
    return load_model(TINY_LM_NAME, model_class=HookedSAETransformer)


@pytest.fixture(scope="session")
def model_tokens(sae_model: HookedSAETransformer) -> torch.Tensor:
    text = ["def read(path):\n    return open(path).read()", "The list holds one string per line of the file."]
    return sae_model.to_tokens(text)[:, :12]


@pytest.fixture(scope="session")
def acts(sae_model: HookedSAETransformer, model_tokens: torch.Tensor) -> torch.Tensor:
    """Real activations at ``HOOK``, ``[tokens, d_in]`` (BOS dropped: its norm is an outlier)."""
    _, cache = sae_model.run_with_cache(model_tokens, names_filter=HOOK)
    return cache[HOOK][:, 1:].reshape(-1, D_IN)
