"""The Triton kernels pass their checks under Triton's CPU interpreter; they are used only on CUDA."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybrid_sae_ext.kernels import primitives

CHECKS = Path(__file__).with_name("triton_kernel_checks.py")
ROOT = Path(__file__).resolve().parents[2]


def test_triton_kernels_match_torch_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS), "-k", "not on_cuda"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]


def test_triton_path_only_on_cuda() -> None:
    assert not primitives.use_triton(torch.zeros(2))
    if torch.cuda.is_available() and primitives._HAS_TRITON:
        assert primitives.use_triton(torch.zeros(2, device="cuda"))
        assert not primitives.use_triton(torch.zeros(2, device="cuda", dtype=torch.float64))
