"""``hybrid-sae serve``: the live demo's entry point, and a way to run it as a separate process.

Example::

    hybrid-sae serve --sae_path results/hybrid-tiny-lm --dashboards results/dashboards --port 8000

Binds to 127.0.0.1 unless --host says otherwise. Endpoints: GET /health, POST /api/activations,
POST /api/search, POST /api/steer, the page at /, the dashboards at /dashboards/.

Why a process: tests, the benchmark and the screenshots must talk to the demo exactly as a user's browser
does, over HTTP to the real server, not to an app object inside the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
import uvicorn

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.dashboards.live import LiveModel
from hybrid_sae_ext.dashboards.server import create_app
from hybrid_sae_ext.dashboards.source import load_source


@dataclass
class ServeConfig:
    """Where the SAE and its dashboards are, and where to listen."""

    sae_path: str
    """Folder of the saved SAE (cfg.json + sae_weights.safetensors)."""
    dashboards: str
    """Folder written by ``hybrid-sae dashboards`` (its site/ is served at /dashboards/)."""
    host: str = "127.0.0.1"
    """Interface to bind; the default keeps the demo on this machine."""
    port: int = 8000
    """TCP port to listen on (0: any free port)."""
    device: str = "cpu"
    """Device for the model and the SAE."""
    threads: int = 1
    """torch intra-op threads (0: torch's default). One request's tensors are small; with 1 thread a busy CPU
    cannot stall it on thread synchronisation (measured: docs/performance.md#measurements-behind-the-defaults)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got port={self.port}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got threads={self.threads}")


@cli_main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ServeConfig, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    app = create_app(LiveModel(load_source(cfg.sae_path, cfg.device)), cfg.dashboards)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def demo_process(sae_path: Path | str, dashboards: Path | str, timeout_s: float = 120.0) -> Iterator[str]:
    """Run the demo in its own process on a free 127.0.0.1 port; yield its URL once ``/health`` answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hybrid_sae_ext.dashboards.serve", "--sae_path", str(sae_path),
         "--dashboards", str(dashboards), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode() if process.poll() is not None and process.stderr else ""
                raise RuntimeError(f"demo server did not start within {timeout_s:.0f} s: {stderr}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
