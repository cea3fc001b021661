"""Kept for old command lines: the same as ``hybrid-sae capture`` (``hybrid-sae capture --help``)."""

from hybrid_sae_ext.cli import script

script("capture")
