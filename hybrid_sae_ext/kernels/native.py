"""The CPU kernels in ``csrc/``, compiled on first use for the machine that runs them.

Why: on CPU the top-k selection was the largest single cost of a hybrid step (about 40% with the
selection GEMM) and no PyTorch op does it fast; a one-pass C++ kernel does. The gathered dot beside it
visits (token, latent) pairs by token block and latent, so each weight row is read once per block of
token rows held in L2 (see ``csrc/cpu_kernels.cpp``).
It is built with ``torch.utils.cpp_extension.load`` (the system C++ compiler, OpenMP, ``-march=native``)
into PyTorch's extension cache, under a name that carries a digest of the source, the torch version
and the CPU's instruction sets, so a cache shared between different machines never loads a binary
built for another CPU. Where the build fails (no compiler, say) everything falls back to the PyTorch
path with one warning; ``HYBRID_SAE_NATIVE=0`` turns the kernels off. The first build on a machine takes
~40 s, so it says so on stderr first; the trainer builds before its clock starts (no build in tokens/s).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE_DIR = Path(__file__).parent / "csrc"
SOURCES = (SOURCE_DIR / "cpu_kernels.cpp",)
DISABLE_ENV = "HYBRID_SAE_NATIVE"


def _cpu_signature() -> str:
    """The CPU's model and instruction-set flags (what ``-march=native`` compiles for)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(wanted))
    return platform.processor() + platform.machine()


def build_name() -> str:
    """The extension's name in the cache: source, torch version and CPU all change it."""
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(_cpu_signature().encode())
    return f"hybrid_sae_native_{digest.hexdigest()[:16]}"


def disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off")


def is_built(name: str) -> bool:
    """Whether PyTorch's extension cache already holds this build (loading it then takes well under a second)."""
    from torch.utils import cpp_extension

    build_directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    return any(build_directory.glob(f"{name}.*so")) or any(build_directory.glob(f"{name}.pyd"))


@functools.cache
def _build() -> ModuleType | None:
    from torch.utils import cpp_extension

    try:
        if not is_built(build_name()):
            print("hybrid_sae_ext: building the C++ kernels (once per machine, ~40 s)", file=sys.stderr, flush=True)
        return cpp_extension.load(
            name=build_name(),
            sources=[str(source) for source in SOURCES],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # noqa: BLE001 - any build failure means: use the PyTorch path
        warnings.warn(
            f"hybrid_sae_ext's CPU kernels could not be built ({type(error).__name__}: {error}); "
            f"using the slower PyTorch path. Set {DISABLE_ENV}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def native_kernels() -> ModuleType | None:
    """The compiled kernels, or None where they are disabled or could not be built (built once per process)."""
    if disabled():
        return None
    return _build()
