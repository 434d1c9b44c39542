"""The derive pipeline: architecture parameters to a genotype, diagrams and a size report."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
