"""What a person sees, in a real browser: Debian's chromium driven by Playwright, pages served by the demo.

Every request that is not to 127.0.0.1 is aborted and fails the test, and so does any console error.
The expected values come from the statistics file and from a direct encode, not from the pages' JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import torch

from hybrid_sae_ext.dashboards.records import DashboardData
from hybrid_sae_ext.dashboards.serve import demo_process
from tests.dashboards.conftest import CHROMIUM, TEXT, chromium_available

pytestmark = pytest.mark.skipif(not chromium_available(), reason=f"no chromium at {CHROMIUM} (.ci/run installs it)")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "headless": True,
            "args": ["--disable-gpu", "--disable-dev-shm-usage"]}


@pytest.fixture(scope="module")
def server(hybrid_sae_path: Path, hybrid_dashboards: Path) -> Iterator[str]:
    """The demo in its own process (the entry point of ``hybrid-sae serve``) until the module's tests end."""
    with demo_process(hybrid_sae_path, hybrid_dashboards) as url:
        yield url


class Guard:
    """Aborts and records requests that leave 127.0.0.1, and records console errors."""

    def __init__(self) -> None:
        self.blocked: list[str] = []
        self.errors: list[str] = []

    def route(self, route: Any) -> None:
        url = route.request.url
        if urlparse(url).hostname == "127.0.0.1" or url.startswith("data:"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


@pytest.fixture
def guard(page: Any) -> Iterator[Guard]:
    watch = Guard()
    page.route("**/*", watch.route)
    page.on("console", lambda message: watch.errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    yield watch
    assert watch.blocked == [], f"requests left the machine: {watch.blocked}"
    assert watch.errors == [], f"console errors: {watch.errors}"


@pytest.fixture(scope="module")
def data(hybrid_dashboards: Path) -> DashboardData:
    return DashboardData(hybrid_dashboards)


def test_the_guard_catches_a_request_to_another_host(page: Any, guard: Guard, server: str) -> None:
    page.goto(f"{server}/dashboards/index.html")
    assert page.evaluate("fetch('http://example.com/x').then(() => 'reached', () => 'failed')") == "failed"
    assert guard.blocked == ["http://example.com/x"]
    guard.blocked.clear()
    guard.errors.clear()  # the aborted fetch logs a console error by design


def test_histogram_bars_match_the_stored_counts(page: Any, guard: Guard, server: str, data: DashboardData) -> None:
    latent = int(data.stats["count"].argmax())
    page.goto(f"{server}/dashboards/latents/{latent:05d}.html")
    bars = page.locator("#activation-histogram .bar")
    expected = data.stats["hist"][latent].tolist()
    assert [int(c) for c in bars.evaluate_all("bars => bars.map(b => b.dataset.count)")] == expected
    heights = bars.evaluate_all("bars => bars.map(b => b.getBoundingClientRect().height)")
    tallest = max(heights)
    for height, count in zip(heights, expected):
        assert height == pytest.approx(tallest * count / max(expected), abs=1.0)


def test_highlighted_tokens_and_values_match_the_statistics(page: Any, guard: Guard, server: str,
                                                            data: DashboardData) -> None:
    latent = int(data.stats["count"].argmax())
    page.goto(f"{server}/dashboards/latents/{latent:05d}.html")
    rows = page.locator("#top-examples .example")
    assert rows.count() == int((data.stats["example_loc"][latent, : data.meta["config"]["n_top"]] >= 0).sum())
    peak = float(data.stats["max"][latent])
    for slot in range(rows.count()):
        ids = data.stats["window_tokens"][latent, slot]
        values = data.stats["window_values"][latent, slot][ids >= 0]
        shown = rows.nth(slot).locator(".tok").evaluate_all(
            "spans => spans.map(s => [s.textContent, Number(s.dataset.value), getComputedStyle(s).backgroundColor])")
        texts = [data.vocab[int(i)].replace("\n", "\u21b5").replace("\t", "\u2192") for i in ids[ids >= 0]]
        assert [text for text, _, _ in shown] == texts
        torch.testing.assert_close(torch.tensor([v for _, v, _ in shown]), values, atol=1e-4, rtol=0)
        centre = int(values.argmax())
        alpha = float(shown[centre][2].rsplit(",", 1)[1].rstrip(")")) if shown[centre][2].count(",") == 3 else 1.0
        assert alpha == pytest.approx(min(1.0, float(values[centre]) / peak), abs=1 / 255 + 1e-3)  # 8-bit alpha


def test_index_sorts_filters_and_links_to_latent_pages(page: Any, guard: Guard, server: str, data: DashboardData) -> None:
    page.goto(f"{server}/dashboards/index.html")
    latents = lambda: [int(x) for x in page.locator("#latents-body tr").evaluate_all("rows => rows.map(r => r.dataset.latent)")]
    assert latents() == list(range(data.d_sae))
    page.click("th[data-key=max]")
    maxima = data.stats["max"]
    assert [float(maxima[i]) for i in latents()] == sorted(maxima.tolist(), reverse=True)
    page.click("th[data-key=max]")
    assert [float(maxima[i]) for i in latents()] == sorted(maxima.tolist())
    page.check("#hide-dead")
    assert sorted(latents()) == [i for i in range(data.d_sae) if int(data.stats["count"][i]) > 0]
    page.uncheck("#hide-dead")
    page.fill("#filter", "17")
    assert 17 in latents() and all(i == 17 or "17" in "".join(data.vocab[t] for t in data.top_token_ids(i)) for i in latents())
    page.click("#latents-body tr[data-latent='17'] a")
    page.wait_for_url("**/latents/00017.html")
    assert page.locator("h1").inner_text().startswith("Latent 17")


def test_typed_text_comes_back_highlighted_through_the_server(page: Any, guard: Guard, server: str,
                                                             reference: Callable) -> None:
    strings, codes = reference(TEXT)
    latent = int(codes.sum(0).argmax())
    page.goto(server + "/")
    page.fill("#text", TEXT)
    page.fill("#feature", str(latent))
    page.click("#analyze")
    page.wait_for_selector("#tokens .tok")
    page.wait_for_selector("#search tr")
    shown = page.locator("#tokens .tok").evaluate_all("spans => spans.map(s => [s.textContent, Number(s.dataset.value)])")
    assert [t for t, _ in shown] == [s.replace("\n", "\u21b5").replace("\t", "\u2192") for s in strings]
    torch.testing.assert_close(torch.tensor([v for _, v in shown]), codes[:, latent], atol=1e-4, rtol=0)
    found = page.locator("#search tr").evaluate_all("rows => rows.map(r => Number(r.dataset.feature))")
    assert found == torch.argsort(codes.sum(0), descending=True)[: len(found)].tolist()


def test_steering_at_strength_zero_shows_the_default_completion(page: Any, guard: Guard, server: str) -> None:
    page.goto(server + "/")
    page.fill("#feature", "3")
    page.fill("#strength", "0")
    page.fill("#new-tokens", "10")
    page.click("#steer")
    page.wait_for_function("document.getElementById('default').textContent.length > 0")
    default = page.locator("#default").text_content()
    assert page.locator("#steered").text_content() == default
    page.fill("#strength", "40")
    page.click("#steer")
    page.wait_for_function(f"document.getElementById('steered').textContent !== {default!r}")
    assert page.locator("#default").text_content() == default
