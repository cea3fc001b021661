"""hybrid_sae_ext: HybridSAE and fast sparse autoencoders for SAELens and TransformerLens.

Importing the package registers its architectures with SAELens, so ``architecture="hybrid"``
works in SAELens configs and ``SAE.load_from_disk`` finds ``HybridSAE``.
"""

from hybrid_sae_ext.architectures import (
    ARCHITECTURE_ALIASES,
    HybridSAE,
    HybridSAEConfig,
    HybridTrainingSAE,
    HybridTrainingSAEConfig,
    SparseCodes,
    register_architectures,
    resolve_architecture,
)

register_architectures()

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURE_ALIASES",
    "HybridSAE",
    "HybridSAEConfig",
    "HybridTrainingSAE",
    "HybridTrainingSAEConfig",
    "SparseCodes",
    "register_architectures",
    "resolve_architecture",
]
