"""Kept for old command lines: the same as ``hybrid-sae serve`` (``hybrid-sae serve --help``)."""

from hybrid_sae_ext.cli import script

script("serve")
