"""``hybrid-sae serve``: the live demo's entry point, and a way to run it as a separate process.

Examples::

    hybrid-sae serve      # the shipped pretrained SAE, live page only, http://127.0.0.1:8000/
    hybrid-sae serve --sae_path results/hybrid-tiny-lm --dashboards results/dashboards --port 8000

Binds to 127.0.0.1 unless --host says otherwise. Endpoints: GET /health, POST /api/activations,
POST /api/search, POST /api/steer, the page at /, the dashboards at /dashboards/. It prints its URL once it
accepts connections.

Why a process: tests, the benchmark and the screenshots must talk to the demo exactly as a user's browser
does, over HTTP to the real server, not to an app object inside the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.dashboards.live import LiveModel
from hybrid_sae_ext.dashboards.server import LOOPBACK_NAMES, create_app
from hybrid_sae_ext.dashboards.source import load_source
from hybrid_sae_ext.pretrained import DEFAULT_SAE_PATH


@dataclass
class ServeConfig:
    """Where the SAE and its dashboards are, and where to listen."""

    sae_path: str = str(DEFAULT_SAE_PATH)
    """Folder of the saved SAE (cfg.json + sae_weights.safetensors); default: the shipped pretrained hybrid SAE."""
    dashboards: str | None = None
    """Folder written by ``hybrid-sae dashboards`` (its site/ is served at /dashboards/); none: the live page only."""
    host: str = "127.0.0.1"
    """Interface to bind; the default keeps the demo on this machine."""
    port: int = 8000
    """TCP port to listen on (0: any free port)."""
    device: str = "cpu"
    """Device for the model and the SAE."""
    threads: int = 1
    """torch intra-op threads (0: torch's default). One request's tensors are small; with 1 thread a busy CPU
    cannot stall it on thread synchronisation (measured: docs/performance.md#measurements-behind-the-defaults)."""
    trusted_hosts: list[str] = field(default_factory=list)
    """Host names (besides --host, and the loopback names when --host is loopback or a wildcard) that clients
    may put in the Host header; any other name is refused (DNS rebinding)."""
    request_timeout_s: float = 10.0
    """A request's headers and body must arrive within this many seconds of the connection (or of the
    previous response), else the connection is closed."""
    max_connections: int = 32
    """Open connections and requests in flight at most; uvicorn answers more with 503."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got port={self.port}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got threads={self.threads}")
        if not 0 < self.request_timeout_s <= 3600:
            raise ValueError(f"--request_timeout_s={self.request_timeout_s}: must be in (0, 3600] seconds")
        if self.max_connections < 1:
            raise ValueError(f"--max_connections={self.max_connections}: must be an integer >= 1")

    @property
    def allowed_hosts(self) -> list[str]:
        """The names the demo answers to: --host, --trusted_hosts, and loopback names for a local bind."""
        local = self.host in LOOPBACK_NAMES or self.host in ("0.0.0.0", "::", "")
        return sorted({self.host, *self.trusted_hosts, *(LOOPBACK_NAMES if local else ())} - {"", "0.0.0.0", "::"})


def timed_protocol(timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline for each request to arrive whole (headers and body).

    Why: uvicorn never times out a client that sends half its headers or holds a body open, so a few such
    connections can hold the demo. The deadline starts when the connection opens or a response ends; a
    request still incomplete then has its connection closed (an app awaiting its body sees a disconnect).
    """

    class TimedH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _waiting_for_request(self) -> bool:
            return self.cycle is None or self.cycle.response_complete or self.cycle.more_body

        def _expire(self) -> None:
            if self._waiting_for_request() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # noqa: D102
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:  # noqa: D102
            super().handle_events()
            if not self._waiting_for_request():
                self._disarm()

        def on_response_complete(self) -> None:  # noqa: D102
            super().on_response_complete()
            if self._waiting_for_request():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
            self._disarm()
            super().connection_lost(exc)

    return TimedH11Protocol


@cli_main
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(ServeConfig, argv, description=__doc__)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    app = create_app(LiveModel(load_source(cfg.sae_path, cfg.device)), cfg.dashboards, cfg.allowed_hosts)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                            http=timed_protocol(cfg.request_timeout_s), limit_concurrency=cfg.max_connections)
    AnnouncingServer(config).run()


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, which at log level ``warning`` says nothing: this one prints where to point the browser
    once its socket accepts connections (the bound port, so ``--port 0`` prints the one it got)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not self.servers:  # the bind failed; uvicorn has said why
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        print(f"live demo on http://{shown}:{port}/ (press Ctrl+C to stop)", flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def demo_process(sae_path: Path | str, dashboards: Path | str | None, timeout_s: float = 120.0,
                 extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Run the demo in its own process on a free 127.0.0.1 port; yield its URL once ``/health`` answers."""
    port = free_port()
    dashboard_args = ["--dashboards", str(dashboards)] if dashboards is not None else []
    process = subprocess.Popen(
        [sys.executable, "-m", "hybrid_sae_ext.dashboards.serve", "--sae_path", str(sae_path), *dashboard_args,
         "--port", str(port), *extra_args],
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
