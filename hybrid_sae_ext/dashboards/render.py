"""The static site: an index page and one page per latent, readable offline from ``file://``.

Why this shape: every page embeds its own data as JSON and loads only the package's own script and style
files from ``assets/`` next to it, so nothing is fetched from another machine and a page stays small
(a latent page is a few tens of KB however many latents there are). The site is written into a staging
folder and renamed into place, so a crash never leaves half a site under the final name.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from pathlib import Path
from typing import Any

from hybrid_sae_ext.dashboards.records import DashboardData
from hybrid_sae_ext.io import fsync_dir, json_text
from hybrid_sae_ext.progress import progress_bar

ASSETS = Path(__file__).parent / "assets"
SITE_ASSETS = ("common.js", "dashboard.css", "latent.js", "index.js")
INDEX_PAGE_LATENTS = 4096
"""Latents per index page; wider SAEs get several index pages so each stays small."""
PAGE_LIMIT_BYTES = 200_000


def latent_page_name(latent: int) -> str:
    return f"{latent:05d}.html"


def index_page_name(page: int) -> str:
    return "index.html" if page == 0 else f"index-{page + 1}.html"


def embed_json(payload: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` can close it early)."""
    return json_text(payload, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def _page(title: str, prefix: str, data_id: str, payload: Any, body: str, script: str) -> str:
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\">"
        f"<link rel=\"stylesheet\" href=\"{prefix}assets/dashboard.css\"></head><body>{body}"
        f"<script type=\"application/json\" id=\"{data_id}\">{embed_json(payload)}</script>"
        f"<script src=\"{prefix}assets/common.js\"></script><script src=\"{prefix}assets/{script}\"></script>"
        "</body></html>\n"
    )


def latent_page(data: DashboardData, latent: int) -> str:
    record = data.record(latent)
    meta = data.meta
    subtitle = html.escape(f"{meta['model_name']} · {meta['hook_name']} · {meta['architecture']} SAE · {meta['tokens']:,} tokens")
    nav = " ".join(
        f"<a href=\"{latent_page_name(i)}\">{label}</a>"
        for i, label in ((latent - 1, "previous"), (latent + 1, "next")) if 0 <= i < data.d_sae
    )
    body = f"<p class=\"subtitle\">{subtitle} {nav}</p><div id=\"root\"></div>"
    return _page(f"Latent {latent}", "../", "latent-data", record, body, "latent.js")


def index_page(data: DashboardData, page: int, n_pages: int) -> str:
    first = page * INDEX_PAGE_LATENTS
    stop = min(first + INDEX_PAGE_LATENTS, data.d_sae)
    columns = {k: v[first:stop] for k, v in data.index_columns().items()}
    payload = {"first": first, "dense": data.meta["config"]["dense_density"], **columns}
    meta = data.meta
    pages = " ".join(f"<a href=\"{index_page_name(p)}\">{p * INDEX_PAGE_LATENTS}-</a>" for p in range(n_pages)) if n_pages > 1 else ""
    header = "".join(f"<th data-key=\"{key}\">{label}</th>" for key, label in
                     (("latent", "latent"), ("density", "density"), ("max", "max"), ("mean", "mean"),
                      ("top", "top tokens"), ("flags", "flags")))
    body = (
        f"<h1>{html.escape(meta['model_name'])} · {html.escape(meta['hook_name'])}: {data.d_sae:,} latents</h1>"
        f"<p>{html.escape(meta['architecture'])} SAE, statistics over {meta['tokens']:,} tokens. {pages}</p>"
        f"{density_figure(data)}"
        "<div class=\"controls\"><input type=\"text\" id=\"filter\" placeholder=\"filter by token or latent id\">"
        "<label><input type=\"checkbox\" id=\"hide-dead\"> hide dead</label>"
        "<label><input type=\"checkbox\" id=\"only-dense\"> only dense</label><span id=\"shown\"></span></div>"
        f"<table id=\"latents\"><thead><tr>{header}</tr></thead><tbody id=\"latents-body\"></tbody></table>"
    )
    return _page(f"Dashboards: {meta['hook_name']}", "", "index-data", payload, body, "index.js")


def density_figure(data: DashboardData, width: int = 640, height: int = 150) -> str:
    """The firing densities of all latents as an inline SVG histogram on a log axis (no script, no library)."""
    hist, dense = data.density_histogram(), float(data.meta["config"]["dense_density"])
    counts, edges = hist["counts"], hist["edges"]
    lowest, left, top, bottom = round(math.log10(edges[0])), 40, 8, 22
    plot_w, plot_h = width - left - 10, height - top - bottom

    def x_of(density: float) -> float:
        return left + plot_w * (math.log10(density) - lowest) / -lowest

    peak = max(1, *counts)
    shapes = [f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>']
    for count, low, high in zip(counts, edges, edges[1:]):
        bar = plot_h * count / peak
        shapes.append(f'<rect class="bar" x="{x_of(low):.1f}" y="{top + plot_h - bar:.1f}" '
                      f'width="{x_of(high) - x_of(low) - 1:.1f}" height="{bar:.1f}" data-count="{count}">'
                      f'<title>{count} latents with density in [{low:.2g}, {high:.2g})</title></rect>')
    for exponent in range(lowest, 1):
        shapes.append(f'<text x="{x_of(10.0 ** exponent):.1f}" y="{height - 6}" text-anchor="middle">'
                      f'{"1" if exponent == 0 else f"1e{exponent}"}</text>')
    dense_x = f"{x_of(dense):.1f}"
    shapes.append(f'<line class="dense-line" x1="{dense_x}" y1="{top}" x2="{dense_x}" y2="{top + plot_h}">'
                  f'<title>dense above {dense:g}</title></line>')
    return (f'<figure class="density" id="density-histogram"><svg viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="histogram of latent firing densities">{"".join(shapes)}</svg>'
            f'<figcaption>Firing density of all {data.d_sae:,} latents: the share of tokens on which each fires, log '
            f'scale; bar height: latents per bin (tallest {peak:,}); dashed: the dense threshold {dense:g}. '
            f'Dead latents (not on the axis): <span id="dead-count">{hist["dead"]}</span>.</figcaption></figure>')


def write_site(data: DashboardData, site: Path, progress: bool = False) -> Path:
    """Write the whole site into a staging folder, check page sizes, then swap it in for ``site``."""
    site = Path(site)
    parent = site.parent
    for stale in parent.glob(f".{site.name}.*"):  # staging or old copies left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    staging = parent / f".{site.name}.staging-{os.getpid()}"
    (staging / "latents").mkdir(parents=True)
    (staging / "assets").mkdir()
    for name in SITE_ASSETS:
        shutil.copyfile(ASSETS / name, staging / "assets" / name)
    n_pages = -(-data.d_sae // INDEX_PAGE_LATENTS)
    pages = {index_page_name(p): index_page(data, p, n_pages) for p in range(n_pages)}
    for name, text in pages.items():
        _write_page(staging / name, text)
    for latent in progress_bar(range(data.d_sae), desc="dashboard site", unit="page", enabled=progress):
        _write_page(staging / "latents" / latent_page_name(latent), latent_page(data, latent))
    fsync_dir(staging)
    if site.exists():
        old = parent / f".{site.name}.old-{os.getpid()}"
        site.rename(old)
        staging.rename(site)
        shutil.rmtree(old)
    else:
        staging.rename(site)
    fsync_dir(parent)
    return site


def _write_page(path: Path, text: str) -> None:
    encoded = text.encode("utf-8")
    if len(encoded) > PAGE_LIMIT_BYTES:
        raise ValueError(f"{path.name} would be {len(encoded):,} bytes, over the {PAGE_LIMIT_BYTES:,}-byte page limit")
    path.write_bytes(encoded)
