"""The live demo's API in-process (FastAPI's TestClient): answers checked against direct tensor math,
and every kind of bad request answered with a 4xx and a message while the server keeps working."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import httpx
import torch
from fastapi.testclient import TestClient

from hybrid_sae_ext.dashboards.live import MAX_TEXT_CHARS, LiveModel
from hybrid_sae_ext.dashboards.serve import demo_process
from hybrid_sae_ext.dashboards.server import create_app
from hybrid_sae_ext.dashboards.source import load_source
from tests.dashboards.conftest import TEXT


@pytest.fixture(scope="module")
def client(hybrid_sae_path: Path, hybrid_dashboards: Path) -> TestClient:
    return TestClient(create_app(LiveModel(load_source(hybrid_sae_path)), hybrid_dashboards),
                      base_url="http://127.0.0.1:8000")


def test_activations_match_a_direct_encode(client: TestClient, reference: Callable) -> None:
    strings, codes = reference(TEXT)
    latent = int(codes.sum(0).argmax())
    answer = client.post("/api/activations", json={"text": TEXT, "feature": latent, "top_k": 3}).json()
    assert answer["tokens"] == strings
    torch.testing.assert_close(torch.tensor(answer["values"]), codes[:, latent], atol=1e-4, rtol=0)
    for position, features in enumerate(answer["features"]):
        top = torch.topk(codes[position], 3)
        assert [f["feature"] for f in features] == [int(i) for i, v in zip(top.indices, top.values) if v > 0]


def test_search_ranks_latents_by_total_activation(client: TestClient, reference: Callable) -> None:
    _, codes = reference(TEXT)
    found = client.post("/api/search", json={"text": TEXT, "top": 5}).json()["features"]
    assert [f["feature"] for f in found] == torch.argsort(codes.sum(0), descending=True)[:5].tolist()


def test_steering_at_strength_zero_is_the_default_completion(client: TestClient) -> None:
    request = {"text": TEXT, "feature": 3, "max_new_tokens": 12, "seed": 7}
    zero = client.post("/api/steer", json={**request, "strength": 0.0}).json()
    assert zero["steered"] == zero["default"]
    strong = client.post("/api/steer", json={**request, "strength": 40.0}).json()
    assert strong["default"] == zero["default"] and strong["steered"] != strong["default"]
    clamped = client.post("/api/steer", json={**request, "strength": 40.0, "mode": "clamp"}).json()
    assert clamped["steered"] != clamped["default"]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/api/activations", {"text": 5}, 422, "text: Input should be a valid string"),
    ("/api/activations", {"text": "x" * (MAX_TEXT_CHARS + 1)}, 422, f"at most {MAX_TEXT_CHARS} characters"),
    ("/api/activations", {"text": "word " * 200}, 400, "tokens; the model's context is 128"),
    ("/api/activations", {"text": "   "}, 400, "text is empty"),
    ("/api/activations", {"text": "a", "feature": 48}, 400, "unknown latent 48; this SAE has latents 0..47"),
    ("/api/activations", {"text": "a", "feature": "3"}, 422, "feature: Input should be a valid integer"),
    ("/api/activations", {"text": "a", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ("/api/search", {"text": "a", "top": 0}, 422, "top: Input should be greater than or equal to 1"),
    ("/api/steer", {"text": "a", "feature": 1, "strength": 1e6}, 422, "strength: Input should be less than or equal to 1000"),
    ("/api/steer", {"text": "a", "feature": 1, "strength": 1, "mode": "boost"}, 422, "mode: Input should be 'add' or 'clamp'"),
    ("/api/steer", {"text": "a", "feature": 1, "strength": 1, "max_new_tokens": 500}, 422, "max_new_tokens"),
    ("/api/steer", {"text": "a", "feature": 99, "strength": 1}, 400, "unknown latent 99"),
])
def test_bad_requests_get_a_4xx_with_a_message(client: TestClient, path: str, body: object, status: int,
                                                 message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.get("/health").json()["status"] == "ok"


def test_oversized_and_malformed_bodies_are_refused(client: TestClient) -> None:
    big = client.post("/api/activations", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"})
    assert big.status_code == 413 and "request body over 65536 bytes" in big.json()["error"]
    broken = client.post("/api/activations", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON decode error" in broken.json()["error"]
    assert client.post("/api/activations", json={"text": "ok"}).status_code == 200


def test_pages_are_served(client: TestClient) -> None:
    assert "Live SAE demo" in client.get("/").text
    assert client.get("/dashboards/index.html").status_code == 200
    assert client.get("/dashboards/latents/00003.html").status_code == 200
    assert client.get("/dashboards/../cfg.json").status_code == 404


def test_a_tiny_temperature_samples_greedily_instead_of_failing(client: TestClient) -> None:
    request = {"text": TEXT, "feature": 3, "strength": 5.0, "max_new_tokens": 6}
    tiny = client.post("/api/steer", json={**request, "temperature": 1e-38})
    assert tiny.status_code == 200
    assert tiny.json() == client.post("/api/steer", json={**request, "temperature": 0.0}).json()


def _chunks(total: int) -> Iterator[bytes]:
    yield b'{"text": "'
    for _ in range(total // 1024):
        yield b"x" * 1024
    yield b'"}'


BAD_REQUESTS = [
    ("invalid_utf8", "POST", "/api/activations", b'{"text": "\xff\xfe"}', 400, "body: not valid JSON (UnicodeDecodeError"),
    ("deep_json", "POST", "/api/activations", b"[" * 5000 + b"]" * 5000, 400, "body: not valid JSON (RecursionError: nested too deeply)"),
    ("huge_integer", "POST", "/api/search", b'{"text": "a", "top": ' + b"9" * 5000 + b"}", 400, "Exceeds the limit (4300 digits)"),
    ("get_on_post_route", "GET", "/api/steer", b"", 405, "method: GET is not allowed on /api/steer; allowed: POST"),
    ("post_on_a_page", "POST", "/dashboards/index.html", b"{}", 405, "method: POST is not allowed"),
    ("unknown_path", "GET", "/api/nothing", b"", 404, "path: /api/nothing is not served here"),
    ("chunked_over_the_limit", "POST", "/api/activations", _chunks(70_000), 413, "body: request body over 65536 bytes"),
]


@pytest.mark.parametrize(("case", "method", "path", "content", "status", "message"), BAD_REQUESTS,
                         ids=[row[0] for row in BAD_REQUESTS])
def test_every_error_has_the_documented_shape(client: TestClient, case: str, method: str, path: str,
                                               content: object, status: int, message: str) -> None:
    """FastAPI's own ``{"detail": ...}`` never reaches a client: parse errors, 404, 405 and chunked 413 included."""
    headers = {"content-type": "application/json"}
    response = client.request(method, path, content=content, headers=headers)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"] and message in response.json()["error"], response.text
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""])
def test_only_the_bound_host_names_answer(client: TestClient, host: str) -> None:
    """A DNS-rebinding page sends its own name in ``Host``; it gets a 400, never the demo."""
    refused = client.get("/health", headers={"host": host})
    assert refused.status_code == 400 and refused.json()["error"].startswith(f"host: {host!r} is not a name")
    for name in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        assert client.get("/health", headers={"host": name}).status_code == 200


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reads until EOF); fails if it is still open after ``seconds``."""
    start = time.monotonic()
    sock.settimeout(seconds)
    while sock.recv(4096):
        pass
    return time.monotonic() - start


def test_slow_clients_are_timed_out_and_connections_are_capped(hybrid_sae_path: Path, hybrid_dashboards: Path) -> None:
    """Half-sent headers and a body held open are closed after --request_timeout_s; over --max_connections, 503."""
    with demo_process(hybrid_sae_path, hybrid_dashboards,
                      extra_args=("--request_timeout_s", "1", "--max_connections", "3")) as url:
        port = int(url.rsplit(":", 1)[1])
        half_headers = socket.create_connection(("127.0.0.1", port))
        half_headers.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        half_body = socket.create_connection(("127.0.0.1", port))
        half_body.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                          b"content-length: 100\r\n\r\n{\"text\": ")
        with half_headers, half_body:
            busy = httpx.get(f"{url}/health")  # the third connection: 2 held + this one reach the cap
            assert busy.status_code == 503
            assert _closed_within(half_headers, 5) < 5 and _closed_within(half_body, 5) < 5
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_characters_split_over_byte_tokens_are_decoded_as_the_span_is(client: TestClient) -> None:
    """``é``, ``日`` and ``😀`` are several byte tokens each: the tokens add up to the text (no U+FFFD), the
    character shows on the token that completes it, and each token's raw bytes come along for the tooltip."""
    text = "café 日本 😀"
    answer = client.post("/api/activations", json={"text": text}).json()
    assert "".join(answer["tokens"]) == text and "\ufffd" not in "".join(answer["tokens"])
    assert bytes.fromhex(" ".join(answer["token_bytes"])) == text.encode("utf-8")
    assert len(answer["tokens"]) == len(answer["token_bytes"]) == len(answer["features"]) > len(text)
    assert answer["tokens"][answer["token_bytes"].index("a9")] == "é"
