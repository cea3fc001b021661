"""make_adam: the fused kernel on CPU, and the Adam update whatever the memory layout of a parameter,
its gradient or its moments (the fused kernels misread tensors whose layouts differ)."""

from __future__ import annotations

import pytest
import torch

from hybrid_sae_ext.training.optimizer import make_adam

LR, BETA1, BETA2, EPS = 1e-2, 0.9, 0.999, 1e-8


def _reference_adam(param: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Adam (Kingma & Ba, Algorithm 1) written out in float64."""
    param = param.double().clone()
    m, v = torch.zeros_like(param), torch.zeros_like(param)
    for t, grad in enumerate(grads, start=1):
        m = BETA1 * m + (1 - BETA1) * grad.double()
        v = BETA2 * v + (1 - BETA2) * grad.double() ** 2
        param -= LR * (m / (1 - BETA1**t)) / ((v / (1 - BETA2**t)).sqrt() + EPS)
    return param


def test_make_adam_uses_the_fused_kernel_on_cpu() -> None:
    optimizer = make_adam([torch.nn.Parameter(torch.zeros(3))], lr=LR)
    assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adam_update_is_exact_for_a_transposed_parameter_and_reloaded_moments(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(7, 5, generator=gen).to(dtype).float()
    param = torch.nn.Parameter(start.to(dtype).t().contiguous().t())  # [7, 5] stored transposed, like W_enc
    assert not param.is_contiguous()
    grads = [torch.randn(7, 5, generator=gen).to(dtype).float() for _ in range(6)]
    optimizer = make_adam([param], lr=LR)
    stepped = optimizer.param_groups[0]["params"][0]
    assert stepped.is_contiguous(), "the fused kernel must see a contiguous tensor (else it copies the gradient)"
    for step, grad in enumerate(grads):
        param.grad = grad.to(dtype).clone()  # contiguous: a layout other than the parameter's
        optimizer.step()
        optimizer.zero_grad()
        assert param.grad is None
        if step == 2:  # a checkpoint round trip: moments in the parameter's shape, back contiguous
            state = optimizer.state_dict()
            assert state["state"][0]["exp_avg"].shape == param.shape
            for moments in state["state"].values():
                for name, value in moments.items():
                    moments[name] = value.contiguous().clone() if value.ndim else value.clone()
            optimizer = make_adam([param], lr=LR)
            optimizer.load_state_dict(state)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 0, "atol": 2**-7}
    torch.testing.assert_close(param.detach().double(), _reference_adam(start, grads), **tolerance)
