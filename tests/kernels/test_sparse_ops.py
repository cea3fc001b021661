"""The sparse kernels against independent references: numpy float64 top-k and dot products,
and the dense autograd twin for gradients."""

import numpy as np
import pytest
import torch

from hybrid_sae_ext.kernels import dense_encode, get_kernels, sparse_encode
from hybrid_sae_ext.kernels.primitives import gather_sum, gathered_dot, scatter_matmul
from hybrid_sae_ext.kernels.row_norms import NORM_FLOOR, inverse_row_norms

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _problem(device: str, n: int = 48, d_in: int = 12, d_sae: int = 96, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)  # noqa: E731
    x = make(n, d_in).requires_grad_()
    W_enc = make(d_in, d_sae).requires_grad_()
    W_dec = make(d_sae, d_in).requires_grad_()
    bias = make(d_sae) * 4  # large: recovering pre as (pre + bias) - bias would lose precision
    dead = (torch.rand(d_sae, generator=gen) < 0.4).to(device)
    return x, W_enc, W_dec, bias, dead


def _numpy_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference selection: sort each row in numpy (stable), keep the k largest, ids ascending."""
    return np.sort(np.argsort(-scores, axis=1, kind="stable")[:, :k], axis=1)


def _reference_pre(x: torch.Tensor, W_enc: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy() @ W_enc.detach().cpu().double().numpy()


def _loss_and_grads(backend: str, device: str, k: int, k_aux: int):
    x, W_enc, W_dec, bias, dead = _problem(device)
    kernels = get_kernels(backend)
    sel, aux = kernels.encode(x, W_enc, bias, k, dead, k_aux)
    recon = kernels.decode(torch.relu(sel.values) * 1.5, sel.indices, W_dec)
    loss = (recon - x.detach()).pow(2).sum()
    if aux is not None:
        loss = loss + kernels.decode(aux.values, aux.indices, W_dec).pow(2).sum()
    grads = torch.autograd.grad(loss, [x, W_enc, W_dec])
    return loss, grads, sel, aux


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k,k_aux", [(1, 0), (8, 0), (8, 5), (96, 3)])
def test_sparse_matches_dense_values_and_gradients(device: str, k: int, k_aux: int) -> None:
    loss_s, grads_s, sel_s, aux_s = _loss_and_grads("sparse", device, k, k_aux)
    loss_d, grads_d, _, _ = _loss_and_grads("dense", device, k, k_aux)
    x, W_enc, _, bias, dead = _problem(device)
    pre = _reference_pre(x, W_enc)
    expected = _numpy_topk(pre + bias.cpu().numpy(), k)
    np.testing.assert_array_equal(sel_s.indices.cpu().numpy(), expected)
    np.testing.assert_allclose(sel_s.values.detach().cpu().numpy(), np.take_along_axis(pre, expected, 1), rtol=1e-12)
    if k_aux:
        masked = np.where(dead.cpu().numpy(), pre, -np.inf)
        np.testing.assert_array_equal(aux_s.indices.cpu().numpy(), _numpy_topk(masked, k_aux))
    torch.testing.assert_close(loss_s, loss_d)
    for g_s, g_d in zip(grads_s, grads_d):
        torch.testing.assert_close(g_s, g_d)


def test_selection_in_row_blocks_with_halving_top_k_matches_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seven-row blocks (the last one short), rows wide enough for several halving levels in the main
    and the AuxK selection (exactly 256 dead latents): the same picks as numpy's full sort."""
    from hybrid_sae_ext.kernels import selection

    d_sae, k, k_aux = 512, 8, 5
    monkeypatch.setitem(selection.SELECTION_BLOCK_SCORES, "cpu", 7 * d_sae)
    x, W_enc, _, bias, _ = _problem("cpu", n=45, d_in=12, d_sae=d_sae)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=torch.Generator().manual_seed(5))[:256]] = True
    sel, aux = get_kernels("sparse").encode(x, W_enc, bias, k, dead, k_aux)
    pre = _reference_pre(x, W_enc)
    np.testing.assert_array_equal(sel.indices.numpy(), _numpy_topk(pre + bias.numpy(), k))
    np.testing.assert_array_equal(aux.indices.numpy(), _numpy_topk(np.where(dead.numpy(), pre, -np.inf), k_aux))
    np.testing.assert_allclose(aux.values.detach().numpy(), np.take_along_axis(pre, aux.indices.numpy(), 1))


@pytest.mark.parametrize("second_table", ["detached", "same", "other"])
@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_decode_pair_equals_two_decodes(backend: str, second_table: str) -> None:
    """Outputs and every gradient as two einsum decodes; a detached second table gets no gradient."""
    gen = torch.Generator().manual_seed(7)
    n, k, d_sae, d_in = 13, 4, 40, 6
    idx = torch.randint(0, d_sae, (n, k), generator=gen).sort(dim=-1).values
    a, b = (torch.randn(n, k, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    W = torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64).requires_grad_()
    W_other = {"detached": W.detach(), "same": W,
               "other": torch.randn(d_sae, d_in, generator=gen, dtype=torch.float64).requires_grad_()}[second_table]
    r1, r2 = torch.randn(n, d_in, generator=gen, dtype=torch.float64), torch.randn(n, d_in, generator=gen, dtype=torch.float64)

    def grads(first: torch.Tensor, second: torch.Tensor) -> list[torch.Tensor | None]:
        inputs = [a, b, W] + ([W_other] if second_table == "other" else [])
        return list(torch.autograd.grad((first * r1).sum() + (second * r2).sum(), inputs, allow_unused=True))

    first, second = get_kernels(backend).decode_pair(a, b, idx, W, W_other)
    expected = (torch.einsum("nk,nkd->nd", a, W[idx]), torch.einsum("nk,nkd->nd", b, W_other[idx]))
    torch.testing.assert_close(first, expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(second, expected[1], rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(first, second), grads(*expected)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("second_table", ["detached", "same"])
@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_unit_norm_decodes_match_einsum_through_normalised_rows(backend: str, second_table: str) -> None:
    """With ``inverse_norms`` the decodes use the rows ``W / ||W||`` and ``W``'s gradient runs through the
    normalisation. Reference: einsum over rows normalised by torch's own norm, differentiated by autograd.
    Rows 5 (zero) and 9 (norm below the floor, not zero) are clamped: no normalisation term in their gradient."""
    gen = torch.Generator().manual_seed(11)
    n, k, d_sae, d_in = 13, 4, 40, 6
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    priorities = torch.rand(n, d_sae, generator=gen)
    priorities[[0, 3], 5] = priorities[[1, 3], 9] = 2.0  # some rows pick the clamped rows
    idx = priorities.topk(k).indices.sort(dim=-1).values  # distinct per row, as a top-k's
    aux_idx = torch.rand(n, d_sae, generator=gen).topk(3).indices.sort(dim=-1).values
    a, b, c = (make(n, width).requires_grad_() for width in (k, k, 3))
    W = make(d_sae, d_in) * torch.linspace(0.2, 3.0, d_sae, dtype=torch.float64).unsqueeze(1)
    W[5] = 0.0
    W[9] *= 1e-11
    W.requires_grad_()
    W_other = W.detach() if second_table == "detached" else W
    r1, r2, r3 = make(n, d_in), make(n, d_in), make(n, d_in)

    def grads(first: torch.Tensor, second: torch.Tensor, third: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = (first * r1).sum() + (second * r2).sum() + (third * r3).sum()
        return torch.autograd.grad(loss, [a, b, c, W])

    kernels = get_kernels(backend)
    scales = inverse_row_norms(W.detach())
    first, second = kernels.decode_pair(a, b, idx, W, W_other, scales)
    third = kernels.decode(c, aux_idx, W, scales)
    unit = W / W.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
    unit_other = unit.detach() if second_table == "detached" else unit
    expected = (torch.einsum("nk,nkd->nd", a, unit[idx]), torch.einsum("nk,nkd->nd", b, unit_other[idx]),
                torch.einsum("nk,nkd->nd", c, unit[aux_idx]))
    for got, want in zip((first, second, third), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(first, second, third), grads(*expected)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["sparse", "dense"])
def test_unit_norm_pair_on_two_tables_is_refused(backend: str) -> None:
    W, W_other = torch.randn(8, 3), torch.randn(8, 3)
    values, idx = torch.randn(2, 2), torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="inverse_norms needs other_W_dec to be W_dec"):
        get_kernels(backend).decode_pair(values, values, idx, W, W_other, inverse_row_norms(W))


def test_more_auxk_picks_than_masked_latents_is_refused() -> None:
    x, W_enc, _, bias, _ = _problem("cpu")
    dead = torch.zeros(W_enc.shape[1], dtype=torch.bool)
    dead[:3] = True
    with pytest.raises(ValueError, match="k_aux=4 exceeds the 3 latents in aux_mask"):
        get_kernels("sparse").encode(x, W_enc, bias, 8, dead, 4)


@pytest.mark.parametrize("selection_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_selected_values_are_exact_dot_products(dtype: torch.dtype, selection_dtype: str) -> None:
    """Values are x . W_enc[:, i] accumulated in fp32 and rounded once to the storage dtype, not
    recovered from biased scores as (pre + bias) - bias (error ~ ulp(bias), large with this bias)."""
    d_in = 64
    x, W_enc, _, bias, _ = _problem("cpu", n=64, d_in=d_in, d_sae=128, dtype=dtype)
    bias = bias.float() * 1e6
    sel, _ = get_kernels("sparse").encode(x, W_enc, bias, 8, selection_dtype=selection_dtype)
    reference = np.take_along_axis(_reference_pre(x, W_enc), sel.indices.numpy(), 1)
    error = np.abs(sel.values.detach().double().numpy() - reference)
    abs_terms = np.abs(x.detach().double().numpy()) @ np.abs(W_enc.detach().double().numpy())
    fp32_sum_error = d_in * 2**-24 * np.take_along_axis(abs_terms, sel.indices.numpy(), 1)
    bound = np.abs(reference) * torch.finfo(dtype).eps / 2 + fp32_sum_error
    assert (error <= bound * 1.01).all(), error.max()


def test_bfloat16_selection_rescores_near_ties_exactly() -> None:
    """Six latents within 1e-3 of each other (bf16 cannot tell them apart): the exact rescoring
    of the top k + margin candidates must still pick the four largest, as fp32 does."""
    d_in, d_sae, k = 4, 64, 4
    x = torch.zeros(3, d_in)
    x[:, 0] = 1.0
    W_enc = torch.full((d_in, d_sae), -5.0)
    tied = torch.tensor([3, 17, 30, 41, 52, 60])
    W_enc[0, tied] = 1.0 + 1e-3 * torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    bias = torch.zeros(d_sae)
    for dtype in ("float32", "bfloat16"):
        sel, _ = get_kernels("sparse").encode(x, W_enc, bias, k, selection_dtype=dtype)
        assert sel.indices.tolist() == [[3, 17, 30, 41]] * 3, dtype
        torch.testing.assert_close(sel.values, W_enc[0, tied[:4]].expand(3, -1), rtol=0, atol=0)


def test_bfloat16_selection_agrees_with_exact_away_from_ties() -> None:
    x, W_enc, _, bias, dead = _problem("cpu", n=256, d_in=64, d_sae=512, dtype=torch.float32)
    sel, aux = get_kernels("sparse").encode(x, W_enc, bias, 16, dead, 8, selection_dtype="bfloat16")
    scores = _reference_pre(x, W_enc) + bias.numpy()
    expected = _numpy_topk(scores, 16)
    gap = -np.diff(np.sort(scores, axis=1)[:, ::-1][:, 15:17], axis=1)[:, 0]
    clear = gap > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(sel.indices.numpy()[clear], expected[clear])
    assert aux is not None and dead[aux.indices].all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_encode_decode_trains(dtype: torch.dtype) -> None:
    """bf16/fp16 storage runs forward and backward (sparse_sampled_addmm has no bf16 on CPU) and
    gives gradients close to the float64 ones of the same rounded inputs."""
    x, W_enc, W_dec, bias, dead = _problem("cpu", dtype=dtype)
    kernels = get_kernels("sparse")
    sel, aux = kernels.encode(x, W_enc, bias, 8, dead, 4)
    loss = kernels.decode(torch.relu(sel.values), sel.indices, W_dec).float().pow(2).sum()
    loss = loss + kernels.decode(aux.values, aux.indices, W_dec).float().pow(2).sum()
    grads = torch.autograd.grad(loss, [x, W_enc, W_dec])
    x64, W_enc64, W_dec64 = (t.detach().double().requires_grad_() for t in (x, W_enc, W_dec))
    ref_loss = (torch.relu(x64 @ W_enc64).gather(1, sel.indices) * 0).sum()  # keeps the graph connected
    codes = torch.zeros(x.shape[0], W_dec.shape[0], dtype=torch.float64)
    codes = codes.scatter(1, sel.indices, torch.relu((x64 @ W_enc64).gather(1, sel.indices)))
    aux_codes = torch.zeros_like(codes).scatter(1, aux.indices, (x64 @ W_enc64).gather(1, aux.indices))
    ref_loss = ref_loss + (codes @ W_dec64).pow(2).sum() + (aux_codes @ W_dec64).pow(2).sum()
    ref_grads = torch.autograd.grad(ref_loss, [x64, W_enc64, W_dec64])
    for name, g, ref in zip(("x", "W_enc", "W_dec"), grads, ref_grads):
        assert g.dtype == dtype, name
        assert (g.double() - ref).abs().max() <= 0.02 * ref.abs().max(), name


def test_primitives_against_einsum() -> None:
    gen = torch.Generator().manual_seed(1)
    rows, table = torch.randn(10, 7, generator=gen), torch.randn(30, 7, generator=gen)
    idx = torch.randint(0, 30, (10, 4), generator=gen).sort(dim=-1).values
    vals = torch.randn(10, 4, generator=gen)
    torch.testing.assert_close(gathered_dot(rows, table.t(), idx), torch.einsum("nd,nkd->nk", rows, table[idx]))
    expected = torch.zeros(30, 7).index_add_(0, idx.reshape(-1), (vals[..., None] * rows[:, None]).reshape(-1, 7))
    torch.testing.assert_close(scatter_matmul(vals, idx, rows, 30), expected)
    torch.testing.assert_close(gather_sum(vals, idx, table), torch.einsum("nk,nkd->nd", vals, table[idx]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scatter_matmul_adds_duplicates_and_zeroes_unused_latents(dtype: torch.dtype) -> None:
    """The output is written into uninitialised memory: rows of latents no token chose must be 0 even
    where that memory held NaN (freed just before, so the allocator hands it out again)."""
    gen = torch.Generator().manual_seed(3)
    n, k, n_out, d = 40, 5, 300, 16
    idx = torch.randint(0, n_out // 3, (n, k), generator=gen)  # two thirds of the latents unused
    idx[:, 1] = idx[:, 0]  # the same latent twice in every row: both entries count
    vals, rows = torch.randn(n, k, generator=gen, dtype=dtype), torch.randn(n, d, generator=gen, dtype=dtype)
    expected = torch.zeros(n_out, d, dtype=dtype).index_add_(0, idx.reshape(-1), (vals[..., None] * rows[:, None]).reshape(-1, d))
    for _ in range(3):
        poison = torch.full((n_out, d), float("nan"), dtype=dtype)
        del poison
        torch.testing.assert_close(scatter_matmul(vals, idx, rows, n_out), expected)
    assert scatter_matmul(vals[:, :0], idx[:, :0], rows, n_out).eq(0).all()


def test_primitives_accumulate_bfloat16_in_float32() -> None:
    """Long bf16 sums: fp32 accumulation is within one bf16 rounding of the float64 truth; bf16
    accumulation (each partial sum rounded) would be off by many units."""
    gen = torch.Generator().manual_seed(2)
    n, d, m = 512, 256, 4
    rows = torch.rand(n, d, generator=gen).bfloat16()
    table = torch.rand(m, d, generator=gen).bfloat16()
    idx = torch.randint(0, m, (n, 2), generator=gen).sort(dim=-1).values
    vals = torch.rand(n, 2, generator=gen).bfloat16()
    dot = gathered_dot(rows, table.t(), idx)
    assert dot.dtype == torch.float32
    ref_dot = torch.einsum("nd,nkd->nk", rows.double(), table.double()[idx])
    assert ((dot.double() - ref_dot).abs() <= 1e-5 * ref_dot.abs()).all()
    out = scatter_matmul(vals, idx, rows, m)
    ref = torch.zeros(m, d, dtype=torch.float64).index_add_(
        0, idx.reshape(-1), (vals.double()[..., None] * rows.double()[:, None]).reshape(-1, d)
    )
    assert out.dtype == torch.bfloat16
    assert ((out.double() - ref).abs() <= ref.abs() * 2**-8 * 1.01).all()
    decoded = gather_sum(vals, idx, table)
    ref_decoded = torch.einsum("nk,nkd->nd", vals.double(), table.double()[idx])
    assert ((decoded.double() - ref_decoded).abs() <= ref_decoded.abs() * 2**-8 * 1.01).all()


def test_bad_selection_dtype_is_named() -> None:
    x, W_enc, _, bias, _ = _problem("cpu")
    with pytest.raises(ValueError, match="'float8'.*auto"):
        get_kernels("sparse").encode(x, W_enc, bias, 4, selection_dtype="float8")


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="'triton'.*sparse, dense"):
        get_kernels("triton")


@pytest.mark.parametrize("encode", [sparse_encode, dense_encode])
def test_a_subtracted_bias_needs_a_detached_input(encode) -> None:
    """Else the input's own gradient would silently be dropped: both backends refuse, naming the fix."""
    x, W_enc, bias = torch.randn(4, 6, requires_grad=True), torch.randn(6, 10), torch.zeros(10)
    with pytest.raises(ValueError, match="pass x detached"):
        encode(x, W_enc, bias, 3, subtracted_bias=torch.zeros(6, requires_grad=True))
    selection, _ = encode(x.detach(), W_enc, bias, 3, subtracted_bias=torch.zeros(6, requires_grad=True))
    assert selection.values.shape == (4, 3)


@pytest.mark.parametrize("backend", ["sparse", "dense"])
@pytest.mark.parametrize("with_grad", [False, True])
def test_residual_row_dots_are_row_dots_of_the_residual(backend: str, with_grad: bool) -> None:
    """The fused no-gradient pass and the differentiable one both equal ``row_dots(centered - decode(values))``
    (unit-norm rows), and the differentiable one has its gradients."""
    kernels = get_kernels(backend)
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(64, 24, generator=gen, dtype=torch.float64).float()
    centered, values = torch.randn(10, 24, generator=gen), torch.rand(10, 6, generator=gen)
    indices = torch.stack([torch.randperm(64, generator=gen)[:6] for _ in range(10)])  # distinct, as top-k picks
    scales = inverse_row_norms(W)
    W64 = (W.double() * scales.double()[:, None])[indices]
    want = torch.einsum("nd,nkd->nk", centered.double() - torch.einsum("nk,nkd->nd", values.double(), W64), W64)
    W.requires_grad_(with_grad)
    got = kernels.residual_row_dots(centered, values, indices, W, scales)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert got.requires_grad == with_grad
    if with_grad:
        got.sum().backward()
        assert W.grad is not None and W.grad.abs().sum() > 0
