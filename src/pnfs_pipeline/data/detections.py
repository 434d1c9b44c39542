"""Person-detection results (COCO results format) as top-down crops for evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

from pnfs_pipeline.data.coco import CocoSplit, clip_box, load_json
from pnfs_pipeline.data.records import (
    BadInputError,
    BadRecordLog,
    PersonRecord,
    all_finite,
    box_to_center_size,
)

logger = logging.getLogger(__name__)


def read_detection_records(
    detections_file: str | Path,
    split: CocoSplit,
    num_keypoints: int,
    aspect_ratio: float,
    padding: float,
    score_threshold: float,
    log: BadRecordLog,
) -> list[PersonRecord]:
    """Person boxes of a detector, kept when their score reaches ``score_threshold``.

    Detections of images that the ground truth does not know (or that failed validation) are
    bad records: scoring them would silently count as misses or be dropped by COCOeval.
    """
    file = str(detections_file)
    detections = load_json(detections_file)
    if not isinstance(detections, list):
        raise BadInputError(f"{file}: detection results must be a JSON list of boxes")
    records: list[PersonRecord] = []
    kept_below = 0
    for position, detection in enumerate(detections):
        if not isinstance(detection, dict):
            log.add(file, position, "malformed record: not an object")
            continue
        if detection.get("category_id", 1) != 1:
            continue
        image_id = detection.get("image_id")
        image = split.images.get(image_id) if isinstance(image_id, int) and not isinstance(image_id, bool) else None
        if image is None:
            log.add(file, position, f"refers to unknown or rejected image: {detection.get('image_id')}")
            continue
        bbox, score = detection.get("bbox"), detection.get("score")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all_finite(bbox + [score]):
            log.add(file, position, "malformed or NaN bbox/score")
            continue
        if bbox[2] <= 0 or bbox[3] <= 0:
            log.add(file, position, f"zero or negative box size: {bbox[2]}x{bbox[3]}")
            continue
        if score < score_threshold:
            kept_below += 1
            continue
        # The crop is the detector's box as it is (as in the reference code): clipping would move
        # its centre and shrink it for people cut by the image border.
        if clip_box(bbox, image["width"], image["height"]) is None:
            log.add(file, position, "box lies outside its image or is under a pixel wide")
            continue
        box = [float(v) for v in bbox]
        center, size = box_to_center_size(box, aspect_ratio, padding)
        records.append(
            PersonRecord(
                image=image["file_name"],
                image_id=image["id"],
                record_id=position,
                center=center,
                size=size,
                keypoints=[[0.0, 0.0, 0.0] for _ in range(num_keypoints)],
                score=float(score),
                area=float(box[2] * box[3]),
            )
        )
    logger.info(
        "%s: %d detections kept, %d below score threshold %.2f",
        file,
        len(records),
        kept_below,
        score_threshold,
    )
    return records
