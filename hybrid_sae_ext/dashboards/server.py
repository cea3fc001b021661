"""The live demo's HTTP layer (FastAPI): health, activations, search, steering, and the pages.

Why so strict: a demo is reachable by anything on the machine. Request bodies are capped before they
are read, every field is typed strictly and bounded, and every bad input gets a 4xx JSON ``{"error": ...}``
naming the field and what is allowed; nothing a client sends can stop the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybrid_sae_ext.dashboards.live import MAX_ABS_STRENGTH, MAX_NEW_TOKENS, MAX_TEXT_CHARS, LiveModel
from hybrid_sae_ext.dashboards.render import ASSETS

MAX_BODY_BYTES = 64 * 1024


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
    """ASGI middleware: answer 413 to a request body over ``limit`` bytes without reading the rest."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _send_error(send, 413, f"request body over {self.limit} bytes")
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _send_error(send, 413, f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


async def _send_error(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def create_app(live: LiveModel, dashboards: Path | str) -> FastAPI:
    """The demo app over a loaded model; ``dashboards`` is a folder written by ``build_dashboards``."""
    site = Path(dashboards) / "site"
    if not (site / "index.html").is_file():
        raise ValueError(f"{site}: no dashboard site here; build it with hybrid-sae dashboards --out {dashboards}")
    app = FastAPI(title="hybrid-sae-ext live demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "; ".join(_describe(e) for e in exc.errors())}, status_code=422)

    @app.exception_handler(ValueError)
    async def bad_value(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

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
    app.mount("/dashboards", StaticFiles(directory=site, html=True), name="dashboards")
    return app
