"""Owns segtune's version string (its own module, so the checkpoint writer needs no package import)."""

__version__ = "0.1.0"
