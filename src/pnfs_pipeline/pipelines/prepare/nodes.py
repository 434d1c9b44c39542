"""Nodes of the ``prepare`` pipeline: raw data -> validated annotations -> sample indexes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pnfs_pipeline.config import (
    AugmentationParams,
    DataParams,
    PreviewParams,
    SampleParams,
    SyntheticParams,
    parse_params,
)
from pnfs_pipeline.data import sample_index
from pnfs_pipeline.data.dataset import TopDownDataset, denormalize_image
from pnfs_pipeline.data.synthetic import (
    SyntheticConfig,
    default_generation_workers,
    generate_synthetic_dataset,
    synthetic_dataset_exists,
)
from pnfs_pipeline.keypoints import keypoint_spec_from_dict, load_keypoint_spec
from pnfs_pipeline.viz.skeleton import plot_augmented_samples

logger = logging.getLogger(__name__)


def obtain_raw_data(data: dict[str, Any], synthetic: dict[str, Any]) -> dict[str, Any]:
    """Generate the synthetic dataset (once per configuration) or locate the real one."""
    data_params = parse_params(DataParams, data, "data")
    if data_params.source.startswith("synthetic"):
        synthetic_params = parse_params(SyntheticParams, synthetic, "synthetic")
        config = SyntheticConfig(**synthetic_params.model_dump(exclude={"workers"}))
        root = Path(data_params.root)
        if synthetic_dataset_exists(root, config):
            logger.info("synthetic dataset at %s is up to date; not regenerating", root)
        else:
            workers = synthetic_params.workers or default_generation_workers()
            summary = generate_synthetic_dataset(root, config, workers=workers)
            logger.info("generated synthetic dataset at %s: %s", root, summary)
    manifest = sample_index.locate_raw_data(data_params)
    manifest["source"] = data_params.source
    return manifest


def validate_annotations(
    manifest: dict[str, Any], data: dict[str, Any], sample: dict[str, Any]
) -> tuple[sample_index.ValidatedData, dict[str, Any]]:
    """Read and check every record; bad ones are listed in the report and skipped (or fail)."""
    data_params = parse_params(DataParams, data, "data")
    spec = load_keypoint_spec(data_params.keypoint_spec)
    validated = sample_index.validate_raw_data(
        manifest, spec, data_params, parse_params(SampleParams, sample, "sample")
    )
    report = {
        "on_bad_record": data_params.on_bad_record,
        "valid_samples": {split: len(records) for split, records in validated.records.items()},
        **validated.log.report(),
    }
    return validated, report


def build_sample_indexes(
    validated: sample_index.ValidatedData, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Persisted sample indexes (train, val, val with detected boxes) and the val ground truth."""
    data_params = parse_params(DataParams, data, "data")
    spec = load_keypoint_spec(data_params.keypoint_spec)
    indexes = sample_index.build_sample_indexes(validated, spec, data_params)
    ground_truth = sample_index.ground_truth_for_evaluation(validated, indexes["val"])
    return indexes["train"], indexes["val"], indexes["val_detections"], ground_truth


def summarize_samples(
    train_samples: dict[str, Any], val_samples: dict[str, Any], val_detection_samples: dict[str, Any]
) -> dict[str, Any]:
    """Counts and visibility histograms for a person to check before training."""
    spec = keypoint_spec_from_dict(train_samples["keypoint_spec"], source="train_samples")
    indexes = {"train": train_samples, "val": val_samples, "val_detections": val_detection_samples}
    summary = sample_index.summarize_indexes(indexes, spec)
    logger.info(
        "samples: train %d, val %d, val detections %d",
        summary["train"]["num_samples"],
        summary["val"]["num_samples"],
        summary["val_detections"]["num_samples"],
    )
    return summary


def plot_sample_preview(
    train_samples: dict[str, Any],
    sample: dict[str, Any],
    augmentation: dict[str, Any],
    preview: dict[str, Any],
) -> Figure:
    """Augmented training crops with skeletons and heatmap targets, to eyeball the data path."""
    preview_params = parse_params(PreviewParams, preview, "preview")
    dataset = TopDownDataset(
        train_samples,
        parse_params(SampleParams, sample, "sample"),
        parse_params(AugmentationParams, augmentation, "augmentation"),
        seed=preview_params.seed,
    )
    rng = np.random.default_rng(preview_params.seed)
    count = min(preview_params.num_samples, len(dataset))
    chosen = sorted(rng.choice(len(dataset), size=count, replace=False).tolist())
    items = [dataset[i] for i in chosen]
    titles = [
        f"#{i} rot {item['rotation']:.0f}{' flip' if item['flipped'] else ''}"
        for i, item in zip(chosen, items, strict=True)
    ]
    return plot_augmented_samples(
        [denormalize_image(item["image"]) for item in items],
        [item["input_keypoints"].numpy() for item in items],
        [item["heatmaps"].numpy() for item in items],
        dataset.spec,
        titles,
    )
