"""The comparison runs end to end (all architectures, three seeds) and its table is computed from its runs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAEConfig

from hybrid_sae_ext.experiments.comparison import ComparisonConfig
from hybrid_sae_ext.experiments.variants import VARIANTS as COMPARISON_VARIANTS

T_975_DF2 = 4.302652729911275
"""Student-t 97.5% quantile with 2 degrees of freedom (tables), for three seeds."""
SHARED_SAE_FIELDS = [f.name for f in dataclasses.fields(TrainingSAEConfig) if f.name != "metadata"]


def _targets(results: dict[str, Any], arch: str) -> list[dict[str, Any]]:
    return sorted((r for r in results["runs"] if r["architecture"] == arch and r["role"] == "target"),
                  key=lambda r: r["seed"])


def test_comparison_end_to_end(tiny_comparison: tuple[Path, dict[str, Any]]) -> None:
    out, results = tiny_comparison
    rows = {row["architecture"]: row for row in results["table"]["rows"]}
    assert list(rows) == list(COMPARISON_VARIANTS)
    assert len(results["runs"]) == len(COMPARISON_VARIANTS) * (3 + 1 + 1)  # seed 0: target + 2 frontier points
    assert {row["architecture"]: row["seeds"] for row in rows.values()} == {key: [0, 1, 2] for key in COMPARISON_VARIANTS}

    assert _targets(results, "ksparse")[0]["k"] == 4 and _targets(results, "batchtopk")[0]["k"] == 4
    adaptive = _targets(results, "hybrid-adaptive")[0]
    assert (adaptive["k"], adaptive["target_l0"]) == (8, 4.0)
    for arch in ("vanilla", "gated"):
        assert _targets(results, arch)[0]["l1_coefficient"] == results["search"]["coefficients"][arch]
    jumprelu = _targets(results, "jumprelu")[0]
    assert jumprelu["target_l0"] == 4.0 and "k" not in jumprelu and "jumprelu" not in results["search"]["coefficients"]
    assert jumprelu["config"]["sae"]["jumprelu_sparsity_loss_mode"] == "quadratic"

    # A landed cell is the seeds' mean with a t interval, recomputed here from the runs.
    fvu = [r["fvu"] for r in _targets(results, "ksparse")]
    assert rows["ksparse"]["method"] == "exact"
    mean = sum(fvu) / 3
    half = T_975_DF2 * math.sqrt(sum((v - mean) ** 2 for v in fvu) / 2) / math.sqrt(3)
    assert rows["ksparse"]["fvu"]["mean"] == pytest.approx(mean) and rows["ksparse"]["fvu"]["ci95"] == pytest.approx(half)
    ratios = [h["train_seconds"] / k["train_seconds"]
              for h, k in zip(_targets(results, "hybrid"), _targets(results, "ksparse"))]
    assert rows["hybrid"]["time_vs_ksparse"]["mean"] == pytest.approx(sum(ratios) / 3)
    pairs = {(h["challenger"], h["opponent"], h["metric"]): h for h in results["table"]["head_to_head"]}
    diffs = [h["kl_div"] - b["kl_div"] for h, b in zip(_targets(results, "hybrid"), _targets(results, "ksparse-matched"))]
    assert pairs["hybrid", "ksparse-matched", "kl_div"]["diff"] == pytest.approx(sum(diffs) / 3)

    clean, zero = results["eval"]["ce_loss_clean"], results["eval"]["ce_loss_zero_ablation"]
    for row in results["runs"]:
        assert clean < row["ce_loss_with_sae"] < zero and sum(row["l0_histogram"]) > 0
        assert [p["tokens"] for p in row["heldout_curve"]] == [512, 1024]  # T/2 and T
        loaded = SAE.load_from_disk(str(out / "saes" / row["run"]))
        assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_pre"

    assert json.loads((out / "comparison.json").read_text())["table"]["rows"]
    markdown = (out / "comparison.md").read_text()
    assert "| hybrid (target_l0, k = 2 x target) | k=8, target_l0=4 |" in markdown and " ± " in markdown
    for figure in ("frontier_l0_fvu", "frontier_l0_kl", "frontier_l0_ce_recovered", "training_curves"):
        assert (out / f"{figure}.png").stat().st_size > 10_000 and (out / f"{figure}.svg").exists()


def test_runs_differ_only_in_architecture_knobs(tiny_comparison: tuple[Path, dict[str, Any]]) -> None:
    """Budget, schedule, lr, batch, dead-latent window, normalisation, dtype: equal for every run of a seed;
    init differs only where a variant declares it (its ``overrides``)."""
    _, results = tiny_comparison
    for seed in (0, 1, 2):
        runs = [r for r in results["runs"] if r["seed"] == seed]
        shared_train = {json.dumps({k: v for k, v in r["config"]["train"].items()
                                    if k not in ("architecture", "k", "l1_coefficient", "target_l0")}, sort_keys=True)
                        for r in runs}
        assert len(shared_train) == 1, shared_train
        assert json.loads(shared_train.pop())["seed"] == seed
        for field_name in SHARED_SAE_FIELDS:
            values = {json.dumps(r["config"]["sae"][field_name]) for r in runs
                      if field_name not in COMPARISON_VARIANTS[r["architecture"]].overrides}
            assert len(values) == 1, (field_name, values)
        init = {r["architecture"]: r["config"]["encoder_init_norm"] for r in runs}
        assert {a: n for a, n in init.items() if n is not None} == {"ksparse-matched": 0.1}
        matched = next(r for r in runs if r["architecture"] == "ksparse-matched")["config"]["sae"]
        assert matched["decoder_init_norm"] == 1.0 and matched["aux_loss_coefficient"] == pytest.approx(1 / 32)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architectures": ["hybird"]}, r"Unknown comparison architecture\(s\) \['hybird'\]; allowed: .*hybrid-adaptive"),
        ({"target_l0": 0}, r"target_l0 must satisfy 1 <= target_l0 <= n_features/2=2048 .* got 0"),
        ({"target_l0": 3000}, r"target_l0 must satisfy 1 <= target_l0 <= n_features/2=2048 .* got 3000"),
        ({"seeds": [0, 0]}, r"seeds must be distinct and non-empty, got \[0, 0\]"),
        ({"frontier_factors": [0.0]}, r"frontier_factors must be > 0 .* got \[0.0\]"),
        ({"n_features": 0}, "n_features must be >= 1, got 0"),
        ({"context_size": 1}, "context_size must be >= 2, got 1"),
    ],
)
def test_bad_comparison_config_is_rejected(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ComparisonConfig(**overrides)


def test_debug_preset_fills_only_the_sizes_left_unset() -> None:
    """``--debug --d_sae 4096`` trains 4,096 latents: the preset used to cap an explicit width at 1,024 silently."""
    debug = ComparisonConfig(debug=True)
    assert (debug.n_features, debug.tokens, debug.epochs, debug.eval_batches) == (1024, 524_288, 4, 8)
    full = ComparisonConfig()
    assert (full.n_features, full.tokens, full.epochs, full.eval_batches) == (4096, 1_000_000, 2, 16)
    explicit = ComparisonConfig(debug=True, n_features=4096, tokens=100_000, eval_batches=2)
    assert (explicit.n_features, explicit.tokens, explicit.epochs, explicit.eval_batches) == (4096, 100_000, 4, 2)
