"""Shared fixtures: tiny hand-made datasets in the real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

COCO_K = 17


def _person(ann_id: int, image_id: int, x0: float, y0: float) -> dict:
    rng = np.random.default_rng(ann_id)
    keypoints = []
    for _ in range(COCO_K):
        keypoints += [float(x0 + rng.uniform(0, 40)), float(y0 + rng.uniform(0, 80)), 2]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "keypoints": keypoints,
        "num_keypoints": COCO_K,
        "bbox": [x0, y0, 40.0, 80.0],
        "area": 3200.0,
        "iscrowd": 0,
    }


def write_coco_split(root: Path, split: str, image_ids: list[int]) -> Path:
    """Write ``len(image_ids)`` 128x128 images with one person each, COCO layout."""
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in image_ids:
        name = f"{image_id:012d}.jpg"
        pixels = np.random.default_rng(image_id).integers(0, 255, (128, 128, 3), dtype=np.uint8)
        cv2.imwrite(str(image_dir / name), pixels)
        images.append({"id": image_id, "file_name": name, "width": 128, "height": 128})
        annotations.append(_person(image_id * 10, image_id, 30.0, 20.0))
    path = root / "annotations" / f"person_keypoints_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}],
            }
        )
    )
    return path


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """A four-image COCO-layout dataset with train2017 and val2017 splits."""
    root = tmp_path / "coco"
    write_coco_split(root, "train2017", [1, 2, 3, 4])
    write_coco_split(root, "val2017", [11, 12])
    return root


def coco_sample_indexes(root: Path, sample) -> dict:
    """The prepare step's sample indexes (train, val, val_detections) of a COCO-layout ``root``."""
    from pnfs_pipeline.config import DataParams
    from pnfs_pipeline.data.sample_index import (
        build_sample_indexes,
        locate_raw_data,
        validate_raw_data,
    )
    from pnfs_pipeline.keypoints import load_keypoint_spec

    data, spec = DataParams(source="coco", root=str(root)), load_keypoint_spec("coco")
    return build_sample_indexes(validate_raw_data(locate_raw_data(data), spec, data, sample), spec, data)
