"""The search pipeline: train the part-specific supernet and its architecture parameters."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
