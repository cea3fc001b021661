"""The live demo's HTTP layer (FastAPI): health, activations, search, steering, and the pages.

Why so strict: a demo is reachable by anything on the machine, and by any web page it opens (DNS
rebinding), so only the host names it is bound to answer. Request bodies are capped while they are read
(declared or chunked), every field is typed strictly and bounded, and every answer that is not a success
is JSON ``{"error": "<field>: <what is wrong>"}`` (4xx for bad input, wrong paths and methods; 500 for a
bug, never a traceback); nothing a client sends can stop the server.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybrid_sae_ext.dashboards.live import MAX_ABS_STRENGTH, MAX_NEW_TOKENS, MAX_TEXT_CHARS, LiveModel
from hybrid_sae_ext.dashboards.render import ASSETS

MAX_BODY_BYTES = 64 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
"""Host names a demo bound to a loopback interface answers to."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ActivationsRequest(_Strict):
    text: str = Field(max_length=MAX_TEXT_CHARS)
    top_k: int = Field(5, ge=1, le=50)
    feature: int | None = Field(None, ge=0)


class SearchRequest(_Strict):
    text: str = Field(max_length=MAX_TEXT_CHARS)
    top: int = Field(10, ge=1, le=100)


class SteerRequest(_Strict):
    text: str = Field(max_length=MAX_TEXT_CHARS)
    feature: int = Field(ge=0)
    strength: float = Field(ge=-MAX_ABS_STRENGTH, le=MAX_ABS_STRENGTH, allow_inf_nan=False)
    mode: Literal["add", "clamp"] = "add"
    max_new_tokens: int = Field(20, ge=1, le=MAX_NEW_TOKENS)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    temperature: float = Field(1.0, ge=0, le=10, allow_inf_nan=False)


class BodyLimit:
    """ASGI middleware: answer 413 to a request body over ``limit`` bytes without reading the rest.

    A declared ``Content-Length`` is refused before reading; a chunked body is counted as it arrives and
    refused at the first chunk over the limit (the HTTPException passes through FastAPI's body parsing).
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _send_error(send, 413, self.message)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited, send)

    @property
    def message(self) -> str:
        return f"body: request body over {self.limit} bytes"


class HostCheck:
    """ASGI middleware: answer only requests whose ``Host`` header names one of ``allowed`` (port ignored).

    Why: a web page on another site can resolve its own name to 127.0.0.1 (DNS rebinding) and then drive
    the demo from the user's browser; such requests carry that site's name in ``Host``.
    """

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app, self.allowed = app, {name.lower() for name in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                await _send_error(send, 400, f"host: {host!r} is not a name this demo answers to; "
                                             f"allowed: {', '.join(sorted(self.allowed))} (serve_demo --trusted_hosts)")
                return
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value: ``[::1]:8000`` -> ``::1``, ``localhost:8000`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _send_error(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _http_error_message(request: Request, exc: HTTPException) -> str:
    """``<field>: <what is wrong>`` for the errors Starlette and FastAPI raise themselves."""
    if exc.status_code == 404:
        return f"path: {request.url.path} is not served here"
    if exc.status_code == 405:
        return f"method: {request.method} is not allowed on {request.url.path}; allowed: {(exc.headers or {}).get('Allow', '')}"
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:  # FastAPI could not parse the body as JSON
        reason = "nested too deeply" if isinstance(cause, RecursionError) else str(cause).split(";")[0]
        return f"body: not valid JSON ({type(cause).__name__}: {reason})"
    return str(exc.detail)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


NO_DASHBOARDS_PAGE = (
    "<!doctype html><meta charset=\"utf-8\"><title>No dashboards</title>"
    "<p>This demo was started without dashboards. Build them with <code>hybrid-sae dashboards "
    "--sae_path SAE --out results/dashboards</code> (no --sae_path: the shipped pretrained SAE) and start the demo "
    "with <code>--dashboards results/dashboards</code>.</p><p><a href=\"/\">back to the live page</a></p>"
)


def create_app(
    live: LiveModel, dashboards: Path | str | None, allowed_hosts: Collection[str] = LOOPBACK_NAMES
) -> FastAPI:
    """The demo app over a loaded model; ``dashboards`` is a folder written by ``build_dashboards`` (None: the
    live page only, and every dashboard link answers a page that says how to build them).

    Only requests whose ``Host`` names one of ``allowed_hosts`` are answered.
    """
    site = Path(dashboards) / "site" if dashboards is not None else None
    if site is not None and not (site / "index.html").is_file():
        raise ValueError(f"{site}: no dashboard site here; build it with hybrid-sae dashboards --out {dashboards}")
    app = FastAPI(title="hybrid-sae-ext live demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)
    app.add_middleware(HostCheck, allowed=allowed_hosts)  # added last: runs first

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "; ".join(_describe(e) for e in exc.errors())}, status_code=422)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": _http_error_message(request, exc)}, status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:  # logged by uvicorn; the client gets no traceback
        return JSONResponse({"error": f"server: internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/health")
    def health() -> dict[str, Any]:
        source = live.source
        return {"status": "ok", "model": source.model_name, "hook": source.hook_name, "d_sae": source.d_sae,
                "max_text_chars": MAX_TEXT_CHARS, "max_tokens": source.model.cfg.n_ctx}

    @app.post("/api/activations")
    def activations(request: ActivationsRequest) -> dict[str, Any]:
        return live.activations(request.text, request.top_k, request.feature)

    @app.post("/api/search")
    def search(request: SearchRequest) -> dict[str, Any]:
        return {"features": live.search(request.text, request.top)}

    @app.post("/api/steer")
    def steer(request: SteerRequest) -> dict[str, Any]:
        return live.steer(request.text, request.feature, request.strength, request.mode, request.max_new_tokens,
                          request.seed, request.temperature)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(ASSETS / "live.html")

    app.mount("/assets", StaticFiles(directory=ASSETS), name="assets")
    if site is None:
        @app.get("/dashboards/{path:path}")
        def no_dashboards(path: str) -> HTMLResponse:
            return HTMLResponse(NO_DASHBOARDS_PAGE, status_code=404)
    else:
        app.mount("/dashboards", StaticFiles(directory=site, html=True), name="dashboards")
    return app
