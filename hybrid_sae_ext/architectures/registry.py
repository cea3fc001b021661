"""Registration of the project's architectures in SAELens' registry, and name resolution.

Why: users write ``architecture="hybrid"`` in SAELens configs; SAELens finds classes through
``sae_lens.registry``. Registration must survive re-imports and ``importlib.reload``.
"""

from __future__ import annotations

from typing import Any

from sae_lens import registry

from hybrid_sae_ext.architectures.hybrid import HybridSAE, HybridTrainingSAE
from hybrid_sae_ext.architectures.hybrid_config import HybridSAEConfig, HybridTrainingSAEConfig

ARCHITECTURE_ALIASES: dict[str, str] = {
    "vanilla": "standard",
    "gated": "gated",
    "ksparse": "topk",
    "hybrid": "hybrid",
}
"""Friendly names that are plain aliases of a SAELens architecture (its defaults, nothing changed)."""


_PROJECT_CLASSES: dict[str, tuple[tuple[type, type], tuple[type, type]]] = {
    "hybrid": ((HybridSAE, HybridSAEConfig), (HybridTrainingSAE, HybridTrainingSAEConfig)),
}


def _same_class(a: type, b: type) -> bool:
    """True for the same class, also across ``importlib.reload`` (which creates a new object)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _register(table: dict[str, tuple[Any, Any]], name: str, entry: tuple[type, type]) -> None:
    current = table.get(name)
    if current is not None and not _same_class(current[0], entry[0]):
        raise ValueError(
            f"SAELens architecture {name!r} is already registered to "
            f"{current[0].__module__}.{current[0].__qualname__}; refusing to replace it"
        )
    table[name] = entry


def register_architectures() -> None:
    """Register the project's architectures with SAELens (idempotent)."""
    for name, (inference, training) in _PROJECT_CLASSES.items():
        _register(registry.SAE_CLASS_REGISTRY, name, inference)
        _register(registry.SAE_TRAINING_CLASS_REGISTRY, name, training)


def resolve_architecture(name: str) -> str:
    """Map a friendly name (``vanilla``, ``ksparse``...) or a SAELens name to a registered one."""
    resolved = ARCHITECTURE_ALIASES.get(name, name)
    if resolved not in registry.SAE_TRAINING_CLASS_REGISTRY:
        allowed = sorted(set(ARCHITECTURE_ALIASES) | set(registry.SAE_TRAINING_CLASS_REGISTRY))
        raise ValueError(f"Unknown SAE architecture {name!r}; allowed: {', '.join(allowed)}")
    return resolved


def training_classes(name: str) -> tuple[type, type]:
    """The (TrainingSAE class, TrainingSAEConfig class) registered for ``name``."""
    return registry.get_sae_training_class(resolve_architecture(name))
