"""The evaluate pipeline: COCO AP / MPII PCKh of the retrained model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
