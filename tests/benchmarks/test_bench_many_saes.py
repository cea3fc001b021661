"""The many-SAE benchmark trains the same SAEs both ways and counts the model forwards."""

from pathlib import Path

import pytest


def test_one_pass_runs_the_model_once_per_batch(tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("bench_many_saes")
    result = bench.main(["--n_saes", "3", "--d_sae", "128", "--k", "4", "--batch", "254", "--context_size", "128",
                         "--steps", "3", "--out", str(tmp_path)])
    assert result["one_pass"]["model_forwards"] == 3
    assert result["one_after_another"]["model_forwards"] == 9
    one_pass, sequential = result["one_pass"], result["one_after_another"]
    assert result["speedup"] == sequential["seconds"] / one_pass["seconds"]
    for run in (one_pass, sequential):
        assert run["sae_tokens_per_s"] * run["seconds"] == pytest.approx(3 * 3 * 254)
    assert list(tmp_path.glob("*-many-saes.md"))
