"""Adam as every trainer here builds it: torch's fused kernel (CPU and CUDA), and fp32 master weights
for parameters stored in bf16/fp16.

Why fused: one pass over parameter, gradient and moments per step instead of ~7 foreach passes
(measured: docs/performance.md#measurements-behind-the-defaults).
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
from typing import Any

import torch
from torch import Tensor, nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


FUSED_DEVICE_TYPES = ("cpu", "cuda")


def _in_layout_of(like: Tensor, tensor: Tensor) -> Tensor:
    """``tensor``'s values with ``like``'s strides (``empty_like`` keeps a dense tensor's strides)."""
    return torch.empty_like(like, dtype=tensor.dtype).copy_(tensor)


def _memory_order(tensor: Tensor) -> list[int]:
    """Dimensions by decreasing stride: ``tensor.permute(order)`` is contiguous when ``tensor`` is dense."""
    return sorted(range(tensor.ndim), key=lambda dim: -tensor.stride(dim))


def _inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


class LayoutSafeAdam(torch.optim.Adam):
    """``torch.optim.Adam`` stepping each parameter through a contiguous view of its memory.

    A transposed parameter (the hybrid's ``W_enc``) is stepped as its transpose, so the fused kernel
    sees only contiguous tensors (it would otherwise copy the gradient every step); gradients and
    moments in any other layout are first copied into that one. ``state_dict`` reports the moments in
    the parameters' own shapes and ``load_state_dict`` takes them so: checkpoints keep their format.
    Takes a flat list of parameters (one param group).
    """

    def __init__(self, params: Iterable[nn.Parameter], **adam_kwargs: object) -> None:
        self.model_params = list(params)
        self._targets = [self._target(p) for p in self.model_params]
        self._orders = [_memory_order(t) for t in self._targets]
        super().__init__([t.permute(o) for t, o in zip(self._targets, self._orders)], **adam_kwargs)  # type: ignore[arg-type]

    def _target(self, param: nn.Parameter) -> Tensor:
        """The tensor this optimizer updates for ``param`` (in ``param``'s layout): the parameter itself."""
        return param.detach()

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        for view, param, target, order in zip(self.param_groups[0]["params"], self.model_params, self._targets,
                                              self._orders):
            grad = param.grad
            if grad is not None and grad.stride() != target.stride():
                grad = _in_layout_of(target, grad)
            view.grad = None if grad is None else grad.to(view.dtype).permute(order)
            state = self.state.get(view, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == view.shape and value.stride() != view.stride():
                    state[name] = _in_layout_of(view, value)
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for param in self.model_params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["state"] = {index: self._reshaped(index, entries, to_view=False) for index, entries in state["state"].items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {index: self._reshaped(int(index), entries, to_view=True) for index, entries in state_dict["state"].items()}
        super().load_state_dict({**state_dict, "state": state})

    def _reshaped(self, index: int, entries: dict[str, Any], to_view: bool) -> dict[str, Any]:
        """Moments of parameter ``index`` permuted between its shape and its view's (a new dict)."""
        order = self._orders[index]
        shape = self.model_params[index].shape
        permutation = order if to_view else _inverse(order)
        wanted = shape if to_view else torch.Size([shape[d] for d in order])
        return {
            name: value.permute(permutation) if torch.is_tensor(value) and value.shape == wanted else value
            for name, value in entries.items()
        }


class MasterWeightAdam(LayoutSafeAdam):
    """Adam over fp32 copies of low-precision parameters; ``step`` writes the results back.

    The fp32 copies are this optimizer's own params; its ``state_dict`` holds their moments. A
    resumed run re-derives the copies from the stored (rounded) weights.
    """

    def _target(self, param: nn.Parameter) -> Tensor:
        return param.detach().float()

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        loss = super().step(closure)
        torch._foreach_copy_(self.model_params, self._targets)
        return loss


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
