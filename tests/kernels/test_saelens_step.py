"""SAELens' training step gets the hybrid's codes as a sparse tensor (``use_sparse_activations``), and its
trainer's stats accept it."""

import torch
from sae_lens.saes.sae import TrainStepInput

from hybrid_sae_ext.architectures.hybrid import HybridTrainingSAE
from hybrid_sae_ext.architectures.hybrid_config import HybridTrainingSAEConfig


def test_training_forward_pass_returns_sparse_codes_saelens_can_count() -> None:
    torch.manual_seed(0)
    sae = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=8, d_sae=32, k=4, use_sparse_activations=True))
    with torch.no_grad():
        sae.b_gate.normal_()
    x = torch.randn(16, 8)
    sae.eval()  # the default batch gate allocates over a training batch; evaluating, it gates each token as encode does
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients={"l1": 0.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=True,
    ))
    assert out.feature_acts.is_sparse and out.feature_acts._nnz() == 16 * 4
    dense_codes = sae.encode(x)  # the SAE-API dense encode: an independent path
    torch.testing.assert_close(out.feature_acts.to_dense(), dense_codes)
    # what SAELens' SAETrainer does with feature_acts each step and when logging
    firing = out.feature_acts.bool().float()
    did_fire = firing.sum(-2).bool().to_dense()
    assert torch.equal(did_fire, (dense_codes > 0).any(0))
    l0 = firing.sum(-1).to_dense().mean()
    assert l0 == (dense_codes > 0).sum(-1).float().mean()
    act_freq = torch.zeros(32)
    act_freq += firing.sum(0)
    assert torch.equal(act_freq, (dense_codes > 0).float().sum(0))
