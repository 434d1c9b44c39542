"""MPII annotations in the HRNet JSON layout (``annot/{train,valid}.json``, ``annot/gt_valid.mat``).

MPII's annotation tool is MATLAB: coordinates are 1-based, and a person is given by a rough
center and a scale (box side / 200 px). We convert to 0-based pixels and to the crop size with the
adjustments every top-down MPII implementation applies (center moved down by 15 * scale, x1.25).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from pnfs_pipeline.data.coco import image_is_readable, load_json
from pnfs_pipeline.data.records import (
    BadInputError,
    BadRecordLog,
    PersonRecord,
    all_finite,
    box_to_center_size,
)
from pnfs_pipeline.progress import track

logger = logging.getLogger(__name__)

MPII_PIXEL_STD = 200.0


def read_mpii_ground_truth(gt_file: str | Path, num_keypoints: int) -> dict[str, np.ndarray]:
    """What HRNet's MPII evaluation scores against, from its ``gt_valid.mat``, 0-based: head boxes
    ``(N, 4)`` [x1, y1, x2, y2] and, where the file has them (``pos_gt_src``, ``jnt_missing``),
    the joints ``(N, K, 2)`` and which are labelled ``(N, K)``."""
    path = Path(gt_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MPII ground-truth file not found")
    try:
        mat = loadmat(str(path))
    except Exception as error:  # scipy raises several unrelated types for a broken file
        raise BadInputError(f"{path}: not a readable MATLAB file: {error}") from error
    if "headboxes_src" not in mat:
        raise BadInputError(f"{path}: field 'headboxes_src' missing")
    boxes = np.asarray(mat["headboxes_src"], dtype=np.float64)  # (2, 2, N), 1-based
    if boxes.ndim != 3 or boxes.shape[:2] != (2, 2):
        raise BadInputError(f"{path}: 'headboxes_src' has shape {boxes.shape}, expected (2, 2, N)")
    truth = {"head_boxes": np.concatenate([boxes[0].T, boxes[1].T], axis=1) - 1.0}
    if "pos_gt_src" in mat and "jnt_missing" in mat:
        count = boxes.shape[2]
        joints = np.asarray(mat["pos_gt_src"], dtype=np.float64)  # (K, 2, N), 1-based
        missing = np.asarray(mat["jnt_missing"])  # (K, N)
        if joints.shape != (num_keypoints, 2, count) or missing.shape != (num_keypoints, count):
            raise BadInputError(
                f"{path}: 'pos_gt_src' {joints.shape} and 'jnt_missing' {missing.shape} must be "
                f"({num_keypoints}, 2, {count}) and ({num_keypoints}, {count})"
            )
        truth["joints"] = joints.transpose(2, 0, 1) - 1.0
        truth["labelled"] = (missing == 0).T
    return truth


def read_mpii_records(
    annotation_file: str | Path,
    image_dir: str | Path,
    num_keypoints: int,
    aspect_ratio: float,
    padding: float,
    log: BadRecordLog,
    check_images: str = "decode",
    ground_truth: dict[str, np.ndarray] | None = None,
) -> list[PersonRecord]:
    """Person crops from an HRNet-style MPII JSON file; ``ground_truth`` (row i belongs to entry
    i, :func:`read_mpii_ground_truth`) gives validation records what PCKh scores them by."""
    file = str(annotation_file)
    image_dir = Path(image_dir)
    entries = load_json(annotation_file)
    if not isinstance(entries, list):
        raise BadInputError(f"{file}: an MPII annotation file must be a JSON list")
    if ground_truth is not None and len(ground_truth["head_boxes"]) != len(entries):
        raise BadInputError(
            f"{file}: {len(entries)} entries but the ground-truth file has {len(ground_truth['head_boxes'])} head boxes"
        )
    image_problems: dict[str, str | None] = {}
    image_ids: dict[str, int] = {}
    records: list[PersonRecord] = []
    checking = track(entries, f"checking {Path(file).name}")
    for position, entry in enumerate(checking):
        problem = _entry_problem(entry, num_keypoints)
        if problem is None:
            name = entry["image"]
            if name not in image_problems:
                image_problems[name] = image_is_readable(image_dir / name, check_images)
                image_ids[name] = len(image_ids)
            problem = image_problems[name] and f"{image_problems[name]}: {image_dir / name}"
        if problem:
            log.add(file, position, problem)
            continue
        scale = float(entry["scale"])
        center = np.asarray(entry["center"], dtype=np.float64) - 1.0
        center[1] += 15.0 * scale
        side = scale * MPII_PIXEL_STD
        crop_center, crop_size = box_to_center_size(
            [center[0] - side / 2, center[1] - side / 2, side, side], aspect_ratio, padding
        )
        joints = np.asarray(entry["joints"], dtype=np.float64) - 1.0
        visible = np.asarray(entry.get("joints_vis", [1] * num_keypoints)) > 0
        keypoints = [
            [float(x), float(y), 2.0] if vis else [0.0, 0.0, 0.0]
            for (x, y), vis in zip(joints, visible, strict=True)
        ]
        record = PersonRecord(
            image=name,
            image_id=image_ids[name],
            record_id=position,
            center=crop_center,
            size=crop_size,
            keypoints=keypoints,
            score=1.0,
            area=float(side * side),
        )
        if ground_truth is not None:
            record["head_box"] = [float(v) for v in ground_truth["head_boxes"][position]]  # type: ignore[typeddict-unknown-key]
            if "joints" in ground_truth:
                # HRNet scores the file's joints where jnt_missing is 0, not the JSON's joints_vis.
                record["scored_keypoints"] = [  # type: ignore[typeddict-unknown-key]
                    [float(x), float(y), 2.0] if labelled else [0.0, 0.0, 0.0]
                    for (x, y), labelled in zip(ground_truth["joints"][position], ground_truth["labelled"][position], strict=True)
                ]
        records.append(record)
    logger.info("%s: %d person entries valid", file, len(records))
    return records


def _entry_problem(entry: object, num_keypoints: int) -> str | None:
    if not isinstance(entry, dict):
        return "malformed record: not an object"
    missing = [k for k in ("image", "center", "scale", "joints") if k not in entry]
    if missing:
        return f"malformed record: missing {missing}"
    if not isinstance(entry["image"], str) or not entry["image"]:
        return "malformed record: 'image' must be a file name"
    center, scale, joints = entry["center"], entry["scale"], entry["joints"]
    if not isinstance(center, list) or len(center) != 2 or not all_finite(center):
        return "malformed or NaN center"
    if not all_finite([scale]) or scale <= 0:
        return f"zero, negative or NaN scale: {scale}"
    if not isinstance(joints, list) or len(joints) != num_keypoints:
        count = len(joints) if isinstance(joints, list) else "no"
        return f"wrong keypoint count: {count} joints, expected {num_keypoints}"
    if any(not isinstance(j, list) or len(j) != 2 for j in joints) or not all_finite(joints):
        return "NaN or malformed joint coordinates"
    joints_vis = entry.get("joints_vis", [1] * num_keypoints)
    if not isinstance(joints_vis, list) or len(joints_vis) != num_keypoints:
        return f"joints_vis must list {num_keypoints} flags"
    if not all_finite(joints_vis) or any(v not in (0, 1) for v in joints_vis):
        return "joints_vis flags must be 0 or 1"
    return None
