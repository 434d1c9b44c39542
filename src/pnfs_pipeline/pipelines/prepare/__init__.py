"""The prepare pipeline: raw keypoint data to top-down sample indexes."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
