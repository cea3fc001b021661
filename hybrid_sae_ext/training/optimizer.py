"""Adam as every trainer here builds it: torch's fused kernel (CPU and CUDA), and fp32 master weights
for parameters stored in bf16/fp16.

Why fused: one pass over parameter, gradient and moments per step instead of ~7 foreach passes;
2.6x faster than foreach on the 2-core Xeon (5.0 vs 13.0 ms for a 256 x 8192 SAE, 1 thread).
The fused kernels walk those four tensors as flat memory, so a gradient or moment whose layout
differs from its parameter's (a transposed ``W_enc``, moments loaded contiguous from a checkpoint)
would be silently misread: ``LayoutSafeAdam`` copies such tensors into the parameter's layout first.

Why master weights: an Adam step moves a weight by about ``lr`` (1e-4 to 1e-3), below half a bf16
ulp of a typical weight (2^-9 relative), so updates applied to bf16 storage are mostly rounded
away and bf16 training falls behind fp32 (5% higher FVU after 300 steps in our check). Keeping the
update in fp32 and copying the result into the bf16 weights restores fp32 quality.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


FUSED_DEVICE_TYPES = ("cpu", "cuda")


def _in_layout_of(param: Tensor, tensor: Tensor) -> Tensor:
    """``tensor``'s values with ``param``'s strides (``empty_like`` keeps a dense parameter's strides)."""
    return torch.empty_like(param, dtype=tensor.dtype).copy_(tensor)


class LayoutSafeAdam(torch.optim.Adam):
    """``torch.optim.Adam`` that first gives every gradient and moment its parameter's memory layout."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param.grad.stride() != param.stride():
                    param.grad = _in_layout_of(param, param.grad)
                state = self.state.get(param, {})
                for name, value in state.items():
                    if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                        state[name] = _in_layout_of(param, value)
        return super().step(closure)


class MasterWeightAdam(LayoutSafeAdam):
    """Adam over fp32 copies of low-precision parameters; ``step`` writes the results back.

    The fp32 copies are this optimizer's own params; its ``state_dict`` holds their moments. A
    resumed run re-derives the copies from the stored (rounded) weights.
    """

    def __init__(self, params: Iterable[nn.Parameter], **adam_kwargs: object) -> None:
        self.model_params = list(params)
        masters = [p.detach().float() for p in self.model_params]
        super().__init__(masters, **adam_kwargs)  # type: ignore[arg-type]

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        masters = self.param_groups[0]["params"]
        for master, param in zip(masters, self.model_params):
            master.grad = None if param.grad is None else param.grad.float()
        loss = super().step(closure)
        torch._foreach_copy_(self.model_params, masters)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for param in self.model_params:
            param.grad = None


def make_adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fastest implementation the device has; fp32 master weights for bf16/fp16 params."""
    params = list(params)
    fused = all(p.device.type in FUSED_DEVICE_TYPES and p.is_floating_point() for p in params)
    kwargs = {"lr": lr, "fused": fused, "foreach": not fused}
    if any(p.dtype in LOW_PRECISION for p in params):
        return MasterWeightAdam(params, **kwargs)
    return LayoutSafeAdam(params, **kwargs)


def all_finite(tensors: Iterable[Tensor]) -> Tensor:
    """One boolean tensor (no host sync): every element of every tensor is finite."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()
