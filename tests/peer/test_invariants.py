"""SAELens' architecture-generic invariants, for every registered architecture (``hybrid`` included).

Written here from what SAELens' own tests check (configs through ``from_dict``, save/load, both folds on
training and inference SAEs, dtype moves, a train step's outputs used as plain tensors); SAELens' own
architectures pass them too, which is what makes a failure on the hybrid a defect and not a convention.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE, registry
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

from tests.peer.conftest import (
    INFERENCE_ONLY,
    K,
    TRAINABLE,
    inference_only_sae,
    inference_sae,
    training_config,
    training_sae,
)

BATCHED_SELECTION = {"batchtopk", "matryoshka_batchtopk"}
"""Training selects the top ``k x batch`` of the whole batch; the inference SAE (JumpReLU) uses the
learned threshold instead, so the two agree only in expectation, not per batch."""


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_training_config_round_trips_through_from_dict(architecture: str) -> None:
    cfg = training_config(architecture)
    sae = TrainingSAE.from_dict(cfg.to_dict())
    assert type(sae) is registry.get_sae_training_class(architecture)[0]
    assert type(sae.cfg).from_dict(sae.cfg.to_dict()).to_dict() == cfg.to_dict()
    inference = SAE.from_dict(sae.cfg.get_inference_sae_cfg_dict())
    assert type(inference) is registry.get_sae_class(cfg.get_inference_config_class().architecture())[0]


@pytest.mark.parametrize("architecture", TRAINABLE + INFERENCE_ONLY)
def test_inference_sae_save_load_round_trip_is_exact(architecture: str, tmp_path: Path, acts: torch.Tensor) -> None:
    sae = inference_only_sae(architecture) if architecture in INFERENCE_ONLY else inference_sae(architecture, tmp_path)
    assert type(SAE.from_dict(sae.cfg.to_dict())) is type(sae)
    sae.save_model(tmp_path / "again")
    again = SAE.load_from_disk(str(tmp_path / "again"))
    assert type(again) is type(sae) and again.cfg.to_dict() == sae.cfg.to_dict()
    assert again.state_dict().keys() == sae.state_dict().keys()
    for name, tensor in sae.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    if architecture not in INFERENCE_ONLY:
        with torch.no_grad():
            assert torch.equal(again(acts), sae(acts)) and torch.equal(again.encode(acts), sae.encode(acts))


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_training_sae_save_load_and_inference_export_agree(architecture: str, tmp_path: Path, acts: torch.Tensor) -> None:
    sae = training_sae(architecture)
    sae.save_model(tmp_path / "training")
    reloaded = TrainingSAE.load_from_disk(str(tmp_path / "training"))
    assert type(reloaded) is type(sae)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    if architecture in BATCHED_SELECTION:
        return
    inference = inference_sae(architecture, tmp_path)
    with torch.no_grad():
        _close(inference(acts), sae(acts))
        _close(inference.encode(acts), sae.encode(acts))


FOLD_W_DEC_NORM_REFUSED = {"matching_pursuit"}
"""SAELens refuses to fold decoder norms into these (its greedy selection reads the decoder)."""


def _fold_W_dec_norm_keeps_the_output(sae: SAE[Any], acts: torch.Tensor) -> None:
    if sae.cfg.architecture() in FOLD_W_DEC_NORM_REFUSED:
        with pytest.raises(NotImplementedError):
            sae.fold_W_dec_norm()
        return
    with torch.no_grad():
        before = sae(acts)
        sae.fold_W_dec_norm()
        _close(sae(acts), before)
        _close(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae))


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_fold_W_dec_norm_keeps_the_training_sae_output(architecture: str, acts: torch.Tensor) -> None:
    _fold_W_dec_norm_keeps_the_output(training_sae(architecture), acts)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_fold_W_dec_norm_keeps_the_inference_sae_output(architecture: str, tmp_path: Path, acts: torch.Tensor) -> None:
    sae = inference_sae(architecture, tmp_path)
    if architecture == "hybrid":
        # The inference hybrid folds only a norm shared by all latents (per-latent norms would reorder
        # its top-k, and it refuses them: tests/architectures); its saved rows are unit-norm, so scale them.
        with torch.no_grad():
            sae.W_dec.mul_(1.7)
    _fold_W_dec_norm_keeps_the_output(sae, acts)


def _scale_fold_keeps_the_output(sae: SAE[Any], acts: torch.Tensor) -> None:
    """SAELens' invariant: an SAE trained on ``s * x`` and folded with ``s`` gives ``sae(x) = old(s * x) / s``;
    with ``s = 2`` checked as ``2 * folded(x / 2) == old(x)``."""
    with torch.no_grad():
        before = sae(acts)
        sae.fold_activation_norm_scaling_factor(2.0)
        _close(2 * sae(acts / 2), before)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_fold_activation_norm_scaling_factor_on_the_training_sae(architecture: str, acts: torch.Tensor) -> None:
    _scale_fold_keeps_the_output(training_sae(architecture), acts)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_fold_activation_norm_scaling_factor_on_the_inference_sae(architecture: str, tmp_path: Path, acts: torch.Tensor) -> None:
    _scale_fold_keeps_the_output(inference_sae(architecture, tmp_path), acts)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_scale_fold_survives_saving_for_inference(architecture: str, tmp_path: Path, acts: torch.Tensor) -> None:
    """What SAELens' trainer does at the end of ``fit()``: fold the scale into the training SAE, then save it."""
    sae = training_sae(architecture)
    with torch.no_grad():
        before = sae(acts)
        sae.fold_activation_norm_scaling_factor(2.0)
    sae.save_inference_model(tmp_path / "folded")
    loaded = SAE.load_from_disk(str(tmp_path / "folded"))
    if architecture not in BATCHED_SELECTION:
        with torch.no_grad():
            _close(2 * loaded(acts / 2), before)


@pytest.mark.parametrize("architecture", TRAINABLE + INFERENCE_ONLY)
def test_dtype_and_device_moves(architecture: str, tmp_path: Path, acts: torch.Tensor) -> None:
    sae = inference_only_sae(architecture) if architecture in INFERENCE_ONLY else inference_sae(architecture, tmp_path)
    x = acts[:, : sae.cfg.d_in]
    check_output = architecture not in INFERENCE_ONLY
    with torch.no_grad():
        before = sae(x) if check_output else None
        moved = sae.to(torch.float64)
        assert moved is sae and sae.dtype == torch.float64 and sae.cfg.dtype == "float64"
        assert all(p.dtype == torch.float64 for p in sae.parameters())
        if check_output:
            out = sae(x.double())
            assert out.dtype == torch.float64
            _close(out.float(), before)
        sae.to(device="cpu", dtype=torch.float32)
        assert sae.device == torch.device("cpu") and all(p.dtype == torch.float32 for p in sae.parameters())
        if check_output:
            _close(sae(x), before)
    sae.save_model(tmp_path / "after-moves")
    assert SAE.load_from_disk(str(tmp_path / "after-moves")).cfg.dtype == "float32"


def _train_step(sae: TrainingSAE[Any], x: torch.Tensor) -> Any:
    coefficients = {name: c if isinstance(c, float) else c.value for name, c in sae.get_coefficients().items()}
    return sae.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients=coefficients, dead_neuron_mask=torch.ones(sae.cfg.d_sae, dtype=torch.bool),
        n_training_steps=0, is_logging_step=True,
    ))


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_train_step_outputs_are_plain_dense_tensors(architecture: str, acts: torch.Tensor) -> None:
    """Used the way SAELens' tests use them: compared, ``.abs()``-ed, summed per token; the loss backpropagates."""
    sae = training_sae(architecture)
    out = _train_step(sae, acts)
    assert out.feature_acts.shape == (acts.shape[0], sae.cfg.d_sae) and not out.feature_acts.is_sparse
    assert out.sae_out.shape == acts.shape
    l0 = (out.feature_acts > 0).float().sum(-1)
    assert out.feature_acts.abs().sum() > 0 and l0.mean() > 0
    if "k" in {f for f in sae.cfg.to_dict()} and architecture not in BATCHED_SELECTION:
        assert l0.max() <= K
    if architecture == "hybrid":  # its default batch gate allocates over the training batch, as BatchTopK does;
        sae.eval()                # evaluating, the step gates each token alone, as encode does
        with torch.no_grad():
            _close(_train_step(sae, acts).feature_acts, sae.encode(acts))
        sae.train()
    elif architecture not in BATCHED_SELECTION | {"matching_pursuit"}:
        with torch.no_grad():
            _close(out.feature_acts, sae.encode(acts))
    assert torch.isfinite(out.loss) and set(out.losses) >= {"mse_loss"}
    out.loss.backward()
    assert sae.W_dec.grad is not None and torch.isfinite(sae.W_dec.grad).all()


def test_hybrid_sparse_train_step_opt_in_matches_the_dense_default(acts: torch.Tensor) -> None:
    dense = _train_step(training_sae("hybrid"), acts)
    sparse = _train_step(training_sae("hybrid", use_sparse_activations=True), acts)
    assert sparse.feature_acts.is_sparse and sparse.feature_acts._nnz() == acts.shape[0] * K
    assert torch.equal(sparse.feature_acts.to_dense(), dense.feature_acts)
    assert torch.equal(sparse.loss, dense.loss)
