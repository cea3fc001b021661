"""The kernel-quality benchmark trains sparse, dense and bf16-selection twins on the same data and reports all."""

import json
from pathlib import Path


def test_sparse_and_dense_kernels_train_to_the_same_loss(tmp_path: Path, load_benchmark) -> None:
    bench = load_benchmark("bench_kernel_quality")
    result = bench.main(["--steps", "20", "--tokens", "16384", "--d_sae", "256", "--k", "8", "--batch", "256",
                         "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    runs = result["runs"]
    assert runs["sparse"]["normalized_mse"] < 0.8  # 0.69 measured; an untrained SAE is above 1
    assert abs(result["relative_difference"]) < 0.02
    assert set(runs) == {"sparse", "dense", "sparse-bf16-selection"}
    assert abs(result["bf16_selection_relative_difference"]) < 0.02
    assert 0 <= result["bf16_selection_pick_disagreement"] < 1e-3
    written = json.loads(next((tmp_path / "out").glob("*-kernel-quality.json")).read_text())
    assert written["runs"] == runs
