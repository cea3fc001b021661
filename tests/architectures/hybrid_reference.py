"""An independent float64 reference of the hybrid SAE, written from the formulas in the docstring of
``hybrid_sae_ext/architectures/hybrid.py``.

Why: tests that compare the sparse and dense backends cannot see a wrong formula, because both run
``hybrid_forward`` and ``_codes``. This module shares no code with them or with the kernels: dense
``n x d_sae`` tensors, its own top-k (a stable sort, ties to the lower latent id) and autograd.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

PARAM_NAMES = ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag")


class ReferenceOutput(NamedTuple):
    mse: Tensor
    gate_aux: Tensor
    l1: Tensor
    aux_k: Tensor
    l0: Tensor
    """The ``jump`` gate's L0 penalty (zero for the other rules)."""
    sae_out: Tensor
    """Reconstruction ``[n, d_in]`` of the flattened input."""
    codes: Tensor
    """Dense codes ``[n, d_sae]``."""
    candidates: Tensor
    """Bool ``[n, d_sae]``: the top-k latents of ``pi_gate``."""
    pi_gate: Tensor

    def total(self) -> Tensor:
        return self.mse + self.gate_aux + self.l1 + self.aux_k + self.l0


def param_names(sae: torch.nn.Module) -> tuple[str, ...]:
    """The SAE's parameters in the reference's order (``refine_rate`` only where it refines)."""
    return PARAM_NAMES + (("refine_rate",) if sae.cfg.refine_steps else ())


def leaf_params(sae: torch.nn.Module) -> dict[str, Tensor]:
    """Float64 copies of the SAE's parameters, as fresh leaves that collect their own gradients."""
    return {name: getattr(sae, name).detach().double().clone().requires_grad_() for name in param_names(sae)}


def refine(p: dict[str, Tensor], codes: Tensor, opened: Tensor, x: Tensor, decoder: Tensor) -> Tensor:
    """The magnitude path's refinement steps, densely: each step ``codes <- opened * relu(codes + rate *
    (x - b_dec - codes @ decoder) @ decoder.T)``; no steps where ``p`` has no ``refine_rate``."""
    for rate in p.get("refine_rate", ()):
        residual = x - p["b_dec"] - codes @ decoder
        codes = opened * torch.relu(codes + rate * residual @ decoder.T)
    return codes


def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the ``k`` largest scores per row; among equal scores the lower latent id wins."""
    order = torch.sort(-scores, dim=-1, stable=True).indices[:, :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, order, True)


def unit_rows(W_dec: Tensor) -> Tensor:
    return W_dec / W_dec.norm(dim=-1, keepdim=True)


def reference_encode(p: dict[str, Tensor], x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(codes, candidates, pi_gate, pre)`` for ``x`` of shape ``[n, d_in]``."""
    pre = (x - p["b_dec"]) @ p["W_enc"]
    pi_gate = pre + p["b_gate"]
    candidates = top_k_mask(pi_gate.detach(), k)
    magnitude = torch.relu(torch.exp(p["r_mag"]) * pre + p["b_mag"])
    codes = torch.where(candidates & (pi_gate > 0), magnitude, torch.zeros_like(magnitude))
    return codes, candidates, pi_gate, pre


def reference_forward(
    p: dict[str, Tensor],
    x: Tensor,
    *,
    k: int,
    l1_coefficient: float,
    gate_aux_coefficient: float,
    aux_k_coefficient: float,
    k_aux: int,
    dead_mask: Tensor | None = None,
    gate_rule: str = "token",
    target_l0: float | None = None,
    l0_coefficient: float = 0.0,
    bandwidth: float = 0.05,
) -> ReferenceOutput:
    """The training forward on ``x`` ``[..., d_in]`` (flattened to tokens); ``k_aux`` is the config's
    effective value (``min(k_aux or d_in // 2, d_sae)``), capped here by the number of dead latents.

    ``gate_rule="batch"``: of all tokens' candidates, those whose ``pi_gate`` exceeds the
    ``(round(n * target_l0) + 1)``-th largest candidate ``pi_gate`` open. ``"jump"``: a candidate opens
    where ``pi_gate > 0``, and the opening's gradient reaches ``b_gate`` as ``rect(pi_gate / bandwidth) /
    bandwidth``; the L0 penalty is ``l0_coefficient * 2 / t * (mean_tokens(opened) - t) ** 2``."""
    x = x.reshape(-1, p["W_enc"].shape[0]).double()
    decoder = unit_rows(p["W_dec"])
    codes, candidates, pi_gate, pre = reference_encode(p, x, k)
    l0 = torch.zeros((), dtype=torch.float64)
    magnitude = torch.relu(torch.exp(p["r_mag"]) * pre + p["b_mag"])
    opened = (candidates & (pi_gate > 0)).double()
    if gate_rule == "batch":
        ranked = pi_gate.detach()[candidates].sort(descending=True).values
        tau = ranked[round(x.shape[0] * target_l0)]
        opened = (candidates & (pi_gate > tau)).double()
        codes = magnitude * opened
    elif gate_rule == "jump":
        to_threshold = pre.detach() + p["b_gate"]
        window = (to_threshold.detach().abs() < bandwidth / 2).double() / bandwidth
        opened = (pi_gate.detach() > 0).double() + (to_threshold - to_threshold.detach()) * window
        opened = torch.where(candidates, opened, torch.zeros_like(opened))
        codes = magnitude * opened
        l0 = l0_coefficient * 2 / target_l0 * (opened.sum(-1).mean() - target_l0) ** 2
    codes = refine(p, codes, opened, x, decoder)
    sae_out = codes @ decoder + p["b_dec"]
    mse = ((sae_out - x) ** 2).sum(-1).mean()

    gate_act = torch.where(candidates, torch.relu(pi_gate), torch.zeros_like(pi_gate))
    via_gate = gate_act @ decoder.detach() + p["b_dec"].detach()
    gate_aux = gate_aux_coefficient * ((via_gate - x) ** 2).sum(-1).mean()
    l1 = l1_coefficient * gate_act.sum(-1).mean()

    aux_k = torch.zeros((), dtype=torch.float64)
    n_dead = 0 if dead_mask is None else int(dead_mask.sum())
    if n_dead > 0:
        chosen = top_k_mask(pre.detach().masked_fill(~dead_mask, float("-inf")), min(k_aux, n_dead))
        residual = (x - sae_out).detach()
        aux_recon = torch.where(chosen, pre, torch.zeros_like(pre)) @ decoder
        aux_k = aux_k_coefficient * min(n_dead / k_aux, 1.0) * ((aux_recon - residual) ** 2).sum(-1).mean()
        gate_error = pre.detach() + p["b_gate"] - residual @ decoder.detach().T
        gate_aux = gate_aux + gate_aux_coefficient * torch.where(chosen, gate_error**2, 0.0).sum(-1).mean()
    return ReferenceOutput(mse, gate_aux, l1, aux_k, l0, sae_out, codes, candidates, pi_gate)


def reference_inference(p: dict[str, Tensor], x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Inference ``(codes, reconstruction)`` of ``x`` ``[n, d_in]``: the stored decoder rows, as saved."""
    codes, candidates, pi_gate, _ = reference_encode(p, x.double(), k)
    codes = refine(p, codes, (candidates & (pi_gate > 0)).double(), x.double(), p["W_dec"])
    return codes, codes @ p["W_dec"] + p["b_dec"]
