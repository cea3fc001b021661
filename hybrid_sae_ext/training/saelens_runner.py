"""Train any registered architecture with SAELens' own runner, on any model ``load_model`` knows.

Why: SAELens' runner loads models only through ``HookedTransformer.from_pretrained``, which needs
the hub. Resolving ``cfg.model_name`` with ``hybrid_sae_ext.models.load_model`` first makes the
embedded default (``hybrid-sae-ext/tiny-lm``) and local model folders work offline, and keeps the
run reproducible from its config alone (the name in the config is what gets loaded).
"""

from __future__ import annotations

from typing import Any

from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE

from hybrid_sae_ext.models import load_model


def make_saelens_runner(cfg: LanguageModelSAERunnerConfig[Any]) -> LanguageModelSAETrainingRunner:
    """SAELens' ``LanguageModelSAETrainingRunner`` with the model loaded by ``load_model``."""
    model = load_model(cfg.model_name, device=cfg.llm_device or cfg.device)
    return LanguageModelSAETrainingRunner(cfg, override_model=model)


def run_saelens_training(cfg: LanguageModelSAERunnerConfig[Any]) -> TrainingSAE[Any]:
    """Train with SAELens' runner and return the trained SAE (saved under ``cfg.output_path``)."""
    return make_saelens_runner(cfg).run()
