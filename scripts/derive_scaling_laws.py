"""Kept for old command lines: the same as ``hybrid-sae scaling`` (``hybrid-sae scaling --help``)."""

from hybrid_sae_ext.cli import script

script("scaling")
