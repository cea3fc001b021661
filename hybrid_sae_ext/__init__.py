"""hybrid_sae_ext: HybridSAE and fast sparse autoencoders for SAELens and TransformerLens.

Importing the package registers its architectures with SAELens, so ``architecture="hybrid"``
works in SAELens configs and ``SAE.load_from_disk`` finds ``HybridSAE``.
"""

import warnings

from tqdm import TqdmWarning

# tqdm.auto (imported by SAELens' dependencies) warns in a Jupyter kernel without ipywidgets, then falls back to
# the text bar; this package's bars are text bars anyway (hybrid_sae_ext.progress), so the warning says nothing.
warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)

from hybrid_sae_ext.architectures import (  # noqa: E402
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
