"""What tools people pair with SAELens read from a hybrid SAE: ``activation_fn`` as SAELens' ``TopK``
(SAEDashboard dispatches on it), ``b_enc`` (SAEBench reads it for every non-gated SAE), and SAEDashboard's
``SaeVisRunner`` end to end where sae-dashboard is importable (see docs/peer-tools.md for installing it)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from sae_lens import HookedSAETransformer
from sae_lens.saes.topk_sae import TopK
from torch import nn

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.architectures import HybridTrainingSAE
from hybrid_sae_ext.models import TINY_LM_NAME, load_model
from tests.peer.conftest import HOOK, inference_sae, training_sae


@pytest.mark.parametrize("make", [training_sae, inference_sae], ids=["training", "inference"])
def test_activation_fn_is_a_topk_that_applies_the_gate(make, tmp_path: Path, acts: torch.Tensor) -> None:
    # Unrefined: the activation sees the pre-activation only; the default's refinement step runs after it
    # in encode (it needs the input), so there encode's values differ from the activation's.
    sae = make("hybrid", refine_steps=0) if make is training_sae else make("hybrid", tmp_path, refine_steps=0)
    assert isinstance(sae.activation_fn, TopK) and sae.activation_fn.k == sae.cfg.k
    with torch.no_grad():
        pre = sae.process_sae_in(acts) @ sae.W_enc
        codes = sae.activation_fn(pre)
        # The gate at work: by hand, top-k of pi_gate = pre + b_gate, open where pi_gate > 0, magnitude path values.
        pi_gate = pre + sae.b_gate
        top = pi_gate.topk(sae.cfg.k, dim=-1).indices
        magnitude = torch.relu(pre * sae.r_mag.exp() + sae.b_mag)
        expected = torch.zeros_like(pre).scatter(-1, top, (magnitude * (pi_gate > 0)).gather(-1, top))
        torch.testing.assert_close(codes, expected)
        assert 0 < int((codes > 0).sum()) < int((pi_gate.gather(-1, top) != 0).sum())  # some gates closed
        torch.testing.assert_close(sae.encode(acts), codes)


def test_activation_fn_follows_the_sae_through_moves_copies_and_swapped_parameters(tmp_path: Path, acts: torch.Tensor) -> None:
    sae = inference_sae("hybrid", tmp_path)
    assert isinstance(sae, HybridSAE) and not list(sae.activation_fn.parameters())
    assert set(sae.state_dict()) == {"W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag", "refine_rate"}
    with torch.no_grad():
        before = sae.encode(acts)
        twin = copy.deepcopy(sae)
        twin.b_mag.add_(1.0)  # the copy's activation reads the copy's parameters, not the original's
        assert torch.equal(sae.encode(acts), before) and not torch.equal(twin.encode(acts), before)
        sae.to(torch.float64)
        torch.testing.assert_close(sae.encode(acts.double()).float(), before)
        sae.to(torch.float32)
        # SAEDashboard's masking context swaps whole parameters (setattr of a new nn.Parameter).
        sae.b_mag = nn.Parameter(sae.b_mag + 1.0)
        assert not torch.equal(sae.encode(acts), before)


def test_b_enc_is_a_read_only_alias_of_the_magnitude_bias(acts: torch.Tensor) -> None:
    sae = training_sae("hybrid")
    assert isinstance(sae, HybridTrainingSAE)
    assert torch.equal(sae.b_enc, sae.b_mag) and not isinstance(sae.b_enc, nn.Parameter)
    assert "b_enc" not in sae.state_dict()
    with pytest.raises((AttributeError, KeyError)):
        sae.b_enc = nn.Parameter(torch.zeros(sae.cfg.d_sae))
    assert sae.b_enc.cpu().tolist() == sae.b_mag.detach().tolist()  # what SAEBench reads
    with torch.no_grad():
        sae.fold_activation_norm_scaling_factor(2.0)  # the alias follows the folded bias
    assert torch.equal(sae.b_enc, sae.b_mag)


@pytest.mark.skipif(importlib.util.find_spec("sae_dashboard") is None,
                    reason="sae-dashboard is not installed (it pins transformer-lens < 3; docs/peer-tools.md "
                           "installs it beside this project with --no-deps)")
def test_saedashboard_runner_completes_on_the_hybrid(tmp_path: Path) -> None:
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    sae_model = load_model(TINY_LM_NAME, model_class=HookedSAETransformer)  # its own: the runner wraps the model

    sae = inference_sae("hybrid", tmp_path)
    # Enough tokens for its top-k example and quantile tables: 16 rows of 32 (BOS, then random tokens).
    generator = torch.Generator().manual_seed(0)
    model_tokens = torch.randint(1, sae_model.cfg.d_vocab, (16, 32), generator=generator)
    model_tokens[:, 0] = sae_model.tokenizer.bos_token_id
    features = list(range(8))
    cfg = SaeVisConfig(hook_point=HOOK, features=features, minibatch_size_features=8, minibatch_size_tokens=2,
                       device="cpu", dtype="float32", verbose=False)
    _, cache = sae_model.run_with_cache(model_tokens, names_filter=HOOK)
    with torch.no_grad():
        expected = sae.encode(cache[HOOK])[..., features].amax(dim=(0, 1))
    data = SaeVisRunner(cfg).run(encoder=sae, model=sae_model, tokens=model_tokens)
    torch.testing.assert_close(torch.tensor(data.feature_stats.max), expected, rtol=1e-4, atol=1e-4)
