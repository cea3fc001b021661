"""Kept for old command lines: the same as ``hybrid-sae compare`` (``hybrid-sae compare --help``)."""

from hybrid_sae_ext.cli import script

script("compare")
