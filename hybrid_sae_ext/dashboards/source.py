"""What a dashboard reads: a saved SAE, the model and hook its metadata names, token rows, and sparse codes.

Why: the statistics, the site and the live server all need the same three things, loaded the same way:
the SAE with SAELens (``SAE.load_from_disk``, any architecture), the model through ``load_model`` (the
embedded default works offline), and codes as a flat list of firings so every per-latent statistic is
one scatter over all latents at once, never a Python loop over latents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens import SAE, HookedSAETransformer
from transformer_lens import HookedTransformer

import hybrid_sae_ext  # noqa: F401  (registers "hybrid" with SAELens)
from hybrid_sae_ext.activations.capture import capture_batch, stop_layer, validate_hook_names
from hybrid_sae_ext.activations.tokens import load_text_dataset, token_rows
from hybrid_sae_ext.architectures import HybridSAE
from hybrid_sae_ext.kernels import get_kernels
from hybrid_sae_ext.models import load_model, load_sae_folder


@dataclass
class SAESource:
    """A loaded SAE with the model and hook it reads, as its saved metadata says."""

    sae: SAE[Any]
    model: HookedTransformer
    model_name: str
    hook_name: str
    context_size: int
    prepend_bos: bool

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def is_hybrid(self) -> bool:
        return isinstance(self.sae, HybridSAE)


def read_sae_metadata(sae_path: str | Path) -> dict[str, Any]:
    """The ``metadata`` block of ``cfg.json``; raises a ValueError naming the file when it is unusable."""
    cfg_file = Path(sae_path) / "cfg.json"
    if not cfg_file.is_file():
        raise ValueError(f"{cfg_file}: no SAE config here; --sae_path must be a folder written by save_inference_model")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_file}: not valid JSON ({err})") from None
    metadata = cfg.get("metadata") if isinstance(cfg, dict) else None
    if not isinstance(metadata, dict) or not metadata.get("model_name") or not metadata.get("hook_name"):
        raise ValueError(f"{cfg_file}: metadata.model_name and metadata.hook_name are needed to know what the SAE reads")
    return metadata


def load_source(sae_path: str | Path, device: str = "cpu") -> SAESource:
    """Load the SAE (SAELens, any architecture) and the model its metadata names, checking that they fit."""
    metadata = read_sae_metadata(sae_path)
    sae = load_sae_folder(sae_path, device)
    model = load_model(metadata["model_name"], device=device, model_class=HookedSAETransformer)
    validate_hook_names(model, [metadata["hook_name"]])
    if model.tokenizer is None:
        raise ValueError(f"model {metadata['model_name']!r} has no tokenizer; dashboards need one to show text")
    context_size = int(metadata.get("context_size") or model.cfg.n_ctx)
    return SAESource(sae.eval(), model, metadata["model_name"], metadata["hook_name"],
                     min(context_size, model.cfg.n_ctx), bool(metadata.get("prepend_bos", True)))


def corpus_rows(source: SAESource, dataset: str, split: str) -> Iterator[torch.Tensor]:
    """The deterministic stream of ``[context_size]`` token rows the activation cache captures too."""
    documents = load_text_dataset(dataset, split)
    return token_rows(documents, source.model.tokenizer, source.context_size, source.prepend_bos)


class Firings(NamedTuple):
    """The non-zero codes of a batch as a flat list, ordered by token then latent."""

    token: torch.Tensor
    """Token index within the batch (row * positions + position), int64."""
    latent: torch.Tensor
    """Latent id, int64."""
    value: torch.Tensor
    """Activation, float32, > 0."""


class GateCandidates(NamedTuple):
    """Hybrid SAEs only: every top-k candidate of every token and its gate pre-activation."""

    latent: torch.Tensor
    gate: torch.Tensor
    """``pi_gate`` of the candidate; the gate opens where it is > 0."""


@torch.inference_mode()
def hook_activations(source: SAESource, tokens: torch.Tensor) -> torch.Tensor:
    """``[rows * positions, d_in]`` activations at the SAE's hook (the forward stops after that block)."""
    acts = capture_batch(source.model, tokens, [source.hook_name], stop_layer([source.hook_name]))
    return acts[source.hook_name].to(source.sae.dtype)


@torch.inference_mode()
def encode_firings(source: SAESource, acts: torch.Tensor) -> tuple[Firings, GateCandidates | None]:
    """Sparse codes of ``acts`` through the SAE's own encoder, and for hybrids the gate candidates."""
    sae = source.sae
    if isinstance(sae, HybridSAE):
        # the two calls HybridSAE.encode_sparse makes, keeping the gate pre-activation it drops
        sae._check_input(acts)
        selection, _ = get_kernels(sae.kernel_backend).encode(sae.process_sae_in(acts), sae.W_enc, sae.b_gate, sae.cfg.k)
        gate, values = sae._codes(selection)
        indices, order = torch.sort(selection.indices, dim=1)  # firings ordered by token, then latent
        gate, values = gate.gather(1, order), values.gather(1, order)
        fired = values > 0
        token = torch.arange(acts.shape[0]).unsqueeze(1).expand_as(indices)
        firings = Firings(token[fired], indices[fired], values[fired].float())
        return firings, GateCandidates(indices.reshape(-1), gate.reshape(-1).float())
    dense = sae.encode(acts)
    token, latent = torch.nonzero(dense > 0, as_tuple=True)
    return Firings(token, latent, dense[token, latent].float()), None
