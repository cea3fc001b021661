"""Kept for old command lines: the same as ``hybrid-sae compare-scaling`` (``hybrid-sae compare-scaling --help``)."""

from hybrid_sae_ext.cli import script

script("compare-scaling")
