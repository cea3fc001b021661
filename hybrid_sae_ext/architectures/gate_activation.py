"""The hybrid's activation function as SAELens' ``TopK`` type: the shared pre-activation in, gated codes out.

Why a ``TopK`` subclass: SAELens-ecosystem tools dispatch on ``isinstance(sae.activation_fn, TopK)`` to
know that a latent's code depends on all the others (SAEDashboard then encodes every latent and slices,
instead of masking encoder columns, which it refuses for unknown architectures). The hybrid is such a
top-k SAE; its activation must still apply the gate, so ``forward`` is the SAE's own gated top-k.
"""

from __future__ import annotations

from typing import Protocol

from sae_lens.saes.topk_sae import TopK
from torch import Tensor


class _GatedSAE(Protocol):
    def gated_codes(self, pre: Tensor) -> Tensor: ...


class GatedTopK(TopK):
    """``pre = sae_in @ W_enc`` -> dense codes ``[..., d_sae]``: top-k of ``pre + b_gate``, gated magnitudes.

    Reads the SAE's parameters at call time (not copies), so dtype moves, ``load_state_dict(assign=True)``
    and tools that swap parameters (SAEDashboard's masking) all see the current ones.
    """

    def __init__(self, sae: _GatedSAE, k: int):
        super().__init__(k, use_sparse_activations=False)
        # A plain attribute, not a submodule: the SAE owns this module, so registering it back would
        # make modules() and state_dict() recurse. deepcopy maps it to the copied SAE through its memo.
        object.__setattr__(self, "_sae", sae)

    def forward(self, x: Tensor) -> Tensor:
        return self._sae.gated_codes(x)

    def extra_repr(self) -> str:
        return f"k={self.k}, gated=True"
