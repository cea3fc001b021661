"""Where a training step's latents live: the hook of the hybrid's one loss assembly (``hybrid_forward``).

Why: the latent-sharded step (``distributed.sharded``) used to copy the hybrid's loss, and the copy drifted (it
lost the adaptive gate threshold, the input check and the selection dtype). Now ``hybrid_forward`` is the only
copy and takes this hook. The base class holds every latent: the selection is the kernel's encode, every
selected entry is held here and every sum over latents is already complete (the identity). The sharded
subclass selects across ranks, masks the entries that other ranks hold and all-reduces the sums.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from hybrid_sae_ext.kernels import TopKSelection

Encode = Callable[..., tuple[TopKSelection, TopKSelection | None]]
"""A kernel backend's ``encode`` (``sparse_encode`` / ``dense_encode``)."""


class LatentReduction:
    """All latents on this module: nothing to select across, mask or sum (the unsharded step)."""

    def count(self, local: int) -> int:
        """A count over latents (e.g. the dead ones), from this module's share."""
        return local

    def encode(
        self,
        encode: Encode,
        x: Tensor,
        W_enc: Tensor,
        selection_bias: Tensor,
        k: int,
        dead_mask: Tensor | None,
        k_aux: int,
        selection_dtype: str,
        subtracted_bias: Tensor | None,
    ) -> tuple[Any, Any | None]:
        """The top-k selection and the AuxK one (``TopKSelection``-like: ``values``, ``indices`` into this
        module's latents); ``k`` and ``k_aux`` count over all latents."""
        return encode(x, W_enc, selection_bias, k, dead_mask, k_aux, selection_dtype, subtracted_bias)

    def held(self, selection: Any, partial: Tensor) -> Tensor:
        """``partial`` (one entry per selected latent) where this module holds the latent, 0 elsewhere."""
        return partial

    def sum(self, partial: Tensor) -> Tensor:
        """A sum over latents of which this module computed its share (e.g. a decode) made complete."""
        return partial

    def codes(self, selection: Any, values: Tensor) -> tuple[Tensor, Tensor]:
        """``(values, latent ids)`` of every selected latent, in ids of the whole SAE."""
        return values, selection.indices


ALL_LATENTS = LatentReduction()
