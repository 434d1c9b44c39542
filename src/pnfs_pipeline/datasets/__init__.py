"""Custom Kedro datasets."""

from .checkpoint_dataset import CheckpointDataset

__all__ = ["CheckpointDataset"]
