"""Experiments: the architecture comparison, the scaling-law sweep and fits, and their reports."""
