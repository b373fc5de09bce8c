"""Reproduce "Promise and Peril of Collaborative Code Generation Models" (ASE 2024)."""

__version__ = "0.5.0"
