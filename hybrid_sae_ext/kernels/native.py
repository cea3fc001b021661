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

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import os
import platform
import sys
import warnings
from collections.abc import Iterator
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


def _build_directory(name: str) -> Path:
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(name, verbose=False))


def _built_library(name: str) -> Path | None:
    directory = _build_directory(name)
    libraries = [*directory.glob(f"{name}.*so"), *directory.glob(f"{name}.pyd")]
    return libraries[0] if libraries else None


def is_built(name: str) -> bool:
    """Whether PyTorch's extension cache already holds this build (loading it then takes well under a second)."""
    return _built_library(name) is not None


def _load_built(name: str) -> ModuleType | None:
    """The cached build imported directly, or None where there is none or it does not import (a build
    killed while linking). Not through ``cpp_extension.load``: that takes PyTorch's build lock and reruns
    ninja, which recompiles whenever the package sits at another path (a copy, a spawned worker's view)."""
    library = _built_library(name)
    if library is None:
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except ImportError:
        return None


@contextlib.contextmanager
def _exclusive_build(name: str) -> Iterator[None]:
    """One builder per machine, under a lock the kernel drops when its holder dies. PyTorch's own build
    lock is a file that a killed build leaves behind, after which every later ``load`` waits forever; a
    holder of this lock is the only builder, so such a file is stale and is removed."""
    directory = _build_directory(name)
    with open(directory / f"{name}.build-lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (directory / "lock").unlink(missing_ok=True)
        yield


@functools.cache
def _build() -> ModuleType | None:
    from torch.utils import cpp_extension

    name = build_name()
    try:
        built = _load_built(name)
        if built is not None:
            return built
        with _exclusive_build(name):
            built = _load_built(name)  # another process built it while this one waited
            if built is not None:
                return built
            print("hybrid_sae_ext: building the C++ kernels (once per machine, ~40 s)", file=sys.stderr, flush=True)
            return cpp_extension.load(
                name=name,
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
