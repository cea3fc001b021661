"""Our splice metrics agree with ``sae_lens.evals`` on the same tokens, for a SAELens and a hybrid SAE.

SAELens reads tokens from an ``ActivationsStore``; a pretokenized dataset holding our rows makes
it see exactly our batches. A fresh store per SAELens function is needed because
``reset_input_dataset`` does not rewind its token stream. Both sides exclude the tokenizer's
special tokens. Remaining definitional difference: SAELens' cosine similarity is NaN where the
reconstruction is zero and ours is 0; neither SAE here outputs exact zeros, so they agree.
"""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE, HookedSAETransformer, TopKSAE, TopKSAEConfig
from sae_lens.evals import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.util import get_special_token_ids

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.evals import evaluate_sae

from .conftest import BATCH, HOOK

TOL = 1e-4


def _topk_sae(d_in: int) -> SAE[Any]:
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=256, k=12))
    with torch.no_grad():  # a b_dec near the activations' mean keeps the splice from being hopeless
        sae.b_dec.normal_(std=0.1)
    return sae


def _hybrid_sae(d_in: int) -> SAE[Any]:
    return HybridSAE(d_model=d_in, n_features=256, k_sparse=12)


def _store(model: HookedSAETransformer, sae: SAE[Any], tokens: torch.Tensor) -> ActivationsStore:
    return ActivationsStore.from_sae(
        model,
        sae,
        dataset=Dataset.from_dict({"tokens": tokens.tolist()}),
        context_size=tokens.shape[1],
        streaming=False,
        store_batch_size_prompts=BATCH,
        total_tokens=tokens.shape[0],
    )


@pytest.mark.parametrize("make_sae", [_topk_sae, _hybrid_sae], ids=["topk", "hybrid"])
def test_matches_saelens_evals(
    make_sae: Callable[[int], SAE[Any]],
    sae_model: HookedSAETransformer,
    tokens: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    tokens = tokens.clone()  # special tokens mid-row and in the last position exercise the masks' offsets
    tokens[1, tokens.shape[1] // 2] = sae_model.tokenizer.eos_token_id
    tokens[2, -1] = sae_model.tokenizer.eos_token_id
    sae = make_sae(sae_model.cfg.d_model)
    sae.cfg.metadata.hook_name = HOOK
    sae.cfg.metadata.prepend_bos = True
    n_batches = tokens.shape[0] // BATCH
    ignore = list(get_special_token_ids(sae_model.tokenizer))

    ours = evaluate_sae(sae_model, sae, tokens, batch_size=BATCH)
    downstream = get_downstream_reconstruction_metrics(
        sae, sae_model, _store(sae_model, sae, tokens), ActivationScaler(),
        compute_kl=True, compute_ce_loss=True, n_batches=n_batches,
        eval_batch_size_prompts=BATCH, ignore_tokens=ignore,
    )
    sparsity, per_latent = get_sparsity_and_variance_metrics(
        sae, sae_model, _store(sae_model, sae, tokens), ActivationScaler(), n_batches=n_batches,
        compute_l2_norms=False, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=True, eval_batch_size_prompts=BATCH,
        model_kwargs={}, ignore_tokens=ignore,
    )

    pairs = {
        "ce_loss_recovered": downstream["ce_loss_score"],
        "ce_loss_clean": downstream["ce_loss_without_sae"],
        "ce_loss_with_sae": downstream["ce_loss_with_sae"],
        "ce_loss_zero_ablation": downstream["ce_loss_with_ablation"],
        "kl_div_with_sae": downstream["kl_div_with_sae"],
        "kl_div_zero_ablation": downstream["kl_div_with_ablation"],
        "l0_mean": sparsity["l0"],
        "explained_variance": sparsity["explained_variance"],
        "mse": sparsity["mse"],
        "cosine_similarity": sparsity["cossim"],
    }
    for name, expected in pairs.items():
        # relative for mse, which is O(100) on this model's residual stream
        assert getattr(ours, name) == pytest.approx(expected, abs=TOL, rel=TOL), name
    assert ours.ce_loss_recovered < 1.0 and ours.kl_div_with_sae > 1e-3  # a real, imperfect splice
    assert ours.feature_density == pytest.approx(per_latent["feature_density"], abs=1e-6)
