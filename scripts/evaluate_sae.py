"""Kept for old command lines: the same as ``hybrid-sae evaluate`` (``hybrid-sae evaluate --help``)."""

from hybrid_sae_ext.cli import script

script("evaluate")
