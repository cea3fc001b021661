"""The dashboards' codes and gate candidates of a hybrid SAE against the independent float64 reference
(``tests/architectures/hybrid_reference.py``): ``tests/mutation`` checks that wrong gate or magnitude
formulas in ``hybrid.py`` fail here too, since the dashboards encode through the SAE's own public method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "architectures"))
from hybrid_reference import leaf_params, reference_encode, reference_inference  # noqa: E402

from hybrid_sae_ext.architectures import HybridSAE  # noqa: E402
from hybrid_sae_ext.dashboards.source import encode_firings, load_source  # noqa: E402
from tests.dashboards.conftest import save_tiny_sae  # noqa: E402

D_IN, D_SAE, K = 128, 48, 5


@pytest.fixture(scope="module")
def float64_hybrid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved hybrid with every parameter far from its init (exp(r_mag), b_mag and the gate all matter)."""
    sae = HybridSAE(d_model=D_IN, n_features=D_SAE, k_sparse=K, dtype="float64", selection_dtype="float32")
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in ("W_enc", "b_dec", "b_gate", "r_mag", "b_mag"):
            getattr(sae, name).copy_(torch.randn(getattr(sae, name).shape, generator=gen, dtype=torch.float64))
        sae.W_enc.mul_(0.1)
        sae.b_gate.sub_(3.0)
        sae.r_mag.mul_(0.4)
    return save_tiny_sae(sae, tmp_path_factory.mktemp("float64-hybrid") / "sae")


def test_dashboard_codes_and_gates_match_the_reference(float64_hybrid: Path) -> None:
    source = load_source(float64_hybrid)
    assert source.has_gate_candidates
    acts = torch.randn(200, D_IN, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    firings, candidates = encode_firings(source, acts)
    _, chosen, pi_gate, _ = reference_encode(leaf_params(source.sae), acts, K)
    codes = reference_inference(leaf_params(source.sae), acts, K)[0]  # the default refines (refine_steps=1)

    token, latent = torch.nonzero(codes, as_tuple=True)  # ordered by token, then latent, as the firings are
    assert torch.equal(firings.token, token) and torch.equal(firings.latent, latent)
    torch.testing.assert_close(firings.value, codes[token, latent].detach().float())
    assert candidates is not None
    want_latent = torch.nonzero(chosen, as_tuple=True)[1]
    assert torch.equal(candidates.latent, want_latent)
    torch.testing.assert_close(candidates.gate, pi_gate.detach()[chosen].float())
    assert (candidates.gate > 0).any() and ((candidates.gate > -0.05) & (candidates.gate <= 0)).any(), (
        "some gates open, some shut by less than 0.05"
    )


def test_dashboards_refuse_bad_activations_through_the_sae_check(float64_hybrid: Path) -> None:
    source = load_source(float64_hybrid)
    with pytest.raises(ValueError, match=r"input has shape \(0, 128\): an empty batch"):
        encode_firings(source, torch.zeros(0, D_IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="input activations contain NaN or Inf"):
        encode_firings(source, torch.full((2, D_IN), float("inf"), dtype=torch.float64))
