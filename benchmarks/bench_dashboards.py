"""Benchmark: dashboards for every latent of a saved SAE, and the live demo's /api/activations latency.

Prints and writes (``benchmarks/results/<device>-dashboards.{json,md}``): the build's wall time per phase and
the process's peak RSS, next to its floor measured in the same run (the model forward + SAE encode over the
same tokens, nothing else); and the latency of ``POST /api/activations`` for a 128-token text over real HTTP
to ``hybrid-sae serve``, next to the same call made in-process. ``--screenshots DIR`` also saves the
index, a latent page and the live page as PNGs (Debian chromium via Playwright).

    python benchmarks/bench_dashboards.py --sae_path results/hybrid-tiny-lm --tokens 500000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hybrid_sae_ext.dashboards.build import build_dashboards
from hybrid_sae_ext.dashboards.config import DashboardConfig
from hybrid_sae_ext.dashboards.live import LiveModel
from hybrid_sae_ext.dashboards.serve import demo_process
from hybrid_sae_ext.dashboards.source import corpus_rows, encode_firings, hook_activations, load_source
from hybrid_sae_ext.dashboards.stats import make_plan
from hybrid_sae_ext.io import write_json_atomic, write_text_atomic
from hybrid_sae_ext.measure import device_name, load_watch

TEXT_TOKENS = 128


def floor_seconds(cfg: DashboardConfig) -> float:
    """The model forward and the SAE encode over the build's rows: what any dashboard pass must at least do."""
    source = load_source(cfg.sae_path)
    rows = make_plan(cfg, source).rows
    stream = corpus_rows(source, cfg.dataset, cfg.split)
    start = time.perf_counter()
    done = 0
    while done < rows:
        batch = torch.stack([next(stream) for _ in range(min(cfg.batch_rows, rows - done))])
        encode_firings(source, hook_activations(source, batch))
        done += batch.shape[0]
    return time.perf_counter() - start


def text_of_tokens(live: LiveModel, n: int) -> str:
    """A corpus text that the model sees as exactly ``n`` tokens (BOS included: 128 is the tiny model's context)."""
    rows = corpus_rows(live.source, "embedded", "validation")
    pieces: list[torch.Tensor] = []
    while sum(len(p) for p in pieces) < 2 * n:  # rows of the SAE's context size, BOS dropped
        pieces.append(next(rows)[1:])
    ids = torch.cat(pieces)
    tokenizer = live.source.model.tokenizer
    for cut in range(n - 8, n + 8):
        text = tokenizer.decode(ids[:cut])
        if live.source.model.to_tokens(text, truncate=False).shape[1] == n:
            return text
    raise RuntimeError(f"no corpus text of exactly {n} tokens found")


def api_latency(sae_path: str, dashboards: Path, repeats: int) -> dict[str, float]:
    live = LiveModel(load_source(sae_path))
    text = text_of_tokens(live, TEXT_TOKENS)
    in_process = []
    for _ in range(repeats):
        start = time.perf_counter()
        live.activations(text)
        in_process.append(time.perf_counter() - start)
    with demo_process(sae_path, dashboards) as url:
        over_http = []
        with httpx.Client(base_url=url, timeout=30) as client:
            client.post("/api/activations", json={"text": text})  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.post("/api/activations", json={"text": text})
                over_http.append(time.perf_counter() - start)
                assert response.status_code == 200 and len(response.json()["tokens"]) == TEXT_TOKENS - 1  # BOS not shown
    return {"tokens": TEXT_TOKENS, "http_median_ms": 1000 * statistics.median(over_http),
            "http_p95_ms": 1000 * sorted(over_http)[int(0.95 * (repeats - 1))],
            "in_process_median_ms": 1000 * statistics.median(in_process)}


def screenshots(sae_path: str, dashboards: Path, folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    with demo_process(sae_path, dashboards) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/lib/chromium/chromium", headless=True,
                                    args=["--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{url}/dashboards/index.html")
        page.click("th[data-key=density]")
        page.screenshot(path=str(folder / "index.png"))
        live = LiveModel(load_source(sae_path))
        latent = live.search("def read(path):\n    return open(path).read()", 1)[0]["feature"]
        page.goto(f"{url}/dashboards/latents/{latent:05d}.html")
        page.set_viewport_size({"width": 1200, "height": 1500})
        page.screenshot(path=str(folder / "latent.png"))
        page.set_viewport_size({"width": 1200, "height": 900})
        page.goto(url + "/")
        page.fill("#feature", str(latent))
        page.click("#analyze")
        page.wait_for_selector("#search tr")
        page.fill("#strength", "8")
        page.click("#steer")
        page.wait_for_function("document.getElementById('steered').textContent.length > 0")
        page.hover("#tokens .tok >> nth=3")  # the hover list of a token's top latents
        page.wait_for_selector("#token-latents tr")
        page.screenshot(path=str(folder / "live.png"), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its JSON, write ``<results>/<device>-dashboards.{json,md}``; returns the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae_path", default="results/hybrid-tiny-lm")
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--out", default="benchmarks/.cache/dashboards")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="folder for the tables")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--screenshots", default="", help="folder for index/latent/live PNGs (empty: none)")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    cfg = DashboardConfig(sae_path=args.sae_path, out=args.out, tokens=args.tokens, threads=args.threads)
    with load_watch() as load:
        start = time.perf_counter()
        report = build_dashboards(cfg)
        build_seconds = time.perf_counter() - start
        peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert report is not None
        floor = floor_seconds(cfg)
        site = Path(args.out) / "site"
        largest_page = max(p.stat().st_size for p in [site / "index.html", *(site / "latents").glob("*.html")])
        latency = api_latency(args.sae_path, Path(args.out), args.repeats)
    device = device_name("cpu")
    result = {
        "device": device, "cpu_threads": torch.get_num_threads(), "sae_path": args.sae_path, "d_sae": report.d_sae,
        "tokens": report.tokens, "build_seconds": build_seconds, "phase_seconds": report.seconds,
        "peak_rss_mib": peak_rss_mib, "floor_seconds_one_pass": floor,
        "build_vs_floor": build_seconds / floor, "largest_page_bytes": largest_page, "api_activations": latency,
        "load": load(),
    }
    print(json.dumps(result, indent=2))
    out = Path(args.results) / f"{device}-dashboards"
    write_json_atomic(out.with_suffix(".json"), result)
    write_text_atomic(out.with_suffix(".md"), "\n".join([
        f"# Dashboards benchmark ({device}, {result['cpu_threads']} torch threads)", "",
        f"Load: {result['load']}. Absolute times depend on other work on the machine; the build / floor ratio less so.", "",
        "| what | value | target |", "|---|---:|---:|",
        f"| dashboards for all {report.d_sae:,} latents over {report.tokens:,} tokens | {build_seconds:.1f} s | < 300 s |",
        f"| of which statistics (2 passes) | {report.seconds['statistics']:.1f} s | |",
        f"| floor: one model forward + SAE encode pass over the same tokens | {floor:.1f} s | |",
        f"| build / floor | {build_seconds / floor:.2f} | |",
        f"| peak RSS of the build process | {peak_rss_mib:,.0f} MiB | < 2048 MiB |",
        f"| largest page | {largest_page:,} bytes | < 200,000 |",
        f"| POST /api/activations, {TEXT_TOKENS}-token input (BOS + {TEXT_TOKENS - 1} text tokens), median over HTTP | {latency['http_median_ms']:.1f} ms | < 100 ms |",
        f"| same, p95 over HTTP | {latency['http_p95_ms']:.1f} ms | |",
        f"| same call in-process (no HTTP) | {latency['in_process_median_ms']:.1f} ms | |", "",
    ]))
    if args.screenshots:
        screenshots(args.sae_path, Path(args.out), Path(args.screenshots))
    return result


if __name__ == "__main__":
    main()
