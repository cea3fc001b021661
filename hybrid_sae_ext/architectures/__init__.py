"""SAE architectures, each a SAELens plug-in (config + SAE + training config + training SAE)."""

from hybrid_sae_ext.architectures.hybrid import (
    HybridLosses,
    HybridSAE,
    HybridTrainingSAE,
    HybridTrainOutput,
    SparseCodes,
)
from hybrid_sae_ext.architectures.hybrid_config import HybridSAEConfig, HybridTrainingSAEConfig
from hybrid_sae_ext.architectures.registry import (
    ARCHITECTURE_ALIASES,
    register_architectures,
    resolve_architecture,
    training_classes,
)

__all__ = [
    "ARCHITECTURE_ALIASES",
    "HybridLosses",
    "HybridSAE",
    "HybridSAEConfig",
    "HybridTrainOutput",
    "HybridTrainingSAE",
    "HybridTrainingSAEConfig",
    "SparseCodes",
    "register_architectures",
    "resolve_architecture",
    "training_classes",
]
