"""Encode/decode kernels for top-k SAEs: the sparse fast path and its dense twin, chosen here.

``get_kernels(backend)`` is the one dispatch point: ``"sparse"`` (default) keeps every tensor
after the top-k selection at ``batch x k``; ``"dense"`` is the autograd reference.
"""

from typing import Callable, Literal, NamedTuple

from hybrid_sae_ext.kernels.dense import (
    dense_decode,
    dense_decode_pair,
    dense_encode,
    dense_residual_row_dots,
    dense_row_dots,
)
from hybrid_sae_ext.kernels.sparse_ops import (
    sparse_decode,
    sparse_decode_pair,
    sparse_encode,
    sparse_residual_row_dots,
    sparse_row_dots,
)
from hybrid_sae_ext.kernels.types import TopKSelection

KernelBackend = Literal["sparse", "dense"]
KERNEL_BACKENDS: tuple[str, ...] = ("sparse", "dense")


class Kernels(NamedTuple):
    """The encode/decode functions of one backend (same signatures across backends)."""

    encode: Callable[..., tuple[TopKSelection, TopKSelection | None]]
    decode: Callable[..., "object"]
    decode_pair: Callable[..., tuple["object", "object"]]
    """Two decodes of one index set (``sparse_decode_pair``)."""
    row_dots: Callable[..., "object"]
    """The decode's transpose: each token row's dots with its picked decoder rows (``sparse_row_dots``)."""
    residual_row_dots: Callable[..., "object"]
    """``row_dots`` of each token's residual after its decode (``sparse_residual_row_dots``)."""


def get_kernels(backend: str) -> Kernels:
    """Return the encode/decode functions of ``backend`` (``"sparse"`` or ``"dense"``)."""
    if backend == "sparse":
        return Kernels(sparse_encode, sparse_decode, sparse_decode_pair, sparse_row_dots, sparse_residual_row_dots)
    if backend == "dense":
        return Kernels(dense_encode, dense_decode, dense_decode_pair, dense_row_dots, dense_residual_row_dots)
    raise ValueError(f"Unknown kernel backend {backend!r}; allowed: {', '.join(KERNEL_BACKENDS)}")


__all__ = [
    "KERNEL_BACKENDS",
    "KernelBackend",
    "Kernels",
    "TopKSelection",
    "dense_decode",
    "dense_decode_pair",
    "dense_encode",
    "dense_residual_row_dots",
    "dense_row_dots",
    "get_kernels",
    "sparse_decode",
    "sparse_decode_pair",
    "sparse_encode",
    "sparse_residual_row_dots",
    "sparse_row_dots",
]
