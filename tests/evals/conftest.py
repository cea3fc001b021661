"""Shared fixtures: the embedded tiny LM (plain and SAE-ready) and a few rows of held-out tokens."""

import pytest
import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer

from hybrid_sae_ext.evals import load_eval_tokens
from hybrid_sae_ext.models import TINY_LM_NAME, load_model

MODEL_NAME = TINY_LM_NAME
HOOK = "blocks.0.hook_resid_post"
CONTEXT = 32
BATCH = 4
N_ROWS = 8


@pytest.fixture(scope="session")
def model() -> HookedTransformer:
    return load_model(MODEL_NAME)


@pytest.fixture(scope="session")
def sae_model() -> HookedSAETransformer:
    return load_model(MODEL_NAME, model_class=HookedSAETransformer)


@pytest.fixture(scope="session")
def tokens(model: HookedTransformer) -> torch.Tensor:
    return load_eval_tokens(model, context_size=CONTEXT, n_rows=N_ROWS)
