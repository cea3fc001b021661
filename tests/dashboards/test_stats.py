"""The statistics pass against a dense reference computed with plain tensor math over the same tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hybrid_sae_ext.dashboards.build import build_dashboards
from hybrid_sae_ext.dashboards.records import DashboardData
from hybrid_sae_ext.dashboards.stats import STATE_FILE, STATS_FILE
from tests.dashboards.conftest import CONTEXT, Reference, dashboard_config


def _firing_values(ref: Reference) -> torch.Tensor:
    """``[tokens, d_sae]`` codes without the BOS column, as the dashboards count them."""
    return ref.codes[:, 1:].reshape(-1, ref.codes.shape[-1])


@pytest.mark.parametrize("kind", ["hybrid", "topk"])
def test_statistics_match_dense_reference(kind: str, request: pytest.FixtureRequest) -> None:
    out: Path = request.getfixturevalue(f"{kind}_dashboards")
    ref: Reference = request.getfixturevalue(f"{kind}_reference")
    data = DashboardData(out)
    s = data.stats
    codes = _firing_values(ref)
    fires = codes > 0
    assert int(data.meta["tokens"]) == codes.shape[0]
    assert torch.equal(s["count"], fires.sum(0))
    torch.testing.assert_close(s["max"], codes.max(0).values)
    mean = torch.where(fires.sum(0) > 0, codes.sum(0).double() / fires.sum(0).clamp_min(1), 0.0)
    torch.testing.assert_close(s["mean"], mean, rtol=1e-5, atol=1e-6)
    bins = s["hist"].shape[1]
    for latent in range(codes.shape[1]):
        values = codes[fires[:, latent], latent].numpy()
        if len(values):
            expected, _ = np.histogram(values, bins=bins, range=(0.0, float(values.max())))
            assert s["hist"][latent].tolist() == expected.tolist(), latent
            top = np.sort(values)[::-1][: s["top_value"].shape[1]]
            np.testing.assert_allclose(s["top_value"][latent, : len(top)].numpy(), top, rtol=1e-6)


@pytest.mark.parametrize("kind", ["hybrid", "topk"])
def test_examples_carry_their_true_quantile_tokens_and_values(kind: str, request: pytest.FixtureRequest) -> None:
    data = DashboardData(request.getfixturevalue(f"{kind}_dashboards"))
    ref: Reference = request.getfixturevalue(f"{kind}_reference")
    codes = _firing_values(ref)
    checked = 0
    for latent in range(data.d_sae):
        record = data.record(latent)
        values = codes[codes[:, latent] > 0, latent].numpy()
        chosen = data.stats["quantile_loc"][latent] >= 0
        for value, quantile in zip(data.stats["quantile_value"][latent][chosen], data.stats["quantile_true"][latent][chosen]):
            # the reference encodes densely, so its copy of the example itself may differ in the last bits
            low, high = (values < float(value) - 1e-5).mean(), (values < float(value) + 1e-5).mean()
            assert low - 1e-12 <= float(quantile) <= high - 1 / len(values) + 1e-12
            checked += 1
        for example in record["top_examples"] + record["quantile_examples"]:
            row, position = divmod(example["location"], CONTEXT)
            start = position - example["center"]
            ids = ref.tokens[row, start : start + len(example["tokens"])].tolist()
            assert example["tokens"] == [data.vocab[i] for i in ids]
            expected = ref.codes[row, start : start + len(ids), latent].clone()
            if start == 0:
                expected[0] = 0.0  # the BOS position is left out of the statistics
            np.testing.assert_allclose(example["values"], expected.numpy(), atol=1e-4)
            assert example["values"][example["center"]] == pytest.approx(example["activation"], abs=1e-4)
    assert checked > data.d_sae  # most latents have quantile examples


def test_hybrid_candidates_and_gate_match_reference(hybrid_dashboards: Path, hybrid_reference: Reference) -> None:
    sae = hybrid_reference.sae
    x = hybrid_reference.acts[:, 1:].reshape(-1, sae.cfg.d_in)
    with torch.no_grad():
        gate = (x - sae.b_dec) @ sae.W_enc + sae.b_gate
        candidates = torch.topk(gate, sae.cfg.k, dim=1)
    opened = candidates.values > 0
    s = DashboardData(hybrid_dashboards).stats
    assert torch.equal(s["candidate_count"], torch.bincount(candidates.indices.reshape(-1), minlength=sae.cfg.d_sae))
    assert torch.equal(s["gate_open_count"], torch.bincount(candidates.indices[opened], minlength=sae.cfg.d_sae))
    assert (s["gate_open_count"] < s["candidate_count"]).any()  # the fixture's gate biases close some
    assert torch.equal(s["gate_hist"].sum(1), s["candidate_count"])


def test_weight_statistics_match_reference(hybrid_dashboards: Path, hybrid_sae_path: Path) -> None:
    from hybrid_sae_ext.models import TINY_LM_NAME, load_model

    sae_weights = load_file(str(hybrid_sae_path / "sae_weights.safetensors"))
    W_dec = sae_weights["W_dec"]
    effects = W_dec @ load_model(TINY_LM_NAME).W_U.detach()
    s = DashboardData(hybrid_dashboards).stats
    n = s["logit_pos_ids"].shape[1]
    torch.testing.assert_close(s["logit_pos_values"], effects.sort(1, descending=True).values[:, :n])
    torch.testing.assert_close(s["logit_neg_values"], effects.sort(1).values[:, :n])
    assert torch.equal(s["logit_hist"].sum(1), torch.full((W_dec.shape[0],), effects.shape[1]))
    unit = W_dec / W_dec.norm(dim=1, keepdim=True)
    cosine = (unit @ unit.T).fill_diagonal_(-2)
    torch.testing.assert_close(s["decoder_neighbour_cosines"], cosine.sort(1, descending=True).values[:, :4])


def test_cofiring_is_the_jaccard_index(hybrid_dashboards: Path, hybrid_reference: Reference) -> None:
    fires = (_firing_values(hybrid_reference) > 0).double()
    both = fires.T @ fires
    union = fires.sum(0)[:, None] + fires.sum(0)[None, :] - both
    jaccard = torch.where(union > 0, both / union.clamp_min(1), 0.0).fill_diagonal_(-1)
    s = DashboardData(hybrid_dashboards).stats
    expected = jaccard.sort(1, descending=True).values[:, : s["cofiring_jaccard"].shape[1]]
    torch.testing.assert_close(s["cofiring_jaccard"].double(), expected, atol=1e-6, rtol=1e-6)
    rows = torch.arange(len(both))[:, None]
    assert torch.equal(s["cofiring_counts"], both[rows, s["cofiring_ids"]].long())


def test_interrupted_build_resumes_to_the_same_statistics(hybrid_sae_path: Path, hybrid_dashboards: Path,
                                                          tmp_path: Path) -> None:
    cfg = dashboard_config(hybrid_sae_path, tmp_path / "out")
    assert build_dashboards(cfg, stop_after_batches=3) is None  # inside pass 1 (6 batches per pass)
    assert (tmp_path / "out" / STATE_FILE).exists() and not (tmp_path / "out" / STATS_FILE).exists()
    assert build_dashboards(cfg, stop_after_batches=5) is None  # into pass 2
    assert build_dashboards(cfg) is not None
    assert not (tmp_path / "out" / STATE_FILE).exists()
    resumed, straight = load_file(str(tmp_path / "out" / STATS_FILE)), load_file(str(hybrid_dashboards / STATS_FILE))
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


def test_resuming_with_another_config_is_refused(hybrid_sae_path: Path, tmp_path: Path) -> None:
    build_dashboards(dashboard_config(hybrid_sae_path, tmp_path / "out"), stop_after_batches=1)
    with pytest.raises(ValueError, match=r"another config .*'seed': \(0, 5\)"):
        build_dashboards(dashboard_config(hybrid_sae_path, tmp_path / "out", seed=5))
