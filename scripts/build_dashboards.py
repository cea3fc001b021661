"""Kept for old command lines: the same as ``hybrid-sae dashboards`` (``hybrid-sae dashboards --help``)."""

from hybrid_sae_ext.cli import script

script("dashboards")
