"""The predict pipeline: keypoints and overlays for a folder of images."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
