"""Fixtures: tiny saved SAEs (hybrid and SAELens topk) on the embedded model, their dashboards, and a
dense reference of their codes computed with plain tensor math (no code shared with the dashboards)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, TopKSAE, TopKSAEConfig

from hybrid_sae_ext.activations.tokens import load_text_dataset, token_rows
from hybrid_sae_ext.architectures import HybridSAE
from hybrid_sae_ext.dashboards.build import build_dashboards
from hybrid_sae_ext.dashboards.config import DashboardConfig
from hybrid_sae_ext.models import TINY_LM_NAME, load_model

HOOK = "blocks.1.hook_resid_pre"
CONTEXT = 33
TOKENS = 1500  # 47 rows of 32 non-BOS tokens
CHROMIUM = Path("/usr/lib/chromium/chromium")
TEXT = 'def read(path):\n    """Return the contents of the file at path."""'


def save_tiny_sae(sae: SAE, folder: Path) -> Path:
    sae.cfg.metadata.model_name = TINY_LM_NAME
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.context_size = CONTEXT
    sae.cfg.metadata.prepend_bos = True
    sae.save_model(str(folder))
    return folder


@pytest.fixture(scope="session")
def hybrid_sae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    sae = HybridSAE(d_model=128, n_features=48, k_sparse=4)
    with torch.no_grad():
        sae.b_gate.normal_(-3.0, 1.5)  # some candidates keep the gate closed
        sae.b_mag.normal_(0.0, 0.3)
    return save_tiny_sae(sae, tmp_path_factory.mktemp("hybrid") / "sae")


@pytest.fixture(scope="session")
def topk_sae_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=128, d_sae=40, k=3))
    return save_tiny_sae(sae, tmp_path_factory.mktemp("topk") / "sae")


def dashboard_config(sae_path: Path | str, out: Path | str, **overrides: object) -> DashboardConfig:
    settings = dict(sae_path=str(sae_path), out=str(out), tokens=TOKENS, batch_rows=8, n_top=5, quantile_groups=4,
                    examples_per_group=2, sample_size=16, histogram_bins=12, context_before=6, context_after=2,
                    n_logits=5, n_neighbours=4, checkpoint_every=1, progress=False)
    return DashboardConfig(**{**settings, **overrides})


@pytest.fixture(scope="session")
def hybrid_dashboards(hybrid_sae_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dash-hybrid") / "out"
    build_dashboards(dashboard_config(hybrid_sae_path, out))
    return out


@pytest.fixture(scope="session")
def topk_dashboards(topk_sae_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dash-topk") / "out"
    build_dashboards(dashboard_config(topk_sae_path, out))
    return out


@dataclass
class Reference:
    """Dense codes ``[rows, positions, d_sae]`` (BOS column included), tokens, and the SAE, computed directly."""

    sae: SAE
    tokens: torch.Tensor
    codes: torch.Tensor
    acts: torch.Tensor


@torch.inference_mode()
def dense_reference(sae_path: Path) -> Reference:
    model = load_model(TINY_LM_NAME)
    sae = SAE.load_from_disk(str(sae_path))
    rows = token_rows(load_text_dataset("embedded"), model.tokenizer, CONTEXT, True)
    n_rows = -(-TOKENS // (CONTEXT - 1))
    tokens = torch.stack(list(itertools.islice(rows, n_rows)))
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
    acts = cache[HOOK]
    return Reference(sae, tokens, sae.encode(acts), acts)


@pytest.fixture(scope="session")
def hybrid_reference(hybrid_sae_path: Path) -> Reference:
    return dense_reference(hybrid_sae_path)


@pytest.fixture(scope="session")
def topk_reference(topk_sae_path: Path) -> Reference:
    return dense_reference(topk_sae_path)


@pytest.fixture(scope="session")
def reference(hybrid_sae_path: Path) -> Callable[[str], tuple[list[str], torch.Tensor]]:
    """Token strings and dense codes ``[tokens, d_sae]`` of a text (BOS dropped), via SAELens' own encode."""
    model, sae = load_model(TINY_LM_NAME), SAE.load_from_disk(str(hybrid_sae_path))

    @torch.inference_mode()
    def codes(text: str) -> tuple[list[str], torch.Tensor]:
        tokens = model.to_tokens(text)
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        return [model.tokenizer.decode([int(t)]) for t in tokens[0, 1:]], sae.encode(cache[HOOK])[0, 1:]

    return codes


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)
