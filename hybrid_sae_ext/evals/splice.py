"""Splice an SAE into a TransformerLens model and measure what the reconstruction costs.

Why: reconstruction error alone does not say whether the model still works on the SAE's output.
``evaluate_sae`` runs held-out tokens three times per batch (clean, with the hook point's
activation replaced by the SAE reconstruction, with it zero-ablated) and reports downstream loss,
KL divergence, reconstruction quality and latent statistics in one typed ``SpliceEvalResult``.

Definitions follow ``sae_lens.evals`` (6.54) so numbers compare with SAELens' own evals:

* Special tokens (BOS/EOS/PAD ids of the tokenizer, by default) are *excluded*, as in
  ``run_evals(exclude_special_tokens=True)``: at those positions the SAE is not spliced (the
  activation passes through unchanged); their predictions are left out of the CE and KL means
  (CE drops the prediction *made at* a special token); their activations are left out of the
  reconstruction and latent statistics. BOS activations have outsized norms and SAEs are not
  trained on them, so including them would mostly measure that. The zero-ablation baseline
  zeroes *every* position, special ones included, exactly as SAELens does; hence an SAE whose
  output is zero reaches CE recovered 0 only with ``exclude_special_tokens=False``.
* CE recovered is ``(CE_zero - CE_sae) / (CE_zero - CE_clean)`` with each CE the mean over all
  evaluated tokens (not a mean of per-batch scores); KL is ``KL(clean || sae)`` of the
  next-token distributions, mean per token.
* Unlike SAELens' ``run_evals`` (whose ``reset_input_dataset`` does not rewind the token stream,
  so its sparsity metrics see the batches *after* its CE batches), every metric here is computed
  on the same tokens, read from the spliced forward pass itself.

The model may be a plain ``HookedTransformer`` or a ``HookedSAETransformer`` (with no SAEs
attached): the splice is a ``run_with_hooks`` forward hook. Hooks whose activation is split by
head (``hook_z`` with ``[..., n_heads, d_head]``) are not supported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import SAE
from sae_lens.util import get_special_token_ids
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint

from hybrid_sae_ext.evals.stats import Histogram, LatentAccumulator, MeanAccumulator, ReconstructionAccumulator
from hybrid_sae_ext.progress import progress_bar

HookFn = Callable[[Tensor, HookPoint], Tensor]
SpliceObserver = Callable[[Tensor, Tensor, Tensor], None]
"""Called as ``observer(x, x_hat, codes)`` with the kept tokens, each ``[n_kept, d]``."""


@dataclass
class SpliceEvalResult:
    """Metrics of one SAE spliced at one hook point, over the evaluated (non-excluded) tokens."""

    hook_name: str
    """Hook point whose activation was replaced."""
    n_sequences: int
    """Token rows evaluated."""
    context_size: int
    """Tokens per row."""
    n_tokens: int
    """Positions that count towards the activation metrics (all positions minus excluded ones)."""
    n_excluded_tokens: int
    """Positions holding an excluded (special) token: not spliced and not counted."""
    excluded_token_ids: list[int]
    """Token ids that were excluded (BOS/EOS/PAD by default; empty when nothing is excluded)."""
    ce_loss_clean: float
    """Next-token cross entropy (nats) of the unmodified model."""
    ce_loss_with_sae: float
    """Cross entropy with the hook point's activation replaced by the SAE reconstruction."""
    ce_loss_zero_ablation: float
    """Cross entropy with the hook point's activation set to zero at every position."""
    ce_loss_recovered: float
    """``(CE_zero - CE_sae) / (CE_zero - CE_clean)``: 1 is a perfect splice, 0 no better than zeros."""
    kl_div_with_sae: float
    """Mean per token of ``KL(clean || sae)`` over next-token distributions (nats)."""
    kl_div_zero_ablation: float
    """Mean per token of ``KL(clean || zero-ablated)``, the scale against which to read the above."""
    mse: float
    """Mean over tokens of ``||x - x_hat||^2`` (summed over dimensions; SAELens' ``mse``)."""
    normalized_mse: float
    """``sum ||x - x_hat||^2 / sum ||x||^2``: error relative to reconstructing with zeros."""
    fvu: float
    """Fraction of variance unexplained, ``E||x - x_hat||^2 / Var(x)`` (relative to the mean)."""
    explained_variance: float
    """``1 - fvu``; SAELens' ``explained_variance``."""
    cosine_similarity: float
    """Mean per token of ``cos(x, x_hat)`` (0, not NaN, where ``x_hat`` is zero)."""
    l0_mean: float
    """Mean number of non-zero latents per token."""
    l0_histogram: list[int]
    """``l0_histogram[j]``: tokens on which exactly ``j`` latents fired."""
    d_sae: int
    """Number of latents."""
    n_dead: int
    """Latents that never fired on the evaluated tokens."""
    n_dense: int
    """Latents that fired on more than ``dense_threshold`` of the evaluated tokens."""
    dense_threshold: float
    """Firing frequency above which a latent counts as dense."""
    density_histogram: Histogram
    """Histogram of log10 firing frequency of the latents that fired (dead ones are in ``n_dead``)."""
    feature_density: list[float]
    """Firing frequency of each latent (SAELens' ``feature_density``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (nested histogram as a dict)."""
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, float | int]:
        """The scalar metrics only: what to print or log."""
        return {k: v for k, v in self.to_dict().items() if isinstance(v, (int, float))}

    def headline(self) -> str:
        """The numbers to judge an SAE by, on one line (what a run prints last)."""
        return (
            f"ce_loss_recovered={self.ce_loss_recovered:.4f}, kl_div={self.kl_div_with_sae:.4f}, fvu={self.fvu:.4f}, "
            f"explained_variance={self.explained_variance:.4f}, l0_mean={self.l0_mean:.2f}, "
            f"dead={self.n_dead}/{self.d_sae} ({self.n_dead / max(self.d_sae, 1):.1%})"
        )


def special_token_mask(tokens: Tensor, token_ids: Iterable[int]) -> Tensor:
    """Bool ``[batch, pos]``: True where ``tokens`` holds one of ``token_ids``."""
    ids = torch.tensor(sorted(set(token_ids)), dtype=tokens.dtype, device=tokens.device)
    return torch.isin(tokens, ids)


def sae_replacement_hook(sae: SAE[Any], keep: Tensor | None = None, observer: SpliceObserver | None = None) -> HookFn:
    """Forward hook replacing the activation ``[batch, pos, d_in]`` by ``sae.decode(sae.encode(x))``.

    ``keep`` (bool ``[batch, pos]``) limits the replacement to those positions; elsewhere the
    activation passes through. ``observer`` sees the kept inputs, reconstructions and codes.
    """

    def replace(activation: Tensor, hook: HookPoint) -> Tensor:
        if activation.ndim != 3 or activation.shape[-1] != sae.cfg.d_in:
            raise ValueError(
                f"activation at {hook.name} has shape {tuple(activation.shape)}; the SAE needs "
                f"[batch, pos, d_in={sae.cfg.d_in}] (head-split hooks are not supported)"
            )
        x = activation.to(sae.device)
        codes = sae.encode(x)
        codes = codes.to_dense() if codes.is_sparse else codes
        x_hat = sae.decode(codes).to(activation.dtype)
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if keep is None else keep.to(x.device)
        if observer is not None:
            observer(x[mask], x_hat[mask], codes[mask])
        return torch.where(mask[..., None], x_hat, x).to(activation.device)

    return replace


def zero_ablation_hook(activation: Tensor, hook: HookPoint) -> Tensor:
    """Forward hook setting the activation to zero at every position (SAELens' ablation baseline)."""
    return torch.zeros_like(activation)


def _kl_per_token(clean_logits: Tensor, new_logits: Tensor) -> Tensor:
    """``KL(clean || new)`` per position, ``[batch, pos]``, in float32 or wider."""
    dtype = torch.promote_types(clean_logits.dtype, torch.float32)
    clean = torch.log_softmax(clean_logits.to(dtype), dim=-1)
    new = torch.log_softmax(new_logits.to(dtype), dim=-1)
    return torch.nn.functional.kl_div(new, clean, reduction="none", log_target=True).sum(-1)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN (not an exception) when the ablation does not change the loss."""
    return numerator / denominator if denominator != 0 else float("nan")


def _excluded_ids(model: HookedTransformer, exclude_special_tokens: bool | Iterable[int]) -> list[int]:
    if exclude_special_tokens is True:
        if model.tokenizer is None:
            raise ValueError("exclude_special_tokens=True needs model.tokenizer; pass the ids to exclude instead")
        return sorted(get_special_token_ids(model.tokenizer))
    if exclude_special_tokens is False:
        return []
    return sorted(set(exclude_special_tokens))


@torch.no_grad()
def evaluate_sae(
    model: HookedTransformer,
    sae: SAE[Any],
    tokens: Tensor,
    hook_name: str | None = None,
    batch_size: int = 8,
    n_batches: int | None = None,
    exclude_special_tokens: bool | Iterable[int] = True,
    dense_threshold: float = 0.1,
    progress: bool = False,
) -> SpliceEvalResult:
    """Evaluate ``sae`` spliced into ``model`` at ``hook_name`` on ``tokens`` ``[n_rows, context]``.

    ``hook_name`` defaults to ``sae.cfg.metadata.hook_name``. Rows are taken in order, ``batch_size``
    at a time, for ``n_batches`` batches (None: all rows). ``exclude_special_tokens``: True excludes
    the tokenizer's BOS/EOS/PAD ids (SAELens' default), False nothing, or give the ids. The SAE is
    used as is: activation scaling must already be folded in (as SAELens saves trained SAEs).
    """
    hook_name = hook_name or sae.cfg.metadata.hook_name
    if not hook_name:
        raise ValueError("no hook_name given and sae.cfg.metadata.hook_name is not set")
    if hook_name not in model.hook_dict:
        raise ValueError(f"model has no hook point {hook_name!r}")
    if getattr(model, "acts_to_saes", None):
        raise ValueError("model has SAEs attached; call model.reset_saes() before evaluating another splice")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_rows, context], got shape {tuple(tokens.shape)}")
    n_rows = tokens.shape[0] if n_batches is None else min(tokens.shape[0], n_batches * batch_size)
    if n_rows == 0:
        raise ValueError("no token rows to evaluate")
    excluded = _excluded_ids(model, exclude_special_tokens)

    ce_clean, ce_sae, ce_zero = MeanAccumulator(), MeanAccumulator(), MeanAccumulator()
    kl_sae, kl_zero = MeanAccumulator(), MeanAccumulator()
    recon = ReconstructionAccumulator()
    latents = LatentAccumulator.for_latents(sae.cfg.d_sae)

    def observe(x: Tensor, x_hat: Tensor, codes: Tensor) -> None:
        recon.add(x, x_hat)
        latents.add(codes)

    starts = range(0, n_rows, batch_size)
    for start in progress_bar(starts, desc="splice eval", unit="batch", enabled=progress):
        batch = tokens[start : min(start + batch_size, n_rows)].to(model.cfg.device)
        keep = ~special_token_mask(batch, excluded)
        clean_logits, clean_loss = model(batch, return_type="both", loss_per_token=True)
        sae_logits, sae_loss = model.run_with_hooks(
            batch,
            return_type="both",
            loss_per_token=True,
            fwd_hooks=[(hook_name, sae_replacement_hook(sae, keep, observe))],
        )
        zero_logits, zero_loss = model.run_with_hooks(
            batch, return_type="both", loss_per_token=True, fwd_hooks=[(hook_name, zero_ablation_hook)]
        )
        predicts = keep[:, :-1]  # the loss at position t predicts token t + 1 from token t
        ce_clean.add(clean_loss[predicts])
        ce_sae.add(sae_loss[predicts])
        ce_zero.add(zero_loss[predicts])
        kl_sae.add(_kl_per_token(clean_logits, sae_logits)[keep])
        kl_zero.add(_kl_per_token(clean_logits, zero_logits)[keep])

    if latents.n_tokens == 0:
        raise ValueError("every evaluated position holds an excluded token; nothing to measure")
    density = latents.density()
    explained_variance = recon.explained_variance()
    return SpliceEvalResult(
        hook_name=hook_name,
        n_sequences=n_rows,
        context_size=tokens.shape[1],
        n_tokens=latents.n_tokens,
        n_excluded_tokens=n_rows * tokens.shape[1] - latents.n_tokens,
        excluded_token_ids=excluded,
        ce_loss_clean=ce_clean.mean(),
        ce_loss_with_sae=ce_sae.mean(),
        ce_loss_zero_ablation=ce_zero.mean(),
        ce_loss_recovered=_ratio(ce_zero.mean() - ce_sae.mean(), ce_zero.mean() - ce_clean.mean()),
        kl_div_with_sae=kl_sae.mean(),
        kl_div_zero_ablation=kl_zero.mean(),
        mse=recon.mse(),
        normalized_mse=recon.normalized_mse(),
        fvu=1.0 - explained_variance,
        explained_variance=explained_variance,
        cosine_similarity=recon.cosine.mean(),
        l0_mean=latents.l0_mean(),
        l0_histogram=[int(c) for c in latents.l0_counts],
        d_sae=sae.cfg.d_sae,
        n_dead=int((latents.fire_counts == 0).sum()),
        n_dense=int((density > dense_threshold).sum()),
        dense_threshold=dense_threshold,
        density_histogram=latents.density_histogram(),
        feature_density=density.tolist(),
    )
