"""The sparse kernels give the same values and gradients as the dense autograd reference."""

import pytest
import torch

from hybrid_sae_ext.kernels import get_kernels
from hybrid_sae_ext.kernels.sparse_ops import gathered_dot, scatter_matmul

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _problem(device: str, n: int = 48, d_in: int = 12, d_sae: int = 96, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)  # noqa: E731
    x = make(n, d_in).requires_grad_()
    W_enc = make(d_in, d_sae).requires_grad_()
    W_dec = make(d_sae, d_in).requires_grad_()
    bias = make(d_sae)
    dead = (torch.rand(d_sae, generator=gen) < 0.4).to(device)
    return x, W_enc, W_dec, bias, dead


def _loss_and_grads(backend: str, device: str, k: int, k_aux: int):
    x, W_enc, W_dec, bias, dead = _problem(device)
    kernels = get_kernels(backend)
    sel, aux = kernels.encode(x, W_enc, bias, k, dead, k_aux)
    recon = kernels.decode(torch.relu(sel.values) * 1.5, sel.indices, W_dec)
    loss = (recon - x.detach()).pow(2).sum()
    if aux is not None:
        loss = loss + kernels.decode(aux.values, aux.indices, W_dec).pow(2).sum()
    grads = torch.autograd.grad(loss, [x, W_enc, W_dec])
    return loss, grads, sel.indices


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,k_aux", [(1, 0), (8, 0), (8, 5), (96, 3)])
def test_sparse_matches_dense_values_and_gradients(device: str, k: int, k_aux: int) -> None:
    loss_s, grads_s, idx_s = _loss_and_grads("sparse", device, k, k_aux)
    loss_d, grads_d, idx_d = _loss_and_grads("dense", device, k, k_aux)
    assert torch.equal(idx_s, idx_d)
    torch.testing.assert_close(loss_s, loss_d)
    for g_s, g_d in zip(grads_s, grads_d):
        torch.testing.assert_close(g_s, g_d)


def test_selection_is_topk_of_biased_scores_sorted_per_row() -> None:
    x, W_enc, _, bias, _ = _problem("cpu")
    sel, aux = get_kernels("sparse").encode(x, W_enc, bias, 5)
    assert aux is None
    scores = (x @ W_enc + bias).detach()
    expected = scores.topk(5, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(sel.indices, expected)
    torch.testing.assert_close(sel.values, (x @ W_enc).gather(1, sel.indices))


def test_aux_selection_only_picks_masked_latents() -> None:
    x, W_enc, _, bias, dead = _problem("cpu")
    _, aux = get_kernels("sparse").encode(x, W_enc, bias, 4, dead, 6)
    assert aux is not None and dead[aux.indices].all()


def test_primitives_against_einsum() -> None:
    gen = torch.Generator().manual_seed(1)
    rows, table = torch.randn(10, 7, generator=gen), torch.randn(30, 7, generator=gen)
    idx = torch.randint(0, 30, (10, 4), generator=gen).sort(dim=-1).values
    vals = torch.randn(10, 4, generator=gen)
    torch.testing.assert_close(gathered_dot(rows, table, idx), torch.einsum("nd,nkd->nk", rows, table[idx]))
    expected = torch.zeros(30, 7).index_add_(0, idx.reshape(-1), (vals[..., None] * rows[:, None]).reshape(-1, 7))
    torch.testing.assert_close(scatter_matmul(vals, idx, rows, 30), expected)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="'triton'.*sparse, dense"):
        get_kernels("triton")
