"""Synthetic datasets the package writes itself, in the real on-disk formats."""
