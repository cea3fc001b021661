"""HybridSAE: codes, config validation, sparse-vs-dense training math, SAELens conversions."""

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hybrid_sae_ext
from hybrid_sae_ext import HybridSAE, HybridSAEConfig, HybridTrainingSAE, HybridTrainingSAEConfig
from sae_lens import SAE
from sae_lens.registry import get_sae_class, get_sae_training_class


def test_registered_in_saelens_and_idempotent() -> None:
    assert get_sae_training_class("hybrid") == (HybridTrainingSAE, HybridTrainingSAEConfig)
    assert get_sae_class("hybrid") == (HybridSAE, HybridSAEConfig)
    hybrid_sae_ext.register_architectures()
    importlib.reload(hybrid_sae_ext)
    assert get_sae_training_class("hybrid")[0].__name__ == "HybridTrainingSAE"
    for builtin in ("standard", "gated", "topk"):
        assert get_sae_training_class(builtin)[0].__module__.startswith("sae_lens")


def test_full_size_config_constructs() -> None:
    cfg = HybridTrainingSAEConfig(d_in=768, d_sae=32768, k=128, device="cpu")
    assert cfg.architecture() == "hybrid" and cfg.effective_k_aux == 384


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_in=8, d_sae=16, k=0), "k must satisfy 1 <= k <= d_sae=16, got k=0"),
        (dict(d_in=8, d_sae=16, k=17), "got k=17"),
        (dict(d_in=0, d_sae=16, k=2), "d_in must be >= 1, got d_in=0"),
        (dict(d_in=8, d_sae=16, k=2, kernel_backend="cuda"), "kernel_backend='cuda'"),
        (dict(d_in=8, d_sae=16, k=2, k_aux=0), "k_aux must be None or in"),
        (dict(d_in=8, d_sae=16, k=2, aux_k_coefficient=-1.0), "aux_k_coefficient must be >= 0"),
        (dict(d_in=8, d_sae=16, k=2, normalize_activations="layer_norm"), "layer_norm"),
        (dict(d_in=8, d_sae=16, k=2, selection_dtype="float16"), "selection_dtype='float16' is not one of"),
    ],
)
def test_bad_config_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        HybridTrainingSAEConfig(**kwargs)


def test_inference_config_validates_and_shorthand_constructor() -> None:
    with pytest.raises(ValueError, match="got k=9"):
        HybridSAEConfig(d_in=4, d_sae=8, k=9)
    with pytest.raises(ValueError, match="selection_dtype='int8' is not one of"):
        HybridSAEConfig(d_in=4, d_sae=8, k=2, selection_dtype="int8")
    with pytest.raises(ValueError, match="k_sparse=None"):
        HybridSAE(d_model=4, n_features=8)
    sae = HybridSAE(d_model=768, n_features=2048, k_sparse=128)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (768, 2048, 128)


def test_bad_input_is_named() -> None:
    sae = HybridSAE(d_model=8, n_features=32, k_sparse=4)
    with pytest.raises(ValueError, match="last dimension 9 but this SAE has d_in=8"):
        sae.encode(torch.randn(3, 9))
    with pytest.raises(ValueError, match="NaN or Inf"):
        sae.encode(torch.full((2, 8), float("nan")))
    for bad in (float("inf"), float("-inf"), float("nan")):
        x = torch.randn(2, 8)
        x[1, 3] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            sae.encode_sparse(x)
    huge = torch.full((2, 8), 3e38)  # finite, but their sum overflows to inf: still accepted
    assert sae.encode_sparse(huge).values.shape == (2, 4)


def test_empty_batch_is_refused_naming_its_shape() -> None:
    """An empty batch used to give NaN losses (a mean over no tokens) without a word."""
    sae = HybridSAE(d_model=8, n_features=32, k_sparse=4)
    for call in (sae.encode, sae.encode_sparse, sae):
        with pytest.raises(ValueError, match=r"shape \(0, 8\): an empty batch"):
            call(torch.zeros(0, 8))
    training = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=32, k=4))
    with pytest.raises(ValueError, match=r"shape \(2, 0, 8\): an empty batch"):
        training.hybrid_forward(torch.zeros(2, 0, 8), dead_mask=torch.ones(32, dtype=torch.bool))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    d_in=st.integers(1, 10),
    d_sae=st.integers(1, 40),
    k_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 100.0),
)
def test_codes_properties(n: int, d_in: int, d_sae: int, k_frac: float, seed: int, scale: float) -> None:
    torch.manual_seed(seed)
    k = max(1, round(k_frac * d_sae))
    sae = HybridSAE(d_model=d_in, n_features=d_sae, k_sparse=k)
    with torch.no_grad():
        for p in (sae.b_gate, sae.b_mag, sae.r_mag, sae.b_dec):
            p.normal_()
    x = torch.randn(n, d_in) * scale
    codes = sae.encode(x)
    assert codes.shape == (n, d_sae)
    assert ((codes != 0).sum(-1) <= k).all()
    assert (codes >= 0).all()
    torch.testing.assert_close(sae.decode(codes), sae(x))
    sparse = sae.encode_sparse(x)
    # the sparse values are exact dot products summed in another order than the dense GEMM's: fp32 rounding
    # of terms as large as exp(r_mag) * pre (~ scale) and b_mag (~ 1), which can cancel to a small value
    summation_order = {"rtol": 1e-5, "atol": 1e-5 * (1 + scale)}
    torch.testing.assert_close(sae.decode_sparse(sparse), sae(x), **summation_order)
    dense_from_sparse = torch.zeros(n, d_sae).scatter(1, sparse.indices, sparse.values)
    torch.testing.assert_close(dense_from_sparse, codes, **summation_order)


def _trained_like(backend: str) -> HybridTrainingSAE:
    torch.manual_seed(0)
    cfg = HybridTrainingSAEConfig(
        d_in=16, d_sae=128, k=8, l1_coefficient=0.01, kernel_backend=backend, dtype="float64"
    )
    sae = HybridTrainingSAE(cfg)
    with torch.no_grad():
        for p in (sae.b_gate, sae.b_mag, sae.r_mag, sae.b_dec):
            p.normal_(std=0.1)
    return sae


def test_sparse_training_forward_matches_dense_reference() -> None:
    x = torch.randn(64, 16, dtype=torch.float64)
    dead = torch.rand(128, generator=torch.Generator().manual_seed(3)) < 0.5
    results = {}
    for backend in ("sparse", "dense"):
        sae = _trained_like(backend)
        out = sae.hybrid_forward(x, dead_mask=dead)
        out.losses.total().backward()
        results[backend] = (out.losses, {n: p.grad.clone() for n, p in sae.named_parameters()})
    (loss_s, grad_s), (loss_d, grad_d) = results["sparse"], results["dense"]
    for a, b in zip(loss_s, loss_d):
        torch.testing.assert_close(a, b)
    assert loss_s.aux_k > 0 and loss_s.l1 > 0 and loss_s.gate_aux > 0
    for name in grad_d:
        torch.testing.assert_close(grad_s[name], grad_d[name], msg=name)


def test_training_and_inference_agree_after_saelens_save_load(tmp_path) -> None:
    sae = _trained_like("sparse")
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(128, 1, dtype=torch.float64) + 0.5)  # non-unit raw rows
    x = torch.randn(5, 7, 16, dtype=torch.float64)
    expected = sae(x)
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path, dtype="float64")
    assert isinstance(loaded, HybridSAE)
    torch.testing.assert_close(loaded(x), expected)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    loaded.fold_W_dec_norm()  # unit rows: a safe no-op
    torch.testing.assert_close(loaded(x), expected)


def test_inference_encode_sparse_uses_the_trained_selection_dtype(tmp_path, monkeypatch) -> None:
    """The training config's selection_dtype reaches the saved inference SAE, whose encode_sparse scores
    candidates in bf16 then picks on exact values: the same codes as the dense encode on these inputs."""
    cfg = HybridTrainingSAEConfig(d_in=64, d_sae=2048, k=16, selection_dtype="bfloat16", device="cpu")
    HybridTrainingSAE(cfg).save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.cfg.selection_dtype == "bfloat16"
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    from hybrid_sae_ext.kernels import selection

    rescorings = []
    rescore = selection._rescored_topk
    monkeypatch.setattr(selection, "_rescored_topk", lambda *args: rescorings.append(1) or rescore(*args))
    codes = loaded.encode_sparse(x)
    assert rescorings == [1]  # the bf16 candidates were rescored exactly
    dense = loaded.encode(x)
    torch.testing.assert_close(torch.zeros_like(dense).scatter(1, codes.indices, codes.values), dense)


def test_encoder_is_stored_latent_major_and_saved_in_saelens_layout(tmp_path) -> None:
    """Every sparse product reads W_enc columns: they are contiguous, before and after a save/load."""
    sae = _trained_like("sparse")
    assert sae.W_enc.shape == (16, 128) and sae.W_enc.t().is_contiguous()
    saved = sae.state_dict()["W_enc"]
    assert saved.is_contiguous() and torch.equal(saved, sae.W_enc.detach())
    sae.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path, dtype="float64")
    assert loaded.W_enc.t().is_contiguous() and torch.equal(loaded.W_enc, sae.W_enc.detach())
    assert HybridSAE(HybridSAEConfig(d_in=8, d_sae=32, k=4)).W_enc.t().is_contiguous()


def _randomized_inference_sae(refine_steps: int = 0) -> HybridSAE:
    torch.manual_seed(4)
    sae = HybridSAE(HybridSAEConfig(d_in=8, d_sae=48, k=6, dtype="float64", refine_steps=refine_steps))
    with torch.no_grad():
        if refine_steps:
            sae.refine_rate.uniform_(0.2, 0.5)
        sae.b_gate.normal_(-0.3, 0.3)
        sae.b_mag.normal_(0.0, 0.3)
        sae.r_mag.normal_(0.0, 0.3)
        sae.b_dec.normal_(0.0, 0.2)
    return sae


@pytest.mark.parametrize("refine_steps", [0, 2])
def test_fold_W_dec_norm_folds_a_uniform_norm_and_refuses_per_latent_norms(refine_steps: int) -> None:
    """After SAELens' base scale fold (``W_enc *= s; W_dec /= s; b_dec /= s``) every decoder row has norm 1 / s:
    folding it must keep the SAE's function (same top-k, same open gates, same refinement), codes scaled by 1 / s."""
    sae, scale = _randomized_inference_sae(refine_steps), 2.5
    x = torch.randn(64, 8, dtype=torch.float64)
    expected = sae(x * scale) / scale
    codes_before = sae.encode(x * scale)
    with torch.no_grad():
        sae.W_enc.mul_(scale)
        sae.W_dec.div_(scale)
        sae.b_dec.div_(scale)
        if refine_steps:  # the same function needs steps s^2 larger: each step's dots shrink by 1 / s twice
            sae.refine_rate.mul_(scale**2)
    torch.testing.assert_close(sae(x), expected)
    sae.fold_W_dec_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(48, dtype=torch.float64))
    torch.testing.assert_close(sae(x), expected)
    codes = sae.encode(x)
    assert torch.equal(codes != 0, codes_before != 0) and (codes != 0).any() and (codes == 0).any()
    torch.testing.assert_close(codes, codes_before / scale)

    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 1.5, 48, dtype=torch.float64)[:, None])
    with pytest.raises(NotImplementedError, match="norms range from 0.5 to 1.5"):
        sae.fold_W_dec_norm()


@pytest.mark.parametrize("target_l0, refine_steps", [(None, 0), (3.0, 0), (3.0, 2)])
def test_training_sae_folds_the_activation_scale_it_was_trained_under(tmp_path, target_l0, refine_steps) -> None:
    """SAELens' invariant: after ``fold_activation_norm_scaling_factor(s)``, ``s * sae(x / s)`` is the
    unfolded ``sae(x)``; SAELens' ``SAETrainer.fit`` folds into the *training* SAE before saving, whose
    decoder rows are unit-norm, so the base fold's ``W_dec /= s`` would be lost. The saved inference
    SAE must keep it, with unit-norm rows, and an invalid factor is refused by name."""
    torch.manual_seed(5)
    sae = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=48, k=6, dtype="float64", target_l0=target_l0,
                                                    refine_steps=refine_steps,
                                                    normalize_activations="expected_average_only_in"))
    with torch.no_grad():
        for param in (sae.b_gate, sae.b_mag, sae.r_mag, sae.b_dec):
            param.normal_(0.0, 0.3)
        sae.W_dec.mul_(3.0)  # stored rows need not be unit-norm: the forward normalises them
        if target_l0 is not None:
            sae.gate_threshold.fill_(0.6)  # shuts some of the candidates that open at 0
    x = torch.randn(64, 8, dtype=torch.float64)
    with torch.no_grad():
        expected = sae(x)
    sae.fold_activation_norm_scaling_factor(2.0)
    assert sae.cfg.normalize_activations == "none"
    with torch.no_grad():
        torch.testing.assert_close(2 * sae(x / 2), expected, rtol=1e-12, atol=1e-12)
    sae.save_inference_model(str(tmp_path))
    loaded = SAE.load_from_disk(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(2 * loaded(x / 2), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loaded.W_dec.norm(dim=-1), torch.ones(48, dtype=torch.float64))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scaling_factor must be a finite number > 0"):
            sae.fold_activation_norm_scaling_factor(bad)


def test_a_gate_shut_by_b_gate_minus_100_reopens_during_training() -> None:
    """A working latent is shut by ``b_gate = -100`` mid-training. Nothing but the dead-latent gate
    term reaches a shut gate: without it ``b_gate`` stays at -100 and the latent never fires again.
    SGD, whose step grows with the distance to the optimum (under Adam it would take ~100 / lr steps)."""
    torch.manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    sae = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=16, k=4))
    optimizer = torch.optim.SGD(sae.parameters(), lr=0.1)
    steps_since_fired = torch.zeros(16)
    fired_after = []
    for step in range(200):
        if step == 100:
            with torch.no_grad():
                sae.b_gate[0] = -100.0
        x = (torch.rand(128, 16) * (torch.rand(128, 16) < 0.15)) @ dictionary
        out = sae.hybrid_forward(x, dead_mask=steps_since_fired >= 5)
        fired = torch.zeros(16, dtype=torch.bool)
        fired[out.codes.indices[out.codes.values > 0]] = True
        steps_since_fired = torch.where(fired, 0.0, steps_since_fired + 1)
        if step >= 100:
            fired_after.append(int((out.codes.indices[out.codes.values > 0] == 0).sum()))
        optimizer.zero_grad()
        out.losses.total().backward()
        optimizer.step()
    assert fired_after[0] == 0, "the shut latent must start shut"
    assert sae.b_gate[0] > -1.0, f"b_gate of the shut latent only reached {sae.b_gate[0].item():.2f}"
    assert sum(fired_after[-50:]) >= 50, f"the reopened latent fired on only {sum(fired_after[-50:])} tokens"


def test_an_sae_saved_before_refinement_loads_unrefined(tmp_path) -> None:
    """The default refines (refine_steps=1); a folder from before refinement existed has neither the config key
    nor ``refine_rate``, and must load as what it was trained as, with the same codes."""
    import json

    assert HybridSAEConfig(d_in=8, d_sae=32, k=4).refine_steps == 1
    torch.manual_seed(0)
    old = HybridSAE(HybridSAEConfig(d_in=8, d_sae=32, k=4, refine_steps=0))
    old.save_model(str(tmp_path))
    cfg_path = tmp_path / "cfg.json"
    cfg_dict = json.loads(cfg_path.read_text())
    del cfg_dict["refine_steps"]
    cfg_path.write_text(json.dumps(cfg_dict))
    loaded = SAE.load_from_disk(str(tmp_path))
    assert loaded.cfg.refine_steps == 0 and "refine_rate" not in loaded.state_dict()
    x = torch.randn(5, 8)
    torch.testing.assert_close(loaded.encode(x), old.encode(x))
    refined = HybridSAE(HybridSAEConfig(d_in=8, d_sae=32, k=4))
    refined.save_model(str(tmp_path / "refined"))
    assert SAE.load_from_disk(str(tmp_path / "refined")).cfg.refine_steps == 1
