"""Training: a crash-safe, architecture-agnostic trainer and SAELens' own runner on local models."""

from hybrid_sae_ext.training.cache_source import CacheActivationSource
from hybrid_sae_ext.training.checkpoint import CheckpointError, CheckpointManager
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import ActivationSource, TensorActivationSource
from hybrid_sae_ext.training.trainer import NonFiniteError, Trainer, TrainResult, build_training_sae

__all__ = [
    "ActivationSource",
    "CacheActivationSource",
    "CheckpointError",
    "CheckpointManager",
    "NonFiniteError",
    "TensorActivationSource",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_training_sae",
]
