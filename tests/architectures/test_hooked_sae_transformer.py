"""A HybridSAE splices into SAELens' HookedSAETransformer like any built-in SAE."""


import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformerConfig

from hybrid_sae_ext import HybridSAE, HybridSAEConfig

HOOK = "blocks.1.hook_resid_pre"


def _model() -> HookedSAETransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=64, d_vocab=50,
        act_fn="gelu_new", normalization_type="LN",
    )
    return HookedSAETransformer(cfg).eval()


def _sae() -> HybridSAE:
    cfg = HybridSAEConfig(d_in=32, d_sae=128, k=8)
    cfg.metadata.hook_name = HOOK
    return HybridSAE(cfg)


def test_run_with_saes_add_sae_reset_saes() -> None:
    model, sae = _model(), _sae()
    tokens = torch.randint(0, 50, (3, 12))
    clean = model(tokens)

    spliced = model.run_with_saes(tokens, saes=[sae])
    assert not torch.allclose(spliced, clean)
    assert not model.acts_to_saes, "run_with_saes must leave the model clean"

    _, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == (3, 12, 128) and ((acts != 0).sum(-1) <= 8).all()
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_output"], sae(cache[f"{HOOK}.hook_sae_input"]))

    model.add_sae(sae)
    torch.testing.assert_close(model(tokens), spliced)
    model.reset_saes()
    torch.testing.assert_close(model(tokens), clean)


def test_error_term_makes_splice_exact() -> None:
    model, sae = _model(), _sae()
    tokens = torch.randint(0, 50, (2, 10))
    clean = model(tokens)
    model.add_sae(sae, use_error_term=True)
    with_error_term = model(tokens)
    model.reset_saes()
    model.add_sae(sae)
    assert not torch.allclose(model(tokens), clean)
    torch.testing.assert_close(with_error_term, clean, atol=1e-5, rtol=1e-5)
