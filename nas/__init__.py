"""Differentiable neural architecture search: DARTS and its family on NAS-Bench-201."""

__version__ = "0.1.0"
