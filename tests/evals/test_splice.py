"""Splice evaluation: exact end points (identity and zero SAEs) and sane metrics for a random HybridSAE."""

import json
import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer

from hybrid_sae_ext import HybridSAE
from hybrid_sae_ext.evals import evaluate_sae, special_token_mask
from hybrid_sae_ext.io import write_json_atomic

from .conftest import BATCH, HOOK


def _standard_sae(w_enc: torch.Tensor, w_dec: torch.Tensor) -> StandardSAE:
    d_in, d_sae = w_enc.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    sae.cfg.metadata.hook_name = HOOK
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def identity_sae(d_in: int) -> StandardSAE:
    """relu(x) - relu(-x) = x: latents [I, -I] and decoder [I; -I] reconstruct any x exactly."""
    eye = torch.eye(d_in)
    return _standard_sae(torch.cat([eye, -eye], dim=1), torch.cat([eye, -eye], dim=0))


def zero_sae(d_in: int) -> StandardSAE:
    """Latents fire (identity encoder) but the decoder and its bias are zero: output is always 0."""
    return _standard_sae(torch.eye(d_in), torch.zeros(d_in, d_in))


def test_identity_sae_recovers_everything(model: HookedTransformer, tokens: torch.Tensor) -> None:
    result = evaluate_sae(model, identity_sae(model.cfg.d_model), tokens, batch_size=BATCH)
    assert result.ce_loss_with_sae == pytest.approx(result.ce_loss_clean, abs=1e-6)
    assert result.ce_loss_recovered == pytest.approx(1.0, abs=1e-6)
    assert result.kl_div_with_sae == pytest.approx(0.0, abs=1e-6)
    assert result.kl_div_zero_ablation > 0
    assert result.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert result.mse == pytest.approx(0.0, abs=1e-8)
    assert result.cosine_similarity == pytest.approx(1.0, abs=1e-6)
    assert result.l0_mean == pytest.approx(model.cfg.d_model)  # one of each +/- pair fires per dimension
    n_excluded = int(special_token_mask(tokens, result.excluded_token_ids).sum())
    assert result.excluded_token_ids == [model.tokenizer.bos_token_id]
    assert n_excluded >= tokens.shape[0]  # every row starts with BOS
    assert (result.n_tokens, result.n_excluded_tokens) == (tokens.numel() - n_excluded, n_excluded)


def test_zero_sae_recovers_nothing(model: HookedTransformer, tokens: torch.Tensor) -> None:
    """Exactly 0 needs nothing excluded: zero ablation zeroes BOS too, the spliced SAE leaves BOS alone."""
    sae = zero_sae(model.cfg.d_model)
    result = evaluate_sae(model, sae, tokens, batch_size=BATCH, exclude_special_tokens=False)
    assert result.ce_loss_with_sae == pytest.approx(result.ce_loss_zero_ablation, abs=1e-6)
    assert result.ce_loss_recovered == pytest.approx(0.0, abs=1e-6)
    assert result.kl_div_with_sae == pytest.approx(result.kl_div_zero_ablation, abs=1e-6)
    assert result.normalized_mse == pytest.approx(1.0)
    assert result.cosine_similarity == 0.0
    assert result.excluded_token_ids == [] and result.n_tokens == tokens.numel()

    # With BOS excluded (the default), the splice keeps BOS while the ablation zeroes it: not 0.
    assert evaluate_sae(model, sae, tokens, batch_size=BATCH).ce_loss_recovered != pytest.approx(0.0, abs=1e-6)


def _by_hand(model: HookedTransformer, sae: HybridSAE, batch: torch.Tensor) -> dict[str, float]:
    """The splice metrics computed directly (no keep mask, nothing excluded), sharing no code with evals."""
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(batch, names_filter=HOOK)
        x = cache[HOOK]
        sae_logits = model.run_with_hooks(batch, fwd_hooks=[(HOOK, lambda act, hook: sae(act))])
        zero_logits = model.run_with_hooks(batch, fwd_hooks=[(HOOK, lambda act, hook: torch.zeros_like(act))])
        x_hat, codes = sae(x), sae.encode(x)

    def ce(logits: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten()))

    def kl(logits: torch.Tensor) -> float:
        p_log, q_log = clean_logits.log_softmax(-1), logits.log_softmax(-1)
        return float((p_log.exp() * (p_log - q_log)).sum(-1).mean())

    error = ((x - x_hat) ** 2).sum(-1)
    return {
        "ce_loss_clean": ce(clean_logits), "ce_loss_with_sae": ce(sae_logits), "ce_loss_zero_ablation": ce(zero_logits),
        "kl_div_with_sae": kl(sae_logits), "kl_div_zero_ablation": kl(zero_logits),
        "mse": float(error.mean()), "fvu": float(error.sum() / ((x - x.mean((0, 1))) ** 2).sum()),
        "l0_mean": float((codes != 0).sum(-1).float().mean()),
    }


def test_random_hybrid_sae(model: HookedTransformer, tokens: torch.Tensor, tmp_path) -> None:
    torch.manual_seed(0)
    sae = HybridSAE(d_model=model.cfg.d_model, n_features=512, k_sparse=16)
    sae.cfg.metadata.hook_name = HOOK
    result = evaluate_sae(model, sae, tokens, batch_size=BATCH, n_batches=1, exclude_special_tokens=False)
    assert result.n_sequences == BATCH
    expected = _by_hand(model, sae, tokens[:BATCH])
    for name, value in expected.items():
        assert getattr(result, name) == pytest.approx(value, rel=1e-4, abs=1e-6), name
    recovered = (expected["ce_loss_zero_ablation"] - expected["ce_loss_with_sae"]) / (
        expected["ce_loss_zero_ablation"] - expected["ce_loss_clean"])
    assert result.ce_loss_recovered == pytest.approx(recovered, rel=1e-4)
    assert result.kl_div_with_sae > 1e-3, "the random SAE must change the model, or the comparison above is vacuous"
    summary = result.summary()
    assert all(math.isfinite(value) for value in summary.values()), summary
    assert result.l0_mean <= 16 and len(result.l0_histogram) <= 17
    assert sum(result.l0_histogram) == result.n_tokens
    assert result.explained_variance == pytest.approx(1.0 - result.fvu)
    assert sum(result.density_histogram.counts) + result.n_dead == result.d_sae == 512
    density = torch.tensor(result.feature_density)
    assert result.n_dead == int((density == 0).sum()) and result.n_dense == int((density > 0.1).sum())

    write_json_atomic(tmp_path / "eval.json", result.to_dict())
    assert json.loads((tmp_path / "eval.json").read_text())["ce_loss_recovered"] == result.ce_loss_recovered


def test_rejects_wrong_hook_or_shape(model: HookedTransformer, tokens: torch.Tensor) -> None:
    sae = identity_sae(model.cfg.d_model)
    with pytest.raises(ValueError, match="no hook point"):
        evaluate_sae(model, sae, tokens, hook_name="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="head-split"):
        evaluate_sae(model, sae, tokens, hook_name="blocks.0.attn.hook_z")
