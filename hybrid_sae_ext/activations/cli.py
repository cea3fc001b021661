"""``hybrid-sae capture``: capture activations into a sharded cache, then report capture and read throughput.

Example (the embedded default model and corpus, offline)::

    hybrid-sae capture --out /tmp/acts --total_tokens 262144 \\
        --hook_names blocks.0.hook_resid_post blocks.1.hook_resid_post

Run the same command again after a kill to resume; the finished cache is identical either way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import simple_parsing

from hybrid_sae_ext.activations.capture import CaptureConfig, capture_activations
from hybrid_sae_ext.activations.reader import ActivationReader, ReaderConfig
from hybrid_sae_ext.cli_errors import LiteralPercentHelpFormatter, check_argv, check_values, cli_main


@dataclass
class ThroughputConfig:
    """How to time reading the cache back after the capture."""

    measure_read: bool = True
    """Read the first hook once (shuffled, as training would) and print tokens/s."""
    read_batch_size: int = simple_parsing.field(default=4096, alias="--read_batch_tokens")
    """Activation rows (tokens) per batch when reading the cache back."""


def read_throughput(output_dir: str, hook_name: str, batch_size: int) -> tuple[int, float]:
    """Tokens read in one shuffled epoch and the seconds it took (checksum verification included)."""
    start = time.perf_counter()
    tokens = 0
    with ActivationReader(output_dir, ReaderConfig(hook_name=hook_name, batch_size=batch_size)) as reader:
        for batch in reader:
            tokens += len(batch)
    return tokens, time.perf_counter() - start


@cli_main
def main(argv: list[str] | None = None) -> None:
    parser = simple_parsing.ArgumentParser(description=__doc__, formatter_class=LiteralPercentHelpFormatter)
    parser.add_arguments(CaptureConfig, dest="capture")
    parser.add_arguments(ThroughputConfig, dest="throughput")
    check_argv(CaptureConfig, sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    capture: CaptureConfig = args.capture
    check_values(capture)
    if args.throughput.read_batch_size < 1:
        raise ValueError(f"--read_batch_tokens={args.throughput.read_batch_size}: must be an integer >= 1")
    report = capture_activations(capture)
    manifest = report.manifest
    print(f"cache: {capture.output_dir} ({manifest.total_tokens} tokens x {len(manifest.hook_names)} hooks, "
          f"{len(manifest.shards)} shards, {manifest.dtype})")
    if report.new_tokens:
        print(f"capture throughput: {report.tokens_per_second:,.0f} tokens/s ({report.new_tokens} tokens this run)")
    if args.throughput.measure_read:
        tokens, seconds = read_throughput(capture.output_dir, capture.hook_names[0], args.throughput.read_batch_size)
        print(f"read throughput: {tokens / seconds:,.0f} tokens/s ({tokens} tokens, one hook)")
