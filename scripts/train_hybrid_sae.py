"""Kept for old command lines: the same as ``hybrid-sae train`` (``hybrid-sae train --help``)."""

from hybrid_sae_ext.cli import script

script("train")
