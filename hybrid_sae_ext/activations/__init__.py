"""Activation capture into sharded safetensors caches, and shuffled, resumable reading back.

Why: SAE training re-reads activations for many epochs and sweeps; capturing them once (several
hooks per forward pass) and streaming them from disk is far cheaper than re-running the model.
"""

from hybrid_sae_ext.activations.cache import (
    ActivationCache,
    CacheWriter,
    Manifest,
    ShardInfo,
    open_cache,
    read_manifest,
)
from hybrid_sae_ext.activations.capture import (
    CaptureConfig,
    CaptureReport,
    capture_activations,
    capture_batch,
    hook_widths,
    stop_layer,
    validate_hook_names,
)
from hybrid_sae_ext.activations.reader import ActivationReader, ReaderConfig, ReaderPosition
from hybrid_sae_ext.activations.saelens import export_saelens_dataset
from hybrid_sae_ext.activations.tokens import load_text_dataset, token_rows

__all__ = [
    "ActivationCache",
    "ActivationReader",
    "CacheWriter",
    "CaptureConfig",
    "CaptureReport",
    "Manifest",
    "ReaderConfig",
    "ReaderPosition",
    "ShardInfo",
    "capture_activations",
    "capture_batch",
    "hook_widths",
    "export_saelens_dataset",
    "load_text_dataset",
    "open_cache",
    "read_manifest",
    "stop_layer",
    "token_rows",
    "validate_hook_names",
]
