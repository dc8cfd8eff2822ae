"""Batch Memory Toolkit: claim-check batch storage on Parse for Temporal, and the tools to prove it."""

__version__ = "0.1.0"
