"""What a person sees, in a real browser: Debian's chromium driven by Playwright, pages served by the demo.

Every request that is not to 127.0.0.1 is aborted and fails the test, and so does any console error.
The expected values come from the statistics file and from a direct encode, not from the pages' JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import json

import pytest
import torch

from hybrid_sae_ext.dashboards.live import MAX_TEXT_CHARS
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


GLYPHS = {" ": "\u00b7", "\n": "\u21b5", "\t": "\u21e5"}
TOKEN_CHARS = 24
DUNDER_TEXT = "class Size:\n    def __le__(self, other):\n        return self.n <= other.n"
LONG_TOKEN = "+--------------------------------+----------------------------------+-----------------------+"


def shown(token: str) -> str:
    """How a page must draw a token: whitespace as visible glyphs, over 24 characters cut with an ellipsis."""
    cut = token[: TOKEN_CHARS - 1] + "\u2026" if len(token) > TOKEN_CHARS else token
    return "".join(GLYPHS.get(c, c) for c in cut)


# For each token chip whose text has an underscore: where its glyphs' ink lies (the baseline, found with a
# zero-height probe, plus the ink's ascent and descent measured on a canvas with the chip's own font). The ink
# must lie inside the chip's box (which the shading fills) and inside every ancestor that clips.
CLIPPED_UNDERSCORES = """chips => chips.filter(c => c.textContent.includes("_")).map(chip => {
  const probe = document.createElement("span");
  probe.style.cssText = "display:inline-block;width:0;height:0;vertical-align:baseline";
  chip.appendChild(probe);
  const baseline = probe.getBoundingClientRect().bottom;
  probe.remove();
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = getComputedStyle(chip).font;
  const m = ctx.measureText(chip.textContent);
  const ink = [baseline - Math.max(m.actualBoundingBoxAscent, m.fontBoundingBoxAscent),
               baseline + Math.max(m.actualBoundingBoxDescent, m.fontBoundingBoxDescent)];
  const problems = [], box = chip.getBoundingClientRect();
  const outside = (r) => r.top > ink[0] + 0.01 || r.bottom < ink[1] - 0.01;
  if (outside(box)) problems.push("ink " + ink + " outside the chip " + [box.top, box.bottom]);
  for (let a = chip.parentElement; a; a = a.parentElement) {
    const s = getComputedStyle(a), r = a.getBoundingClientRect();
    if ((s.overflowX !== "visible" || s.overflowY !== "visible") && outside(r))
      problems.push("ink " + ink + " clipped by ." + a.className + " " + [r.top, r.bottom]);
  }
  return [chip.textContent, problems];
})"""


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
        shown_chips = rows.nth(slot).locator(".tok").evaluate_all(
            "spans => spans.map(s => [s.textContent, Number(s.dataset.value), getComputedStyle(s).backgroundColor])")
        assert [text for text, _, _ in shown_chips] == [shown(data.vocab[int(i)]) for i in ids[ids >= 0]]
        torch.testing.assert_close(torch.tensor([v for _, v, _ in shown_chips]), values, atol=1e-4, rtol=0)
        centre = int(values.argmax())
        colour = shown_chips[centre][2]
        alpha = float(colour.rsplit(",", 1)[1].rstrip(")")) if colour.count(",") == 3 else 1.0
        assert alpha == pytest.approx(min(1.0, float(values[centre]) / peak), abs=1 / 255 + 1e-3)  # 8-bit alpha


def test_index_sorts_filters_and_links_to_latent_pages(page: Any, guard: Guard, server: str, data: DashboardData) -> None:
    page.goto(f"{server}/dashboards/index.html")
    latents = lambda: [int(x) for x in page.locator("#latents-body tr").evaluate_all("rows => rows.map(r => r.dataset.latent)")]
    assert latents() == list(range(data.d_sae))
    arrows = lambda: page.locator("th[data-key]").evaluate_all(
        "ths => Object.fromEntries(ths.map(t => [t.dataset.key,"
        " [t.getAttribute('aria-sort'), t.querySelector('.arrow').textContent.trim()]]))")
    assert arrows()["latent"] == ["ascending", "\u25b2"] and arrows()["max"] == ["none", ""]
    page.click("th[data-key=max]")
    maxima = data.stats["max"]
    assert [float(maxima[i]) for i in latents()] == sorted(maxima.tolist(), reverse=True)
    assert arrows()["max"] == ["descending", "\u25bc"] and arrows()["latent"] == ["none", ""]
    page.click("th[data-key=max]")
    assert [float(maxima[i]) for i in latents()] == sorted(maxima.tolist())
    assert arrows()["max"] == ["ascending", "\u25b2"]
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
    chips = page.locator("#tokens .tok").evaluate_all(
        "spans => spans.map(s => [s.textContent, Number(s.dataset.value), s.title])")
    assert [t for t, _, _ in chips] == [shown(s) for s in strings]
    assert [title.split("\n")[0] for _, _, title in chips] == [json.dumps(s, ensure_ascii=False) for s in strings]
    torch.testing.assert_close(torch.tensor([v for _, v, _ in chips]), codes[:, latent], atol=1e-4, rtol=0)
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


def test_index_controls_keep_apart_and_the_density_histogram_is_drawn(page: Any, guard: Guard, server: str,
                                                                      data: DashboardData) -> None:
    page.goto(f"{server}/dashboards/index.html")
    boxes = page.locator(".controls > *").evaluate_all("items => items.map(i => { const r = i.getBoundingClientRect();"
                                                      " return [i.id || i.textContent.trim(), r.left, r.right, r.top, r.bottom]; })")
    for (name_a, _, right_a, top_a, bottom_a), (name_b, left_b, _, top_b, bottom_b) in zip(boxes, boxes[1:]):
        if top_b < bottom_a and top_a < bottom_b:  # on the same line
            assert left_b - right_a >= 8, f"{name_a!r} and {name_b!r} are {left_b - right_a:.1f} px apart"
    bars = page.locator("#density-histogram svg rect.bar")
    counts = [int(c) for c in bars.evaluate_all("bars => bars.map(b => b.dataset.count)")]
    assert sum(counts) + int(page.locator("#dead-count").inner_text()) == data.d_sae
    heights = bars.evaluate_all("bars => bars.map(b => b.getBoundingClientRect().height)")
    for height, count in zip(heights, counts):
        assert height == pytest.approx(max(heights) * count / max(counts), abs=1.0)
    assert max(heights) > 50


def test_quantile_rows_show_their_activation(page: Any, guard: Guard, server: str, data: DashboardData) -> None:
    latent = int(data.stats["count"].argmax())
    page.goto(f"{server}/dashboards/latents/{latent:05d}.html")
    labels = page.locator("#quantile-examples .example .act:not(.q)").all_inner_texts()
    n_top = data.meta["config"]["n_top"]
    stored = data.stats["quantile_value"][latent][data.stats["example_loc"][latent, n_top:] >= 0].tolist()
    assert len(labels) == len(stored) > 0
    for label, value in zip(labels, stored):
        assert float(label) == pytest.approx(value, rel=5e-3)


def dunder_latent(data: DashboardData) -> tuple[int, str]:
    """A latent whose top examples hold a token with an underscore, and that token."""
    n_top = data.meta["config"]["n_top"]
    for latent in range(data.d_sae):
        ids = data.stats["window_tokens"][latent, :n_top][data.stats["example_loc"][latent, :n_top] >= 0]
        for token in (data.vocab[int(i)] for i in ids.flatten() if i >= 0):
            if "__" in token:
                return latent, token
    raise AssertionError("no top example of the test dashboards has a token with '__'")


def test_underscores_are_fully_visible_in_static_example_rows(page: Any, guard: Guard, server: str,
                                                             data: DashboardData) -> None:
    latent, token = dunder_latent(data)
    page.goto(f"{server}/dashboards/latents/{latent:05d}.html")
    checked = page.locator("#top-examples .tok").evaluate_all(CLIPPED_UNDERSCORES)
    assert [(text, problems) for text, problems in checked if problems] == []
    assert shown(token) in [text for text, _ in checked]


def analyze(page: Any, server: str, text: str, latent: int = 0) -> None:
    page.goto(server + "/")
    page.fill("#text", text)
    page.fill("#feature", str(latent))
    page.click("#analyze")
    page.wait_for_selector("#search tr")


def test_underscores_are_fully_visible_on_the_live_page(page: Any, guard: Guard, server: str) -> None:
    analyze(page, server, DUNDER_TEXT)
    checked = page.locator("#tokens .tok").evaluate_all(CLIPPED_UNDERSCORES)
    assert len(checked) >= 2, checked  # '.__', '__(' or the like
    assert [(text, problems) for text, problems in checked if problems] == []


def test_live_tokens_wrap_in_a_narrow_window(page: Any, guard: Guard, server: str) -> None:
    page.set_viewport_size({"width": 400, "height": 800})
    analyze(page, server, DUNDER_TEXT + "  # compare the two sizes of both objects")
    scroll, box, page_width = page.evaluate("[document.getElementById('tokens').scrollWidth,"
                                            " document.getElementById('tokens').clientWidth, document.documentElement.scrollWidth]")
    assert scroll <= box and page_width <= 400, f"tokens overflow: scroll {scroll}, box {box}, page {page_width}"
    lines = page.locator("#tokens .tok").evaluate_all(
        "chips => new Set(chips.map(c => Math.round(c.getBoundingClientRect().top))).size")
    assert lines >= 3
    page.hover("#tokens .tok >> nth=-1")  # the hover list of the last token stays inside the window too
    page.locator("#token-latents").wait_for(state="visible", timeout=5000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 400


def test_hovering_a_live_token_shows_its_top_latents(page: Any, guard: Guard, server: str, reference: Callable) -> None:
    strings, codes = reference(TEXT)
    analyze(page, server, TEXT, int(codes.sum(0).argmax()))
    for position in (0, len(strings) // 2, len(strings) - 1):
        page.hover(f"#tokens .tok >> nth={position}")
        popup = page.locator("#token-latents")
        popup.wait_for(state="visible", timeout=5000)
        rows = popup.locator("tr").evaluate_all(
            "rows => rows.map(r => [Number(r.dataset.feature), Number(r.querySelector('.value').textContent)])")
        top = torch.topk(codes[position], 5)
        expected = [(int(i), float(v)) for i, v in zip(top.indices, top.values) if v > 0]
        assert [latent for latent, _ in rows] == [latent for latent, _ in expected]
        for (_, shown_value), (_, value) in zip(rows, expected):
            assert shown_value == pytest.approx(value, rel=5e-3)
        box, chip = popup.bounding_box(), page.locator(f"#tokens .tok >> nth={position}").bounding_box()
        assert box["y"] >= chip["y"] + chip["height"] - 1, "the list must sit under the hovered token"


def test_long_tokens_are_cut_with_the_full_text_in_the_tooltip(page: Any, guard: Guard, server: str) -> None:
    analyze(page, server, "table:\n" + LONG_TOKEN)
    chips = page.locator("#tokens .tok").evaluate_all(
        "chips => chips.map(c => [c.textContent, c.title.split('\\n')[0]])")
    long = [(text, json.loads(title)) for text, title in chips if len(json.loads(title)) > TOKEN_CHARS]
    assert long, f"no token over {TOKEN_CHARS} characters in {chips}"
    for text, raw in long:
        assert text == shown(raw) and text.endswith("\u2026") and len(text) == TOKEN_CHARS


def test_a_failed_request_leaves_no_stale_results(page: Any, guard: Guard, server: str) -> None:
    analyze(page, server, TEXT)
    page.fill("#strength", "5")
    page.fill("#new-tokens", "4")
    page.click("#steer")
    page.wait_for_function("document.getElementById('steered').textContent.length > 0")
    page.fill("#text", "x" * (MAX_TEXT_CHARS + 1))  # over the limit: the API answers 422
    page.click("#analyze")
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert f"at most {MAX_TEXT_CHARS} characters" in page.locator("#error").inner_text()
    assert page.locator("#tokens .tok").count() == 0 and page.locator("#search tr").count() == 0
    assert page.locator("#steered.stale").count() == 1  # completions of the old text stay, dimmed
    page.fill("#text", TEXT)
    page.fill("#strength", "5000")  # over the limit: 422
    page.click("#steer")
    page.wait_for_function("document.getElementById('error').textContent.includes('strength')")
    assert page.locator("#default").text_content() == "" and page.locator("#steered").text_content() == ""
    assert all("422" in error for error in guard.errors) and len(guard.errors) == 2, guard.errors
    guard.errors.clear()  # chromium logs each refused request as a console error, as intended here
