"""``1 / ||W[i]||`` per row with a one-pass backward: the unit-norm decoder as a reparametrisation.

Why: autograd through ``W.norm(dim=-1).clamp_min(eps).reciprocal()`` spends three ``d_sae x d_in``
passes in the backward (divide, multiply, mask); the gradient is ``-g_i W[i] / ||W[i]||^3``, a single
scaled copy of ``W``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

NORM_FLOOR = 1e-8
"""Norms below this are clamped (an all-zero row gets scale ``1 / NORM_FLOOR`` and no gradient)."""


def gradient_row_factor(scales: Float[Tensor, " rows"], grad_scales: Float[Tensor, " rows"]) -> Float[Tensor, " rows"]:
    """``f`` with ``dL/dW[i] = f[i] * W[i]`` for ``scales = inverse_row_norms(W)``: ``-g_i s_i^3``, and 0 for a
    row clamped at the floor (its scale is exactly ``1 / NORM_FLOOR``, so the scales alone tell)."""
    clamped_scale = torch.full((), NORM_FLOOR, dtype=scales.dtype, device=scales.device).reciprocal()
    return torch.where(scales < clamped_scale, -grad_scales * scales.to(grad_scales.dtype).pow(3), 0.0)


class _InverseRowNorms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W: Tensor) -> Tensor:  # type: ignore[override]
        scales = torch.linalg.vector_norm(W, dim=-1).clamp_min(NORM_FLOOR).reciprocal()
        ctx.save_for_backward(W, scales)
        return scales

    @staticmethod
    def backward(ctx, grad_scales: Tensor) -> Tensor:  # type: ignore[override]
        W, scales = ctx.saved_tensors
        return W * gradient_row_factor(scales, grad_scales).to(W.dtype).unsqueeze(-1)


def inverse_row_norms(W: Float[Tensor, "rows d"]) -> Float[Tensor, " rows"]:
    """``1 / max(||W[i]||, NORM_FLOOR)`` for every row ``i``, differentiable in ``W``."""
    return _InverseRowNorms.apply(W)  # type: ignore[no-any-return]
