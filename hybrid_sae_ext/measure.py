"""Measuring runs: time with device sync, peak memory, device name and library versions.

Why: benchmarks and experiments report time and memory side by side with their peers; measuring
the same way everywhere keeps those ratios honest.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.metadata as md
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's RSS (``VmHWM``), or None where there is none."""
    with contextlib.suppress(OSError):
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    return None


def reset_peak_rss() -> bool:
    """Restart the kernel's RSS high-water mark at the current RSS (Linux >= 4.0); True if it did."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return peak_rss_bytes() is not None


def cpu_peak_method() -> str:
    """How ``peak_memory`` measures on CPU here (for reports)."""
    if peak_rss_bytes() is not None and os.access("/proc/self/clear_refs", os.W_OK):
        return "the kernel's RSS high-water mark (VmHWM), reset at entry"
    return "RSS sampled every 2 ms by a thread"


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[Callable[[], float]]:
    """Yield a getter of the peak memory (MiB) above the level at entry: the CUDA allocator's peak,
    or on CPU the process RSS peak (freed heap first returned to the OS, so memory of earlier SAEs
    does not hide this one's growth). After the block the getter keeps the peak as of its end: what
    runs later (an evaluation, say) is not counted.

    On CPU the kernel's high-water mark is used where it can be reset (Linux): exact, and free. Only
    elsewhere a thread samples the RSS every 2 ms, which misses short peaks and, on a 2-core machine,
    slowed the timed steps by 3-7% (it wakes while the compute threads run)."""
    gc.collect()
    stop = threading.Event()
    thread: threading.Thread | None = None
    current: Callable[[], float]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()

        def current() -> float:
            return (torch.cuda.max_memory_allocated() - cuda_base) / 2**20
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = peak = rss_bytes()
        if reset_peak_rss():

            def current() -> float:
                return ((peak_rss_bytes() or base) - base) / 2**20
        else:

            def sample() -> None:
                nonlocal peak
                while not stop.wait(0.002):
                    peak = max(peak, rss_bytes())

            def current() -> float:
                return (max(peak, rss_bytes()) - base) / 2**20

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
    at_end: float | None = None

    def peak_mib() -> float:
        return at_end if at_end is not None else current()

    try:
        yield peak_mib
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        at_end = current()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEEP = 2**30


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (no trimming, no mmap below 1 GiB); True if applied.

    Why: by default glibc hands large freed blocks back to the OS, so a step that allocates fresh
    ``batch x d_sae`` temporaries pays page faults each time, and how often depends on the allocation
    history of the whole process: the dense peers' steps turn slow and erratic (measured:
    docs/performance.md#measurements-behind-the-defaults). Benchmarks call this first, so every peer runs
    at its best, and so do the training commands.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP) and libc.mallopt(_M_MMAP_THRESHOLD, _KEEP))
    except (OSError, AttributeError):
        return False


def _load_average() -> str:
    path = Path("/proc/loadavg")
    return path.read_text().split()[0] if path.exists() else "?"


@contextlib.contextmanager
def load_watch() -> Iterator[Callable[[], str]]:
    """Yield a getter of the 1-minute load average at entry and now: other processes on the machine
    skew absolute times, so every benchmark says how busy the machine was."""
    start = _load_average()
    yield lambda: f"1-min load average {start} at start, {_load_average()} at end, on {torch.get_num_threads()} threads"


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds ``fn()`` takes, device work included."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def device_name(device: str) -> str:
    """GPU name, or ``cpu-<model>-<n>cores``, in filename characters."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
        models = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        name = f"cpu-{models[0] if models else platform.processor()}-{os.cpu_count()}cores"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def versions() -> dict[str, str]:
    found = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}
    return {p: found.get(p, "not installed") for p in ("torch", "triton", "sae-lens", "eai-sparsify")}
