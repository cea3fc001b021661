"""inverse_row_norms: values and its hand-written backward against autograd through torch's own norm."""

from __future__ import annotations

import torch

from hybrid_sae_ext.kernels.row_norms import NORM_FLOOR, inverse_row_norms


def _autograd_reference(W: torch.Tensor) -> torch.Tensor:
    return W.norm(dim=-1).clamp_min(NORM_FLOOR).reciprocal()


def test_values_and_gradient_match_autograd_including_clamped_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    W = (torch.randn(9, 5, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 9).unsqueeze(1))
    W[4] = 0.0  # clamped: scale 1 / NORM_FLOOR, no gradient
    W[7] *= 1e-11  # norm below the floor but not zero: clamped too
    W.requires_grad_()
    upstream = torch.randn(9, generator=gen, dtype=torch.float64)
    scales = inverse_row_norms(W)
    (grad,) = torch.autograd.grad((scales * upstream).sum(), W)
    W_ref = W.detach().clone().requires_grad_()
    expected = _autograd_reference(W_ref)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), W_ref)
    torch.testing.assert_close(scales, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert scales[4] == scales[7] == 1 / NORM_FLOOR and not grad[4].any() and not grad[7].any()


def test_gradcheck() -> None:
    W = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    assert torch.autograd.gradcheck(inverse_row_norms, (W,))


def test_float32_gradient_keeps_the_weight_dtype() -> None:
    W = torch.randn(7, 3).requires_grad_()
    inverse_row_norms(W).sum().backward()
    assert W.grad is not None and W.grad.dtype == torch.float32
