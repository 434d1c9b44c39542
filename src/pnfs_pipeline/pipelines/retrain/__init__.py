"""The retrain pipeline: train the derived network from the genotype."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
