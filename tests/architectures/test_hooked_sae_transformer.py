"""A HybridSAE splices into SAELens' HookedSAETransformer like any built-in SAE."""


import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, HookedSAETransformer
from transformer_lens import HookedTransformerConfig

from hybrid_sae_ext import HybridSAE, HybridSAEConfig
from hybrid_sae_ext.experiments.variants import VARIANTS, build_variant_sae, settings_at

sys.path.insert(0, str(Path(__file__).parent))
from hybrid_reference import leaf_params, reference_inference  # noqa: E402

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
    sae = HybridSAE(cfg)
    with torch.no_grad():  # away from the zero init, so a splice that drops any parameter shows
        for param in (sae.b_dec, sae.b_gate, sae.r_mag, sae.b_mag):
            param.normal_(0.0, 0.2)
    return sae


def test_run_with_saes_add_sae_reset_saes() -> None:
    model, sae = _model(), _sae()
    tokens = torch.randint(0, 50, (3, 12))
    clean = model(tokens)

    spliced = model.run_with_saes(tokens, saes=[sae])
    assert not model.acts_to_saes, "run_with_saes must leave the model clean"
    # the splice must be exactly "replace the activation by the reference reconstruction"
    params = leaf_params(sae)

    def reference_splice(act: torch.Tensor, hook) -> torch.Tensor:  # noqa: ARG001
        return reference_inference(params, act.reshape(-1, 32), 8)[1].reshape(act.shape).to(act.dtype)

    by_hand = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, reference_splice)])
    torch.testing.assert_close(spliced, by_hand, rtol=1e-4, atol=1e-4)
    assert (spliced - clean).abs().max() > 1e-2

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


def test_hook_z_sae_splices_on_attention_heads() -> None:
    """``hook_z`` activations are ``[batch, pos, n_heads, d_head]``; SAELens flattens them when
    ``reshape_activations="hook_z"`` and the hybrid's input check must let them through."""
    model = _model()
    hook = "blocks.0.attn.hook_z"
    cfg = HybridSAEConfig(d_in=4 * 8, d_sae=64, k=6, reshape_activations="hook_z")
    cfg.metadata.hook_name = hook
    sae = HybridSAE(cfg)
    tokens = torch.randint(0, 50, (2, 9))
    _, clean_cache = model.run_with_cache(tokens)
    z = clean_cache[hook]
    assert z.shape == (2, 9, 4, 8)

    _, cache = model.run_with_cache_with_saes(tokens, saes=[sae])
    codes = cache[f"{hook}.hook_sae_acts_post"]
    assert codes.shape == (2, 9, 64) and ((codes != 0).sum(-1) <= 6).all() and (codes != 0).any()
    expected = reference_inference(leaf_params(sae), z.reshape(-1, 32), 6)[1].reshape(2, 9, 4, 8)
    torch.testing.assert_close(cache[f"{hook}.hook_sae_output"].double(), expected, rtol=1e-4, atol=1e-5)

    model.add_sae(sae, use_error_term=True)
    with_error_term = model(tokens)
    model.reset_saes()
    torch.testing.assert_close(with_error_term, model(tokens), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"hook_z input has shape \(2, 9, 32\)"):
        sae.encode(z.reshape(2, 9, 32))


HYBRID_VARIANTS = [name for name, variant in VARIANTS.items() if variant.architecture == "hybrid"]


@pytest.mark.parametrize("name", HYBRID_VARIANTS)
def test_every_hybrid_variant_saves_loads_splices_and_encodes_each_token_alone(name: str, tmp_path: Path) -> None:
    """Each hybrid variant of the comparison, after a few training steps (so thresholds, rates and biases have
    moved), is saved for inference, loaded by SAELens, spliced into a HookedSAETransformer with and without the
    error term, and encodes a token the same whether it comes alone or in a batch (no batch statistics)."""
    variant = VARIANTS[name]
    sae = build_variant_sae(variant, settings_at(variant, 4.0), d_in=32, d_sae=128, device="cpu", seed=0)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    acts = torch.randn(6, 64, 32)
    for batch in acts:
        optimizer.zero_grad()
        sae.hybrid_forward(batch, torch.rand(128) < 0.2).losses.total().backward()
        optimizer.step()
    sae.eval()
    sae.cfg.metadata.hook_name = HOOK
    sae.save_inference_model(str(tmp_path))
    loaded = SAE.load_from_disk(str(tmp_path))
    assert isinstance(loaded, HybridSAE) and loaded.cfg.refine_steps == sae.cfg.refine_steps

    x = torch.randn(20, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
        alone = torch.cat([loaded.encode(x[i : i + 1]) for i in range(20)])
        torch.testing.assert_close(alone, loaded.encode(x), rtol=1e-5, atol=1e-6)
        assert ((loaded.encode(x) != 0).sum(-1) <= loaded.cfg.k).all() and (loaded.encode(x) != 0).any()

    model = _model()
    tokens = torch.randint(0, 50, (2, 10))
    clean = model(tokens)
    spliced = model.run_with_saes(tokens, saes=[loaded])
    assert (spliced - clean).abs().max() > 1e-3
    with_error = model.run_with_saes(tokens, saes=[loaded], use_error_term=True)
    torch.testing.assert_close(with_error, clean, rtol=1e-4, atol=1e-4)
