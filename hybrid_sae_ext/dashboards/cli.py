"""``hybrid-sae dashboards``: build feature dashboards for every latent of a saved SAE (statistics, site, exports).

Example (the main job's SAE, the embedded corpus, offline; with no --sae_path, the shipped pretrained SAE)::

    hybrid-sae dashboards --sae_path results/hybrid-tiny-lm --out results/dashboards --tokens 500000

The model and hook come from the SAE's cfg.json metadata. A killed build resumes when run again with the
same arguments. Open ``<out>/site/index.html`` in a browser; exports are in ``<out>/exports``.
"""

from __future__ import annotations

from hybrid_sae_ext.cli_errors import cli_main, parse_config
from hybrid_sae_ext.dashboards.build import build_dashboards
from hybrid_sae_ext.dashboards.config import DashboardConfig


@cli_main
def main(argv: list[str] | None = None) -> None:
    report = build_dashboards(parse_config(DashboardConfig, argv, description=__doc__))
    assert report is not None
    times = ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    print(f"dashboards for {report.d_sae} latents over {report.tokens:,} tokens in {report.out} ({times})")
    print(f"open {report.out / 'site' / 'index.html'}")
