"""The dashboard build configuration, validated at construction.

Why: a mistake (a path under a file, a negative count, an SAE folder without metadata) must stop the
build with one line naming the value before any model forward pass runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import simple_parsing

from hybrid_sae_ext.activations.tokens import EMBEDDED_CORPUS
from hybrid_sae_ext.pretrained import DEFAULT_SAE_PATH


@dataclass
class DashboardConfig:
    """One dashboard build: which SAE, over which tokens, and how much to keep per latent."""

    sae_path: str = str(DEFAULT_SAE_PATH)
    """Folder of a saved SAELens SAE (cfg.json + sae_weights.safetensors); model and hook come from its metadata.
    Default: the shipped pretrained hybrid SAE of the embedded model."""
    out: str = "results/dashboards"
    """Output folder: statistics (stats.safetensors, dashboard.json), the static site (site/) and exports."""
    tokens: int = 100_000
    """Token positions to run through the SAE (whole rows of the SAE's context size; BOS positions excluded)."""
    dataset: str = EMBEDDED_CORPUS
    """``embedded`` (the packaged corpus), a local parquet/json/jsonl/txt/csv file or folder, or a hub name."""
    split: str = "train"
    """Dataset split to stream."""
    batch_rows: int = simple_parsing.field(default=32, alias="--batch_sequences")
    """Sequences (rows of the SAE's context size) per forward pass (memory grows with it, the statistics do not)."""
    n_top: int = 10
    """Top activating examples kept per latent."""
    quantile_groups: int = 5
    """Groups of examples at true activation quantiles, centred at (i + 0.5) / groups."""
    examples_per_group: int = 3
    """Examples per quantile group."""
    sample_size: int = 64
    """Uniform sample of firings per latent from which quantile examples are drawn."""
    histogram_bins: int = 40
    """Equal-width bins from 0 to each latent's max activation (and for logit effects and gate margins)."""
    context_before: int = 12
    """Tokens shown before the example token."""
    context_after: int = 4
    """Tokens shown after the example token."""
    n_logits: int = 10
    """Most promoted and most suppressed tokens kept per latent."""
    n_neighbours: int = 10
    """Nearest latents by decoder cosine, and top co-firing latents, kept per latent."""
    max_cofiring_latents: int = 16384
    """Co-firing counts need d_sae^2 int32; above this width they are skipped (reported in dashboard.json)."""
    cofiring_tokens: int = 131072
    """Co-firing (Jaccard) is counted over the first this many tokens (whole batches), a fixed cost per build."""
    skip_bos: bool = True
    """Leave the BOS position out of the statistics (SAEs of this project are trained without it)."""
    dense_density: float = 0.1
    """Latents firing on more than this fraction of tokens are flagged dense."""
    checkpoint_every: int = 20
    """Batches between resumable state checkpoints (written atomically)."""
    seed: int = 0
    """Seed of the uniform firing sample (keys depend only on it and the batch index, so resume is exact)."""
    device: str = "cpu"
    """Device for the model and the SAE."""
    threads: int = 0
    """torch intra-op threads for the build (0: torch's default). On a CPU shared with other work, 1 is often faster."""
    progress: bool = True
    """Show a tqdm progress bar."""
    overwrite: bool = False
    """Build into an --out that already holds files (a finished build, or anything else): its site/, exports/
    and statistics are replaced. Without it only an empty folder or this build's own unfinished state is used."""

    def __post_init__(self) -> None:
        positive = ("tokens", "batch_rows", "n_top", "quantile_groups", "examples_per_group", "sample_size",
                    "histogram_bins", "n_logits", "n_neighbours", "checkpoint_every", "cofiring_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        for name in ("context_before", "context_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got threads={self.threads}")
        if not 0 < self.dense_density <= 1:
            raise ValueError(f"dense_density must be in (0, 1], got dense_density={self.dense_density}")
        if self.sample_size < self.quantile_groups * self.examples_per_group:
            raise ValueError(
                f"sample_size={self.sample_size} must be >= quantile_groups x examples_per_group="
                f"{self.quantile_groups * self.examples_per_group}"
            )
        for name in ("sae_path", "out"):
            if not getattr(self, name):
                raise ValueError(f"{name} must be a path, got an empty string")

    @property
    def examples_per_latent(self) -> int:
        return self.n_top + self.quantile_groups * self.examples_per_group
