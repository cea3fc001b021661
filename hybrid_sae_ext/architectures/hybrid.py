"""HybridSAE: a Gated SAE whose gate may open at most ``k`` latents per token.

One shared encoder ``pre = (x - b_dec) @ W_enc`` feeds two paths (Rajamanoharan et al. 2024):

* gate: ``pi_gate = pre + b_gate``; the top-k latents of ``pi_gate`` are candidates and only those
  with ``pi_gate > 0`` fire, so L0 <= k and falls below k where a token needs fewer features;
* magnitude: ``relu(exp(r_mag) * pre + b_mag)`` sets the value of each firing latent.

There is no ``b_enc``: with ``b_gate`` and ``b_mag`` it would be redundant (as in SAELens' gated SAE).
Training keeps everything after the top-k selection at ``batch x k`` (see ``hybrid_sae_ext.kernels``)
and uses: MSE, the gated auxiliary reconstruction through ``relu(pi_gate)`` with a detached
decoder (so the gate threshold learns), an optional L1 on the gate, and AuxK for dead latents
(Gao et al. 2024). The decoder is used with unit-norm rows during training and saved that way.

Gate rules (``gate_rule``): ``batch`` (the default) is BatchTopK's allocation on ``pi_gate``: in training
exactly the batch's top ``n x target_l0`` of the per-token top-k candidates open (``tau`` = that batch's
threshold), and ``tau``'s EMA is folded into ``b_gate`` for inference, so ``encode`` still reads each token
alone; the per-token cap k is 1.25 x ``target_l0`` by default (at 2 x target the batch gate collapsed at
L0 64; a lighter gate auxiliary loss, which reads all k candidates, helped there too: docs/comparison.md);
``token`` opens the per-token top-k where ``pi_gate > 0`` (with ``target_l0``: ``> tau``, an EMA of the
threshold that leaves ``target_l0`` open on the batch); ``jump`` learns per-latent thresholds (``-b_gate``):
a gate opens where ``pi_gate > 0`` through a straight-through step (JumpReLU's rectangle estimator of width
``gate_bandwidth``, gradient to ``b_gate`` only), trained by the MSE and the quadratic L0 penalty
``l0_coefficient * 2 / t * (L0 - t)^2`` on the batch's mean L0 (Gemma Scope 2's, on the mean so that
L0 still varies per token), with no EMA.

Refinement (``refine_steps``): the magnitude path may take learned steps along the reconstruction's gradient
on each token's own open latents, ``v <- open * relu(v + rate_t * D_S (x - b_dec - D_S^T v))`` (``D_S``: the
token's picked unit decoder rows), so the values of the chosen latents fit them jointly instead of one by
one. Per token, at most ``k`` latents: the gate alone decides which latents fire; training differentiates
through the steps.

Dead latents: AuxK takes, per token, the top-``k_aux`` dead latents by ``pre`` (not ``pi_gate``,
so a latent shut by a very negative ``b_gate`` is still found) and trains their encoder and decoder
on the detached residual ``r = x - x_hat``. The gated auxiliary loss also reaches their gates: it
adds ``sum_dead (sg(pre_i) + b_gate_i - r . sg(d_i))^2``, so each dead latent's ``pi_gate`` learns
the residual's component along its own decoder row (positive where the latent would help). Why: a
closed gate (``pi_gate <= 0``) gets no gradient from any other term, so a latent shut by a very
negative ``b_gate`` would stay shut for ever. Only ``b_gate`` learns from this term, and each gate
only from its own error (no cross terms, so one far-off gate cannot swing the others). Under Adam
a bias moves about ``lr`` per step: climbing from ``b_gate = -100`` takes about ``100 / lr`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from sae_lens.saes.sae import SAE, TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import Tensor, nn
from typing_extensions import override

from hybrid_sae_ext.architectures.gate_activation import GatedTopK
from hybrid_sae_ext.architectures.hybrid_config import HybridSAEConfig, HybridTrainingSAEConfig
from hybrid_sae_ext.architectures.protocols import CandidateCodes, SparseCodes, SparseStep
from hybrid_sae_ext.architectures.reduction import ALL_LATENTS, LatentReduction
from hybrid_sae_ext.kernels import TopKSelection, get_kernels
from hybrid_sae_ext.kernels.primitives import gathered_dot, take
from hybrid_sae_ext.kernels.row_norms import inverse_row_norms
from hybrid_sae_ext.kernels.selection import select_topk

TARGET_L0_THRESHOLD_RATE = 0.05
"""Per-step EMA rate of the adaptive gate threshold (``target_l0``): settles in ~1/rate steps."""
REFINE_RATE_INIT = 0.5
"""Initial step of each refinement step: below 1 / (largest eigenvalue of a pick's Gram matrix) for
near-orthogonal unit rows, so early steps shrink the residual instead of overshooting."""


class HybridLosses(NamedTuple):
    """The terms of the hybrid training loss (each already weighted)."""

    mse: Tensor
    gate_aux: Tensor
    l1: Tensor
    aux_k: Tensor
    l0: Tensor
    """The ``jump`` gate's quadratic L0 penalty (zero for the other gate rules)."""

    def total(self) -> Tensor:
        return self.mse + self.gate_aux + self.l1 + self.aux_k + self.l0


class _StraightThroughStep(torch.autograd.Function):
    """``1[z > 0]`` forward; backward ``1[|z| < bandwidth / 2] / bandwidth`` (JumpReLU's rectangle kernel)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z)
        ctx.bandwidth = bandwidth
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad * ((z.abs() < ctx.bandwidth / 2).to(grad.dtype) / ctx.bandwidth), None


class HybridTrainOutput(NamedTuple):
    """One sparse training forward: loss terms, reconstruction and codes."""

    losses: HybridLosses
    sae_out: Float[Tensor, "n d_in"]
    codes: SparseCodes


class _HybridMixin:
    """Parameters and gate/magnitude math shared by the inference and training classes.

    ``W_enc`` (``[d_in, d_sae]`` as in SAELens) is stored latent-major, as the transpose of a contiguous
    ``[d_sae, d_in]`` tensor: the exact rescoring and the input gradient read encoder columns and the
    sparse weight gradient comes out latent-major, so in this layout no step copies ``W_enc``.
    """

    cfg: Any
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    b_gate: nn.Parameter
    r_mag: nn.Parameter
    b_mag: nn.Parameter
    refine_rate: nn.Parameter
    dtype: torch.dtype
    device: torch.device

    def _init_hybrid_params(self) -> None:
        for name in ("b_gate", "r_mag", "b_mag"):
            setattr(self, name, nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device)))
        if self.cfg.refine_steps:
            # Only refining SAEs carry it, so other checkpoints keep their state-dict keys.
            rates = torch.full((self.cfg.refine_steps,), REFINE_RATE_INIT, dtype=self.dtype, device=self.device)
            self.refine_rate = nn.Parameter(rates)
        self.W_enc.data = self.W_enc.data.t().contiguous().t()

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        """Saved ``W_enc`` is contiguous ``[d_in, d_sae]`` (SAELens' layout; safetensors refuses strided tensors)."""
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        if not keep_vars and prefix + "W_enc" in destination:
            destination[prefix + "W_enc"] = destination[prefix + "W_enc"].contiguous()

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        """SAELens loads with ``assign=True``, so the loaded ``W_enc`` must already be latent-major.

        Weights without ``refine_rate`` were saved before refinement existed (their ``cfg.json`` has no
        ``refine_steps``, so the config took today's default): they were trained without it and load as such.
        """
        super().process_state_dict_for_loading(state_dict)  # type: ignore[misc]
        if self.cfg.refine_steps and "refine_rate" not in state_dict:
            self.cfg.refine_steps = 0
            del self.refine_rate
        if "W_enc" in state_dict:
            state_dict["W_enc"] = state_dict["W_enc"].t().contiguous().t()

    def decoder_rows(self) -> Float[Tensor, "d_sae d_in"]:
        """The decoder as used in the forward pass."""
        return self.W_dec

    @property
    def kernel_backend(self) -> str:
        return getattr(self.cfg, "kernel_backend", "sparse")

    def _gate_threshold(self) -> Tensor | float:
        """The adaptive gate's threshold (``target_l0``); 0 for fixed k and at inference, which folds it into b_gate."""
        return getattr(self, "gate_threshold", 0.0)

    def _gate_and_magnitude(self, selection: TopKSelection) -> tuple[Tensor, Tensor]:
        """``pi_gate`` and the magnitude path's values of the selected latents (before any gate opens)."""
        idx = selection.indices
        gate_pre = selection.values + take(self.b_gate, idx)
        magnitude = torch.relu(take(self.r_mag, idx).exp() * selection.values + take(self.b_mag, idx))
        return gate_pre, magnitude

    def _codes(self, selection: TopKSelection, gate_threshold: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
        """Gate pre-activations (minus the adaptive threshold, if any) and gated magnitudes of the selected latents."""
        gate_pre, magnitude = self._gate_and_magnitude(selection)
        gate_pre = gate_pre - gate_threshold
        return gate_pre, magnitude * (gate_pre > 0)

    def _inverse_norms(self) -> Tensor | None:
        """The decodes' row scales: None where ``W_dec`` is stored unit-norm (inference)."""
        return None

    def _refine(
        self,
        values: Float[Tensor, "n k"],
        indices: Int[Tensor, "n k"],
        opened: Float[Tensor, "n k"],
        centered: Float[Tensor, "n d_in"],
        decoded: Float[Tensor, "n d_in"] | None = None,
        sum_latents: Callable[[Tensor], Tensor] = ALL_LATENTS.sum,
    ) -> Float[Tensor, "n k"]:
        """The magnitude path's refinement steps (``refine_steps``; the module docstring has the rule).

        ``centered`` is ``x - b_dec``; ``decoded`` (optional) the decode of ``values`` already at hand;
        ``sum_latents`` completes a decode where the latents are sharded (``LatentReduction.sum``).
        Why the ``open`` factor and not a mask of ``values > 0``: the gate decides the support, so a
        latent the gate opened may take a value here even where its magnitude was clipped to 0.
        """
        if not self.cfg.refine_steps:
            return values
        kernels = get_kernels(self.kernel_backend)
        scales = self._inverse_norms()
        for rate in self.refine_rate:
            if decoded is None and sum_latents == ALL_LATENTS.sum:
                # One fused pass where no gradient is wanted (inference): see ``sparse_residual_row_dots``.
                step = kernels.residual_row_dots(centered, values, indices, self.W_dec, scales)
            else:
                if decoded is None:
                    decoded = sum_latents(kernels.decode(values, indices, self.W_dec, scales))
                step = kernels.row_dots(centered - decoded, indices, self.W_dec, scales)
            values = torch.relu(values + rate * step) * opened
            decoded = None
        return values

    def _flat(self, sae_in: Tensor) -> Tensor:
        return sae_in.reshape(-1, self.cfg.d_in)

    def _check_input(self, x: Tensor) -> None:
        """Runs before SAELens' ``process_sae_in``, so hook_z inputs still have ``[..., n_heads, d_head]``."""
        if getattr(self, "hook_z_reshaping_mode", False):
            if x.ndim < 2 or x.shape[-2] * x.shape[-1] != self.cfg.d_in:
                raise ValueError(
                    f"hook_z input has shape {tuple(x.shape)} but this SAE needs [..., n_heads, d_head] "
                    f"with n_heads * d_head = d_in={self.cfg.d_in}"
                )
        elif x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"input has last dimension {x.shape[-1]} but this SAE has d_in={self.cfg.d_in}"
            )
        if x.numel() == 0:
            raise ValueError(f"input has shape {tuple(x.shape)}: an empty batch; need at least one token")
        # One summing pass (NaN and inf reach the sum); the elementwise check only if the sum overflowed.
        if not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
            raise ValueError("input activations contain NaN or Inf; refusing to encode them")

    def encode_candidates(self, x: Float[Tensor, "... d_in"]) -> CandidateCodes:
        """Every top-k candidate of each token, ``[..., k]``: its code, latent id and gate pre-activation
        (minus the adaptive threshold); what ``encode_sparse`` returns, with the gates it drops."""
        self._check_input(x)
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        encode = get_kernels(self.kernel_backend).encode
        selection, _ = encode(
            self._flat(sae_in), self.W_enc, self.b_gate, self.cfg.k, selection_dtype=self.cfg.selection_dtype
        )
        gate, values = self._codes(selection, self._gate_threshold())
        values = self._refine(values, selection.indices, (gate > 0).to(values.dtype), self._centered(self._flat(sae_in)))
        lead = sae_in.shape[:-1]
        return CandidateCodes(*(t.reshape(*lead, -1) for t in (values, selection.indices, gate)))

    def encode_sparse(self, x: Float[Tensor, "... d_in"]) -> SparseCodes:
        """Codes as (values, indices), each ``[..., k]``: the cheap form for large batches."""
        codes = self.encode_candidates(x)
        return SparseCodes(codes.values, codes.indices)

    def decode_sparse(self, codes: SparseCodes) -> Float[Tensor, "... d_in"]:
        """Decode sparse codes without building the dense code matrix."""
        decode = get_kernels(self.kernel_backend).decode
        k = codes.values.shape[-1]
        flat = decode(codes.values.reshape(-1, k), codes.indices.reshape(-1, k), self.decoder_rows())
        out = flat.reshape(*codes.values.shape[:-1], self.cfg.d_in) + self.b_dec
        return self._finish_decode(out)

    def _finish_decode(self, sae_out_pre: Tensor) -> Tensor:
        sae_out_pre = self.hook_sae_recons(sae_out_pre)  # type: ignore[attr-defined]
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)  # type: ignore[attr-defined]
        return self.reshape_fn_out(sae_out_pre, self.d_head)  # type: ignore[attr-defined]

    def get_activation_fn(self) -> GatedTopK:
        """SAELens' ``TopK`` type applying the gate, so tools that dispatch on it treat the hybrid as top-k."""
        return GatedTopK(self, self.cfg.k)

    @property
    def b_enc(self) -> Tensor:
        """Read-only alias of ``b_mag`` (the bias of the magnitude path, whose values are the codes) for tools
        that read every non-gated SAE's ``b_enc`` (SAEBench). Detached, not a Parameter, so SAELens' folds,
        which shift a ``b_enc`` Parameter, leave it alone; the hybrid's own folds scale ``b_mag``."""
        return self.b_mag.detach()

    def gated_codes(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """Dense codes from the shared pre-activation ``pre``: top-k of ``pi_gate``, gated magnitudes."""
        flat_pre = pre.reshape(-1, self.cfg.d_sae)
        indices, _, values = self._gated_selection(flat_pre)
        return torch.zeros_like(flat_pre).scatter(1, indices, values).reshape(pre.shape)

    def _gated_selection(self, flat_pre: Float[Tensor, "n d_sae"]) -> tuple[Tensor, Tensor, Tensor]:
        """``(indices, gate pre-activations, gated magnitudes)`` of the top-k of ``pi_gate`` (exact scores)."""
        indices, _ = select_topk(flat_pre + self.b_gate, self.b_gate, self.cfg.k, None, 0)
        gate_pre, values = self._codes(TopKSelection(flat_pre.gather(1, indices), indices), self._gate_threshold())
        return indices, gate_pre, values

    def _dense_encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SAE-API encode: dense codes ``[..., d_sae]`` and the hooked pre-activations."""
        self._check_input(x)
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        pre = self.hook_sae_acts_pre(sae_in @ self.W_enc)  # type: ignore[attr-defined]
        if not self.cfg.refine_steps:
            return self.hook_sae_acts_post(self.activation_fn(pre)), pre  # type: ignore[attr-defined]
        # Refined codes depend on the input as well as on ``pre``: the activation function alone cannot give them.
        indices, gate_pre, values = self._gated_selection(pre.reshape(-1, self.cfg.d_sae))
        values = self._refine(values, indices, (gate_pre > 0).to(values.dtype), self._centered(self._flat(sae_in)))
        dense = torch.zeros_like(pre).reshape(-1, self.cfg.d_sae).scatter(1, indices, values).reshape(pre.shape)
        return self.hook_sae_acts_post(dense), pre  # type: ignore[attr-defined]

    def _centered(self, sae_in: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_in"]:
        """``x - b_dec`` of a processed SAE input (what the refinement's residual is measured against)."""
        return sae_in if self.cfg.apply_b_dec_to_input else sae_in - self.b_dec

    def _dense_decode(self, feature_acts: Tensor) -> Tensor:
        return self._finish_decode(feature_acts @ self.decoder_rows() + self.b_dec)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """Fold the scale ``s`` the SAE was trained under (inputs ``s * x``) so it takes raw ``x``.

        Why not SAELens' base fold (``W_enc *= s; W_dec /= s; b_dec /= s``): the training hybrid decodes
        with unit-norm rows, so ``W_dec /= s`` does nothing there. Dividing ``b_dec``, ``b_gate``, ``b_mag``
        (and the adaptive threshold) by ``s`` instead divides every ``pre``, ``pi_gate`` and code by ``s``:
        the same top-k and open gates, output ``x_hat(s * x) / s``, decoder rows still unit-norm, and the
        codes in raw-activation units, as if trained on unscaled activations.
        """
        if not (isinstance(scaling_factor, (int, float)) and 0 < scaling_factor < float("inf")):
            raise ValueError(f"scaling_factor must be a finite number > 0, got {scaling_factor!r}")
        for param in (self.b_dec, self.b_gate, self.b_mag):
            param.data.div_(scaling_factor)
        threshold = self._gate_threshold()
        if isinstance(threshold, Tensor):
            threshold.div_(scaling_factor)
        self.cfg.normalize_activations = "none"


class HybridSAE(_HybridMixin, SAE[HybridSAEConfig]):
    """Inference hybrid SAE. ``HybridSAE(d_model=768, n_features=32768, k_sparse=128)`` or ``HybridSAE(cfg)``."""

    def __init__(
        self,
        cfg: HybridSAEConfig | None = None,
        use_error_term: bool = False,
        *,
        d_model: int | None = None,
        n_features: int | None = None,
        k_sparse: int | None = None,
        **cfg_kwargs: Any,
    ):
        shorthand = (d_model, n_features, k_sparse)
        if cfg is None:
            if None in shorthand:
                raise ValueError(
                    "pass either cfg=HybridSAEConfig(...) or all of d_model, n_features, k_sparse; "
                    f"got d_model={d_model}, n_features={n_features}, k_sparse={k_sparse}"
                )
            cfg = HybridSAEConfig(d_in=d_model, d_sae=n_features, k=k_sparse, **cfg_kwargs)  # type: ignore[arg-type]
        elif any(v is not None for v in shorthand) or cfg_kwargs:
            raise ValueError("pass either cfg or the d_model/n_features/k_sparse shorthand, not both")
        super().__init__(cfg, use_error_term)

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        with torch.no_grad():
            self.W_dec.data /= self.W_dec.norm(dim=-1, keepdim=True)
            self.W_enc.data = self.W_dec.data.T.clone()
        self._init_hybrid_params()

    @override
    def encode(self, x: Tensor) -> Tensor:
        """Dense codes ``[..., d_sae]`` with at most ``k`` non-zeros per token, all >= 0."""
        return self._dense_encode(x)[0]

    @override
    def decode(self, feature_acts: Tensor) -> Tensor:
        return self._dense_decode(feature_acts)

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Fold a decoder norm shared by all latents (e.g. after ``fold_activation_norm_scaling_factor``).

        Scaling ``W_enc``, ``b_gate`` and ``b_mag`` by the common norm ``c`` scales every ``pi_gate`` and
        every code by ``c > 0``, so the top-k, the open gates and the reconstruction are unchanged.
        Per-latent norms would reorder the top-k, so they are refused.
        """
        norms = self.get_W_dec_norm()
        common = norms.mean()
        if not torch.allclose(norms, common.expand_as(norms), rtol=1e-4, atol=0.0):
            raise NotImplementedError(
                "Folding decoder norms into a HybridSAE would change its top-k selection; decoder row "
                f"norms range from {norms.min().item():.6g} to {norms.max().item():.6g}, and only a norm "
                "shared by all latents can be folded. Hybrid SAEs are saved with unit-norm decoder rows."
            )
        self.W_dec.data.div_(common)
        for param in (self.W_enc, self.b_gate, self.b_mag):
            param.data.mul_(common)
        if self.cfg.refine_steps:
            # Codes scale by c and the rows' dots with the residual by 1 / c: the steps scale by c^2.
            self.refine_rate.data.mul_(common**2)


class HybridTrainingSAE(_HybridMixin, TrainingSAE[HybridTrainingSAEConfig]):
    """Training hybrid SAE: SAELens' runner trains it as is; ``hybrid_forward`` is the sparse step."""

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self._init_hybrid_params()
        if self.cfg.target_l0 is not None and self.cfg.gate_rule != "jump":
            # Only adaptive SAEs carry it, so fixed-k checkpoints keep their state-dict keys.
            self.register_buffer("gate_threshold", torch.zeros((), dtype=self.dtype, device=self.device))

    @torch.no_grad()
    def _forward_threshold(self, gate_pre_raw: Float[Tensor, "n k"]) -> Tensor | float:
        """The gate threshold this training forward uses, after moving the EMA toward this batch's threshold
        (the one that leaves exactly ``target_l0`` latents per token open on it).

        Why an EMA of the batch quantile: the threshold is a property of the pre-activation distribution,
        so estimating it directly converges in ~1/rate steps without the oscillation of a controller on a
        loss coefficient. The ``token`` rule's forward uses the EMA (never the batch quantile), so training
        gates each token alone; the ``batch`` rule's forward uses the batch's own threshold, as BatchTopK
        does, and the EMA only serves inference.
        """
        ema = self._gate_threshold()
        if not isinstance(ema, Tensor) or not self.training or gate_pre_raw.shape[0] == 0:
            return ema
        candidates = gate_pre_raw.flatten()
        closed = candidates.numel() - round(gate_pre_raw.shape[0] * self.cfg.target_l0)
        # Latents fire on ``> threshold``: the closed-th smallest candidate leaves exactly the target open.
        batch_threshold = candidates.kthvalue(closed).values if closed >= 1 else candidates.min() - 1.0
        forward = batch_threshold.to(ema.dtype) if self.cfg.gate_rule == "batch" else ema.clone()
        ema.lerp_(batch_threshold.to(ema.dtype), TARGET_L0_THRESHOLD_RATE)
        return forward

    def decoder_scales(self) -> Float[Tensor, " d_sae"]:
        """``1 / ||W_dec[i]||``: the unit-norm constraint as a reparametrisation, so any trainer keeps it.

        The sparse forward hands it (detached) to the decodes, which scale the selected codes by it and
        differentiate through the normalisation themselves: the same products as a normalised decoder,
        without its ``d_sae x d_in`` passes (two forward, ~8 backward per step).
        """
        return inverse_row_norms(self.W_dec)

    @override
    def _inverse_norms(self) -> Tensor:
        return self.decoder_scales()

    @override
    def decoder_rows(self) -> Tensor:
        """Unit-norm decoder rows."""
        return self.W_dec * self.decoder_scales()[:, None]

    @override
    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._dense_encode(x)

    @override
    def decode(self, feature_acts: Tensor) -> Tensor:
        return self._dense_decode(feature_acts)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"l1": TrainCoefficientConfig(self.cfg.l1_coefficient, self.cfg.l1_warm_up_steps)}

    def sparse_training_step(
        self, x: Float[Tensor, "... d_in"], dead_mask: Tensor | None, coefficients: Mapping[str, float]
    ) -> SparseStep:
        """The ``SparseTrainingStep`` protocol (what the trainer calls): ``hybrid_forward``'s total loss."""
        out = self.hybrid_forward(x, dead_mask, coefficients.get("l1"))
        return SparseStep(out.losses.total(), out.sae_out, out.codes)

    def hybrid_forward(
        self,
        x: Float[Tensor, "... d_in"],
        dead_mask: Tensor | None = None,
        l1_coefficient: float | None = None,
        latents: LatentReduction = ALL_LATENTS,
    ) -> HybridTrainOutput:
        """The sparse training forward; ``dead_mask`` ([d_sae] bool) enables AuxK.

        ``latents`` says where the latents live: all here by default; the latent-sharded step passes its
        rank's share (``distributed.sharded``), which selects across ranks, masks (``held``) the entries
        other ranks hold and all-reduces (``sum``) every sum over latents. The loss is written once, here.
        """
        self._check_input(x)
        kernels = get_kernels(self.kernel_backend)
        target = self._flat(x.to(self.dtype))
        n_dead = latents.count(0 if dead_mask is None else int(dead_mask.sum()))
        k_aux = min(self.cfg.effective_k_aux, n_dead)
        sae_in = self._flat(self.process_sae_in(x))
        # Where only b_dec needs the encoder's input gradient (no gradient wanted for x, no hook on the
        # input that could add a path), the encoder computes it directly (see ``sparse_encode``).
        bias_only = self.cfg.apply_b_dec_to_input and not x.requires_grad and not self.hook_sae_input._forward_hooks
        sel, aux = latents.encode(
            kernels.encode, sae_in.detach() if bias_only else sae_in, self.W_enc, self.b_gate, self.cfg.k,
            dead_mask, k_aux, self.cfg.selection_dtype, self.b_dec if bias_only else None,
        )
        # The gate's own terms see the un-thresholded gate, so the adaptive threshold cannot drag b_gate along.
        gate_pre, magnitude = self._gate_and_magnitude(sel)
        l0_penalty = gate_pre.new_zeros(())
        if self.cfg.gate_rule == "jump":
            # The step's gradient reaches the thresholds (b_gate) only, as in DeepMind's JumpReLU.
            opened = latents.held(sel, _StraightThroughStep.apply(
                sel.values.detach() + take(self.b_gate, sel.indices), self.cfg.gate_bandwidth
            ))
            t = self.cfg.target_l0
            l0_penalty = self.cfg.l0_coefficient * 2 / t * (latents.sum(opened.sum(-1)).mean() - t) ** 2
        else:
            every_gate_pre = latents.sum(latents.held(sel, gate_pre.detach()))
            opened = latents.held(sel, (gate_pre - self._forward_threshold(every_gate_pre) > 0).to(magnitude.dtype))
        values = latents.held(sel, magnitude * opened)
        # The decodes use unit-norm rows and differentiate through the normalisation themselves, given
        # the inverse norms (see ``decoder_scales``); the gradient's norm term lands in W_dec's in place.
        W_dec = self.W_dec
        with torch.no_grad():
            scales = self.decoder_scales()
        gate_act = latents.held(sel, torch.relu(gate_pre))
        # The gated auxiliary reconstruction trains the gate only: its decoder and b_dec are detached.
        decoded, gate_decoded = kernels.decode_pair(values, gate_act, sel.indices, W_dec, W_dec.detach(), scales)
        decoded = latents.sum(decoded)
        if self.cfg.refine_steps:
            values = self._refine(values, sel.indices, opened, target - self.b_dec, decoded, latents.sum)
            decoded = latents.sum(kernels.decode(values, sel.indices, W_dec, scales))
        sae_out = decoded + self.b_dec
        mse = (sae_out - target).pow(2).sum(-1).mean()
        via_gate = latents.sum(gate_decoded) + self.b_dec.detach()
        gate_aux = self.cfg.gate_aux_coefficient * (via_gate - target).pow(2).sum(-1).mean()
        l1_coef = self.cfg.l1_coefficient if l1_coefficient is None else l1_coefficient
        l1 = l1_coef * latents.sum(gate_act.sum(-1)).mean()

        aux_k = mse.new_zeros(())
        if aux is not None:
            residual = (target - sae_out).detach()
            aux_recon = latents.sum(kernels.decode(latents.held(aux, aux.values), aux.indices, W_dec, scales))
            scale = min(n_dead / self.cfg.effective_k_aux, 1.0)
            aux_k = self.cfg.aux_k_coefficient * scale * (aux_recon - residual).pow(2).sum(-1).mean()
            dead_gate = aux.values.detach() + take(self.b_gate, aux.indices)
            along_row = gathered_dot(residual, W_dec.detach().t(), aux.indices) * take(scales, aux.indices)
            dead_gate_error = latents.held(aux, (dead_gate - along_row).pow(2)).sum(-1)
            gate_aux = gate_aux + self.cfg.gate_aux_coefficient * latents.sum(dead_gate_error).mean()

        losses = HybridLosses(mse=mse, gate_aux=gate_aux, l1=l1, aux_k=aux_k, l0=l0_penalty)
        return HybridTrainOutput(losses, sae_out, SparseCodes(*latents.codes(sel, values)))

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """SAELens' training step on the sparse forward. ``feature_acts`` (detached) is dense ``[batch, d_sae]``,
        or with ``use_sparse_activations`` a sparse COO tensor of ``batch * k`` entries (SAELens' trainer reads
        it through ``.bool()``, ``.sum`` and ``.to_dense()`` of reductions, which accept either)."""
        out = self.hybrid_forward(
            step_input.sae_in, step_input.dead_neuron_mask, step_input.coefficients.get("l1")
        )
        with torch.no_grad():
            values, indices = out.codes.values.detach(), out.codes.indices
            shape = (values.shape[0], self.cfg.d_sae)
            if self.cfg.use_sparse_activations:
                tokens = torch.arange(values.shape[0], device=values.device).repeat_interleave(values.shape[1])
                feature_acts = torch.sparse_coo_tensor(
                    torch.stack([tokens, indices.reshape(-1)]), values.reshape(-1), shape,
                    is_coalesced=True, check_invariants=False,
                )
            else:
                feature_acts = values.new_zeros(shape).scatter_(1, indices, values)
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=out.sae_out.reshape(step_input.sae_in.shape),
            feature_acts=feature_acts,
            hidden_pre=out.codes.values,
            loss=out.losses.total(),
            losses={
                "mse_loss": out.losses.mse,
                "gate_aux_loss": out.losses.gate_aux,
                "l1_loss": out.losses.l1,
                "auxiliary_reconstruction_loss": out.losses.aux_k,
                "l0_loss": out.losses.l0,
            },
        )

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: Tensor,
        hidden_pre: Tensor,
        sae_out: Tensor,
    ) -> dict[str, Tensor]:
        """The hybrid's auxiliary terms for ``step_input`` (recomputed by the sparse forward)."""
        out = self.hybrid_forward(
            step_input.sae_in, step_input.dead_neuron_mask, step_input.coefficients.get("l1")
        )
        return {
            "gate_aux_loss": out.losses.gate_aux,
            "l1_loss": out.losses.l1,
            "auxiliary_reconstruction_loss": out.losses.aux_k,
            "l0_loss": out.losses.l0,
        }

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        state_dict["W_dec"] = self.decoder_rows().detach().clone()
        if "gate_threshold" in state_dict:
            # A shared shift of b_gate leaves the top-k order alone, so inference needs no threshold.
            state_dict["b_gate"] = state_dict["b_gate"] - state_dict.pop("gate_threshold")

    @override
    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """Normalise the stored decoder rows; the forward already uses them unit-norm."""
        self.W_dec.data.copy_(self.decoder_rows())
