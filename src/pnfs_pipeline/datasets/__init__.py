"""Custom Kedro datasets."""

from .checkpoint_dataset import CheckpointDataset
from .text_datasets import AtomicJSONDataset, AtomicYAMLDataset

__all__ = ["AtomicJSONDataset", "AtomicYAMLDataset", "CheckpointDataset"]
