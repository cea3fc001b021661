"""bf16 storage trains the hybrid on the sparse backend as well as fp32 does (issue 11)."""

import pytest
import torch
import torch.nn.functional as F

from hybrid_sae_ext.architectures.hybrid import HybridTrainingSAE
from hybrid_sae_ext.architectures.hybrid_config import HybridTrainingSAEConfig
from hybrid_sae_ext.training.optimizer import MasterWeightAdam, make_adam

D_IN, D_SAE, K, BATCH, STEPS = 32, 256, 8, 256, 300


def _activations(rows: int, seed: int) -> torch.Tensor:
    """Sparse sums of 4 of 128 fixed directions plus noise: a dictionary the SAE can learn."""
    directions = F.normalize(torch.randn(4 * D_IN, D_IN, generator=torch.Generator().manual_seed(0)), dim=-1)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 4 * D_IN, (rows, 4), generator=gen)
    mags = torch.rand(idx.shape, generator=gen) * 2
    return F.embedding_bag(idx, directions, per_sample_weights=mags, mode="sum") + 0.05 * torch.randn(
        rows, D_IN, generator=gen
    )


def _train_and_fvu(dtype: str, refine_steps: int) -> float:
    torch.manual_seed(0)
    sae = HybridTrainingSAE(HybridTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype=dtype, refine_steps=refine_steps))
    optimizer = make_adam(sae.parameters(), lr=1e-3)
    pool = _activations(BATCH * STEPS, seed=1).to(sae.dtype)
    for batch in pool.split(BATCH):
        sae.hybrid_forward(batch).losses.total().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.dtype == sae.dtype for p in sae.parameters())
    held_out = _activations(2048, seed=99)
    with torch.no_grad():
        x_hat = sae.hybrid_forward(held_out.to(sae.dtype)).sae_out.double()
    x = held_out.double()
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("refine_steps, tolerance", [(0, 0.02), (1, 0.04)])
def test_bfloat16_train_step_matches_float32_fvu(refine_steps: int, tolerance: float) -> None:
    """Within 2% unrefined; the refined default (its step runs on bf16 values and decodes) within 4%:
    measured 0.0941 against 0.0970 (2.9%)."""
    fvu_fp32 = _train_and_fvu("float32", refine_steps)
    fvu_bf16 = _train_and_fvu("bfloat16", refine_steps)
    assert fvu_fp32 < 0.3  # it learned something
    assert abs(fvu_bf16 - fvu_fp32) <= tolerance * fvu_fp32, (fvu_bf16, fvu_fp32)


def test_low_precision_parameters_get_fp32_master_weights() -> None:
    weights = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = make_adam([weights], lr=1e-4)
    assert isinstance(optimizer, MasterWeightAdam)
    for _ in range(30):  # 30 steps of ~1e-4: each is below half a bf16 ulp of 1.0 (2^-8)
        weights.grad = torch.ones_like(weights)
        optimizer.step()
        optimizer.zero_grad()
    assert weights.grad is None
    torch.testing.assert_close(weights.float(), torch.full((4,), 1 - 30e-4), atol=2**-8, rtol=0)
    assert weights[0] < 1.0
