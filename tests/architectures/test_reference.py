"""Both kernel backends of ``hybrid_forward``, and the inference ``HybridSAE``, against the independent
float64 reference in ``hybrid_reference.py``: every loss term, the reconstruction, the codes and every
parameter's gradient of every term. ``tests/mutation`` checks that small wrong changes fail here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hybrid_reference import (  # noqa: E402
    PARAM_NAMES,
    leaf_params,
    reference_forward,
    reference_inference,
)

from hybrid_sae_ext import HybridSAE, HybridSAEConfig, HybridTrainingSAE, HybridTrainingSAEConfig  # noqa: E402

BACKENDS = ("sparse", "dense")
F64 = dict(rtol=1e-9, atol=1e-10)
# fp32 rounding (including the selected pre-activations recovered as (pre + b_gate) - b_gate) stays
# far below this; every wrong formula in tests/mutation moves some value or gradient by > 1e-2.
F32 = dict(rtol=2e-4, atol=2e-4)


def _randomize(sae: torch.nn.Module, seed: int, duplicate_pairs: int = 0) -> None:
    """Parameters far from their zero init (so ``exp(r_mag)``, ``b_mag``... all matter), decoder rows
    of non-unit norm, and gates biased closed so that some candidates stay shut."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in PARAM_NAMES:
            param = getattr(sae, name)
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64))
        sae.W_dec.mul_(torch.rand(sae.W_dec.shape[0], 1, generator=gen, dtype=torch.float64) + 0.5)
        sae.W_enc.mul_(0.25)
        sae.b_dec.mul_(0.2)
        sae.b_gate.mul_(0.5).sub_(0.8)
        sae.r_mag.mul_(0.4)
        sae.b_mag.mul_(0.3)
        if sae.cfg.refine_steps:  # distinct steps, so a step applied twice or out of order shows
            sae.refine_rate.copy_(0.2 + 0.3 * torch.rand(sae.cfg.refine_steps, generator=gen, dtype=torch.float64))
        for pair in range(duplicate_pairs):  # latent 2j+1 is an exact copy of latent 2j
            for name in ("b_gate", "r_mag", "b_mag"):
                getattr(sae, name)[2 * pair + 1] = getattr(sae, name)[2 * pair]
            sae.W_enc[:, 2 * pair + 1] = sae.W_enc[:, 2 * pair]
            sae.W_dec[2 * pair + 1] = sae.W_dec[2 * pair]


CASES: dict[str, dict[str, Any]] = {
    # n_dead=5 < k_aux=8: the AuxK scale 5/8 matters, every dead latent is chosen
    "few_dead": dict(shape=(40, 8), d_sae=48, k=6, k_aux=8, n_dead=5),
    # n_dead=20 > k_aux=4: AuxK chooses among the dead latents, scale 1
    "many_dead": dict(shape=(40, 8), d_sae=48, k=6, k_aux=None, n_dead=20),
    "no_dead": dict(shape=(40, 8), d_sae=48, k=6, k_aux=None, n_dead=0),
    "k_equals_d_sae": dict(shape=(24, 8), d_sae=12, k=12, k_aux=3, n_dead=6),
    "three_d_input": dict(shape=(3, 7, 8), d_sae=32, k=4, k_aux=None, n_dead=9),
    "batch_of_one": dict(shape=(1, 8), d_sae=32, k=5, k_aux=None, n_dead=9, x_seed=102),  # 3 open, 2 shut
}


def _case(name: str, backend: str, dtype: str = "float64", **gate: Any) -> tuple[HybridTrainingSAE, torch.Tensor, torch.Tensor | None]:
    case = CASES[name]
    cfg = HybridTrainingSAEConfig(
        d_in=case["shape"][-1], d_sae=case["d_sae"], k=case["k"], k_aux=case["k_aux"], l1_coefficient=0.3,
        gate_aux_coefficient=0.7, aux_k_coefficient=0.5, kernel_backend=backend, dtype=dtype,
        # each term alone (test_refinement_matches_reference adds the steps), on the token gate unless a case says
        **{"refine_steps": 0, "gate_rule": "token", **gate},
    )
    sae = HybridTrainingSAE(cfg)
    _randomize(sae, seed=len(name))
    gen = torch.Generator().manual_seed(case.get("x_seed", 100 + len(name)))
    x = torch.randn(case["shape"], generator=gen, dtype=torch.float64).to(sae.dtype)
    dead = None
    if case["n_dead"]:
        dead = torch.zeros(case["d_sae"], dtype=torch.bool)
        dead[torch.randperm(case["d_sae"], generator=gen)[: case["n_dead"]]] = True
    return sae, x, dead


def _reference(sae: HybridTrainingSAE, x: torch.Tensor, dead: torch.Tensor | None):
    params = leaf_params(sae)
    cfg = sae.cfg
    ref = reference_forward(
        params, x, k=cfg.k, l1_coefficient=cfg.l1_coefficient, gate_aux_coefficient=cfg.gate_aux_coefficient,
        aux_k_coefficient=cfg.aux_k_coefficient, k_aux=cfg.effective_k_aux, dead_mask=dead,
        gate_rule=cfg.gate_rule, target_l0=cfg.target_l0, l0_coefficient=cfg.l0_coefficient,
        bandwidth=cfg.gate_bandwidth,
    )
    return ref, params


def _term_grads(terms, params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Gradient of each loss term w.r.t. each parameter (zeros where a term does not reach one)."""
    grads = []
    for term in terms:
        if not term.requires_grad:  # a constant zero (AuxK without dead latents)
            grads.append([torch.zeros_like(p) for p in params])
            continue
        got = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads.append([torch.zeros_like(p) if g is None else g for g, p in zip(got, params)])
    return grads


def _compare_to_reference(sae, x, dead, tol, grad_groups=None) -> Any:
    out = sae.hybrid_forward(x, dead_mask=dead)
    ref, params = _reference(sae, x, dead)
    terms = ("mse", "gate_aux", "l1", "aux_k", "l0")
    for term in terms:
        torch.testing.assert_close(getattr(out.losses, term).double(), getattr(ref, term), **tol, msg=term)
    torch.testing.assert_close(out.losses.total().double(), ref.total(), **tol, msg="total")
    torch.testing.assert_close(out.sae_out.double(), ref.sae_out, **tol)
    n = ref.codes.shape[0]
    dense = torch.zeros(n, sae.cfg.d_sae, dtype=torch.float64).scatter(1, out.codes.indices, out.codes.values.double())
    torch.testing.assert_close(dense, ref.codes, **tol)

    names = list(params)
    mine = _term_grads([getattr(out.losses, t) for t in terms], [getattr(sae, p) for p in names])
    theirs = _term_grads([getattr(ref, t) for t in terms], [params[p] for p in names])
    for term, got_row, want_row in zip(terms, mine, theirs):
        for name, got, want in zip(names, got_row, want_row):
            got = got.double()
            if grad_groups is not None and name not in ("b_dec", "refine_rate"):  # only sums over identical latents are defined
                latent_dim = 1 if name == "W_enc" else 0
                got, want = grad_groups(got, latent_dim), grad_groups(want, latent_dim)
            torch.testing.assert_close(got, want, **tol, msg=f"d {term} / d {name}")
    return ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_training_forward_matches_reference(backend: str, case: str) -> None:
    sae, x, dead = _case(case, backend)
    ref = _compare_to_reference(sae, x, dead, F64)
    assert ref.mse > 0 and ref.gate_aux > 0 and ref.l1 > 0
    assert (ref.aux_k > 0) == (dead is not None)
    assert (ref.codes > 0).any() and (ref.candidates & (ref.pi_gate <= 0)).any(), "the case must open and shut gates"


GATE_RULE_CASES = {
    # target 2 of k 6 candidates: the batch threshold shuts open gates and opens shut ones
    "batch": dict(gate_rule="batch", target_l0=2.0),
    # bandwidth 0.6: some candidates sit inside the estimator's window; L0 penalty weight 0.4
    "jump": dict(gate_rule="jump", target_l0=2.0, l0_coefficient=0.4, gate_bandwidth=0.6),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["many_dead", "no_dead", "three_d_input"])
@pytest.mark.parametrize("rule", list(GATE_RULE_CASES))
def test_gate_rules_match_reference(backend: str, case: str, rule: str) -> None:
    """The batch gate and the learned-threshold gate: codes, every loss term (the L0 penalty included)
    and every gradient, against the reference's own formulation of each rule."""
    sae, x, dead = _case(case, backend, **GATE_RULE_CASES[rule])
    ref = _compare_to_reference(sae, x, dead, F64)
    opened = (ref.codes > 0).sum(-1).double()
    if rule == "batch":
        assert opened.mean() == pytest.approx(2.0, abs=1e-9) and opened.std() > 0, "the batch allocates unevenly"
        assert ((ref.codes == 0) & ref.candidates & (ref.pi_gate > 0)).any(), "the threshold shuts open gates"
    else:
        pi = ref.pi_gate.detach()
        assert (ref.candidates & (pi.abs() < 0.3)).any(), "some candidate inside the estimator's window"
        assert ref.l0 > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["many_dead", "three_d_input", "batch_of_one"])
@pytest.mark.parametrize("rule", ["token", "batch", "jump"])
def test_refinement_matches_reference(backend: str, case: str, rule: str) -> None:
    """Two refinement steps on every gate rule: codes, every loss term and every gradient (the steps'
    rates included) against the reference's dense formulation of the steps."""
    gate = GATE_RULE_CASES.get(rule, {})
    sae, x, dead = _case(case, backend, refine_steps=2, **gate)
    ref = _compare_to_reference(sae, x, dead, F64)
    unrefined = reference_forward(
        {name: value for name, value in leaf_params(sae).items() if name != "refine_rate"}, x,
        k=sae.cfg.k, l1_coefficient=0.0, gate_aux_coefficient=0.0, aux_k_coefficient=0.0, k_aux=1,
        gate_rule=rule, target_l0=sae.cfg.target_l0, l0_coefficient=sae.cfg.l0_coefficient,
        bandwidth=sae.cfg.gate_bandwidth,
    )
    assert ref.mse < unrefined.mse, "the steps must lower the reconstruction error on this case"
    assert ((ref.codes != unrefined.codes) & (ref.codes > 0)).any(), "the steps must move open values"
    assert not ((ref.codes > 0) & (unrefined.codes == 0) & ~ref.candidates).any(), "no latent outside the picks"


def test_batch_gate_moves_its_inference_threshold_and_saves_it_into_b_gate(tmp_path) -> None:
    """Training forwards move the EMA toward each batch's threshold; eval forwards and the saved inference
    SAE (threshold folded into b_gate) gate each token alone, the same way."""
    sae, x, dead = _case("many_dead", "sparse", **GATE_RULE_CASES["batch"])
    ref, _ = _reference(sae, x, dead)
    ranked = ref.pi_gate.detach()[ref.candidates].sort(descending=True).values
    tau = float(ranked[round(x.shape[0] * 2.0)])
    sae.hybrid_forward(x, dead_mask=dead)
    assert float(sae.gate_threshold) == pytest.approx(0.05 * tau, rel=1e-9)
    sae.eval()
    one_token = sae.hybrid_forward(x[:1]).codes
    alone = torch.zeros(1, 48, dtype=torch.float64).scatter(1, one_token.indices, one_token.values)
    batch = sae.hybrid_forward(x).codes
    together = torch.zeros(x.shape[0], 48, dtype=torch.float64).scatter(1, batch.indices, batch.values)
    torch.testing.assert_close(alone, together[:1], **F64)
    sae.save_inference_model(str(tmp_path))
    loaded = HybridSAE.load_from_disk(str(tmp_path))
    torch.testing.assert_close(loaded.encode(x), together, **F64)


def test_cases_exercise_what_the_formulas_distinguish() -> None:
    """The fixtures are not degenerate: a gate threshold moved to -0.05 would open some candidate;
    dead latents are also top-k candidates (AuxK and the gate path overlap); rows are not unit."""
    sae, x, dead = _case("many_dead", "dense")
    ref, _ = _reference(sae, x, dead)
    assert (ref.candidates & (ref.pi_gate > -0.05) & (ref.pi_gate <= 0)).any()
    assert (ref.candidates & dead).any()
    assert (sae.W_dec.norm(dim=-1) - 1).abs().min() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_forward_matches_reference_within_rounding(backend: str) -> None:
    sae, x, dead = _case("many_dead", backend, dtype="float32")
    ref, _ = _reference(sae, x, dead)
    margin = ref.pi_gate.detach().sort(dim=-1, descending=True).values
    k = sae.cfg.k
    assert (margin[:, k - 1] - margin[:, k]).min() > 1e-3, "fixture must have no near-ties at the k-th latent"
    _compare_to_reference(sae, x, dead, F32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_latents_tie_and_match_reference_up_to_which_copy_fires(backend: str) -> None:
    """Six pairs of identical latents: exact ties in both top-k selections. Which copy wins is
    arbitrary, so values must match and gradients must match summed over each pair."""
    cfg = HybridTrainingSAEConfig(
        d_in=6, d_sae=20, k=5, k_aux=4, l1_coefficient=0.3, kernel_backend=backend, dtype="float64", gate_rule="token"
    )
    sae = HybridTrainingSAE(cfg)
    _randomize(sae, seed=11, duplicate_pairs=6)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    dead = torch.zeros(20, dtype=torch.bool)
    dead[[0, 1, 2, 3, 12, 15, 18]] = True
    pair_of = torch.tensor([i // 2 if i < 12 else i - 6 for i in range(20)])

    def grad_groups(grad: torch.Tensor, latent_dim: int) -> torch.Tensor:
        shape = list(grad.shape)
        shape[latent_dim] = 14
        return torch.zeros(shape, dtype=grad.dtype).index_add(latent_dim, pair_of, grad)

    out = sae.hybrid_forward(x, dead_mask=dead)
    assert (out.codes.indices.sort(-1).values.diff(dim=-1) > 0).all(), "a latent is selected at most once"
    ref = _compare_to_reference(sae, x, dead, F64, grad_groups)
    tied = ref.candidates[:, 0:12:2] != ref.candidates[:, 1:12:2]
    assert tied.any(), "some pair must straddle the k-th place, so the tie decides"


def _inference_sae(dtype: str, refine_steps: int = 0) -> HybridSAE:
    sae = HybridSAE(HybridSAEConfig(d_in=8, d_sae=40, k=5, dtype=dtype, refine_steps=refine_steps))
    _randomize(sae, seed=3)
    return sae


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype, tol", [("float64", F64), ("float32", F32)])
@pytest.mark.parametrize("refine_steps", [0, 2])
def test_inference_encode_decode_match_reference(backend: str, dtype: str, tol: dict, refine_steps: int) -> None:
    sae = _inference_sae(dtype, refine_steps)
    sae.cfg.kernel_backend = backend  # the inference SAE reads the backend from its config when set
    x = torch.randn(4, 9, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(sae.dtype)
    codes_ref, recon_ref = reference_inference(leaf_params(sae), x.reshape(-1, 8), sae.cfg.k)

    codes = sae.encode(x)
    assert codes.shape == (4, 9, 40)
    torch.testing.assert_close(codes.reshape(-1, 40).double(), codes_ref, **tol)
    torch.testing.assert_close(sae.decode(codes).reshape(-1, 8).double(), recon_ref, **tol)
    torch.testing.assert_close(sae(x).reshape(-1, 8).double(), recon_ref, **tol)

    sparse = sae.encode_sparse(x)
    assert sparse.values.shape == sparse.indices.shape == (4, 9, 5)
    dense = torch.zeros(36, 40, dtype=torch.float64).scatter(1, sparse.indices.reshape(-1, 5), sparse.values.reshape(-1, 5).double())
    torch.testing.assert_close(dense, codes_ref, **tol)
    torch.testing.assert_close(sae.decode_sparse(sparse).reshape(-1, 8).double(), recon_ref, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_activations_that_need_a_gradient_get_the_reference_one(backend: str) -> None:
    """Attribution: with ``x.requires_grad`` the encoder computes the full input gradient (not only b_dec's)."""
    sae, x, dead = _case("many_dead", backend)
    x = x.clone().requires_grad_()
    out = sae.hybrid_forward(x, dead_mask=dead)
    ref_x = x.detach().clone().requires_grad_()
    ref, params = _reference(sae, ref_x, dead)
    got = torch.autograd.grad(out.losses.total(), (x, sae.b_dec))
    want = torch.autograd.grad(ref.mse + ref.gate_aux + ref.l1 + ref.aux_k, (ref_x, params["b_dec"]))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, **F64)


def test_a_hook_on_the_sae_input_keeps_its_gradient() -> None:
    """A hook that adds a learnable shift to the SAE input gets its gradient (the b_dec-only shortcut
    would drop it), the same from both backends, and b_dec's stays the reference one."""
    grads = {}
    for backend in BACKENDS:
        sae, x, dead = _case("many_dead", backend)
        shift = torch.zeros(x.shape[-1], dtype=x.dtype, requires_grad=True)
        sae.hook_sae_input.add_hook(lambda act, hook, shift=shift: act + shift)
        out = sae.hybrid_forward(x, dead_mask=dead)
        grads[backend] = torch.autograd.grad(out.losses.total(), (shift, sae.b_dec))
        ref, params = _reference(sae, x, dead)
        want = torch.autograd.grad(ref.mse + ref.gate_aux + ref.l1 + ref.aux_k, params["b_dec"])[0]
        torch.testing.assert_close(grads[backend][1].double(), want, **F64)
    assert grads["sparse"][0].abs().max() > 1e-3
    torch.testing.assert_close(grads["sparse"][0], grads["dense"][0], **F64)
