"""The shipped pretrained SAE loads offline through SAELens' own from_pretrained and matches its recorded evaluation."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.evals import evaluate_sae, load_eval_tokens
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from hybrid_sae_ext.pretrained import (
    DEFAULT_SAE_ID,
    PRETRAINED_RELEASE,
    load_pretrained,
    load_pretrained_with_sparsity,
    packaged_sae_loader,
    pretrained_path,
    pretrained_record,
)


def test_saelens_from_pretrained_loads_the_shipped_sae_offline() -> None:
    sae = SAE.from_pretrained(PRETRAINED_RELEASE, DEFAULT_SAE_ID, converter=packaged_sae_loader)
    assert isinstance(sae, HybridSAE)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.model_name) == (128, 1024, TINY_LM_NAME)
    from_disk = SAE.load_from_disk(str(pretrained_path()))
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), from_disk.state_dict().values()))
    _, cfg_dict, log_sparsity = load_pretrained_with_sparsity()
    assert cfg_dict["architecture"] == "hybrid"
    assert log_sparsity is not None and log_sparsity.shape == (1024,) and bool((log_sparsity <= 0).all())


def test_unknown_ids_and_releases_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"sae_id='blocks.0.hook_resid_pre' is not a shipped pretrained SAE"):
        load_pretrained("blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match=r"release 'someone/else' is not shipped with hybrid_sae_ext"):
        SAE.from_pretrained("someone/else", DEFAULT_SAE_ID, converter=packaged_sae_loader)


def test_spliced_shipped_sae_reproduces_its_recorded_evaluation() -> None:
    """The record's numbers come from the training command's own evaluation (validation split, 80 rows of 128)."""
    record = pretrained_record()
    expected = record["evaluation"]
    assert "scripts/train_hybrid_sae.py" in record["command"] and f"--seed {record['seed']}" in record["command"]
    model = load_model(TINY_LM_NAME)
    tokens = load_eval_tokens(model, split=expected["split"], context_size=expected["context_size"],
                              n_rows=expected["rows"])
    result = evaluate_sae(model, load_pretrained(), tokens, DEFAULT_SAE_ID, batch_size=8)
    assert result.ce_loss_recovered == pytest.approx(expected["ce_loss_recovered"], abs=1e-3)
    assert result.fvu == pytest.approx(expected["fvu"], abs=1e-3)
    assert result.l0_mean == pytest.approx(expected["l0_mean"], abs=0.01)
    assert result.ce_loss_recovered > 0.98  # a useful SAE, not only a reproducible one
