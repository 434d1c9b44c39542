"""COCO-format keypoint annotations: validation, pycocotools index and top-down person records.

Works for COCO itself and for any dataset written in the COCO ``person_keypoints`` format (the
embedded synthetic set included); the keypoint count comes from the :class:`KeypointSpec`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pnfs_pipeline.data.records import (
    BadInputError,
    BadRecordLog,
    PersonRecord,
    all_finite,
    box_to_center_size,
)
from pnfs_pipeline.progress import track

logger = logging.getLogger(__name__)


def load_json(path: str | Path) -> Any:
    """Parse a JSON file, failing with the file name and the position of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: JSON file not found")
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise BadInputError(
            f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error
    except UnicodeDecodeError as error:
        raise BadInputError(f"{path}: not a UTF-8 JSON file: {error}") from error


def image_is_readable(path: Path, mode: str, expected_size: tuple[int, int] | None = None) -> str | None:
    """``None`` when the image can be used, else the reason it cannot.

    ``decode`` decodes the file (a JPEG at 1/8 of its resolution, a fraction of a full decode's
    cost) with Pillow, which, unlike OpenCV, fails on a truncated file instead of filling the
    missing rows with grey; with ``expected_size`` (width, height: the annotation file's) the
    stored pixel size must match it. Sizes are those of the stored pixels, as COCO's annotations
    and the training reader use them: EXIF orientation is not applied.
    """
    if not path.is_file():
        return "missing image file"
    if path.stat().st_size == 0:
        return "empty image file"
    if mode != "decode":
        return None
    try:
        with Image.open(path) as image:
            size = image.size
            image.draft("L", (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's decoders raise these
        return f"corrupt image (cannot be decoded): {error}"
    if expected_size is not None and tuple(size) != tuple(expected_size):
        return (
            f"image size differs from the annotation file: {size[0]}x{size[1]} pixels, the file says "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return None


@dataclass
class CocoSplit:
    """The validated contents of one COCO keypoint annotation file."""

    annotation_file: str
    image_dir: str
    images: dict[int, dict[str, Any]] = field(default_factory=dict)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    categories: list[dict[str, Any]] = field(default_factory=list)

    def to_coco_dict(self) -> dict[str, Any]:
        """The cleaned ground truth in COCO format (what evaluation scores against)."""
        return {
            "images": list(self.images.values()),
            "annotations": self.annotations,
            "categories": self.categories,
        }


def _validate_images(
    raw_images: Any, file: str, image_dir: Path, log: BadRecordLog, check_images: str
) -> dict[int, dict[str, Any]]:
    if not isinstance(raw_images, list):
        raise BadInputError(f"{file}: 'images' must be a list")
    images: dict[int, dict[str, Any]] = {}
    seen_files: dict[str, int] = {}
    checking = track(raw_images, f"checking the images of {Path(file).name}")
    for position, image in enumerate(checking):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            log.add(file, f"images[{position}]", "malformed image entry: needs an integer 'id'")
            continue
        image_id = image["id"]
        name = image.get("file_name")
        if not isinstance(name, str) or not name:
            log.add(file, f"image {image_id}", "malformed image entry: needs a 'file_name'")
            continue
        if image_id in images:
            log.add(file, f"image {image_id}", "image referenced twice: duplicate image id")
            continue
        if name in seen_files:
            log.add(
                file,
                f"image {image_id}",
                f"image referenced twice: file {name} is also image {seen_files[name]}",
            )
            continue
        width, height = image.get("width"), image.get("height")
        if not all_finite([width, height]) or width <= 0 or height <= 0:
            log.add(file, f"image {image_id}", f"bad image size: {width}x{height}")
            continue
        problem = image_is_readable(image_dir / name, check_images, (width, height))
        if problem:
            log.add(file, f"image {image_id}", f"{problem}: {image_dir / name}")
            continue
        seen_files[name] = image_id
        images[image_id] = image
    return images


def _annotation_problem(
    annotation: dict[str, Any], images: dict[int, dict[str, Any]], num_keypoints: int
) -> str | None:
    image_id = annotation.get("image_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return f"malformed record: 'image_id' must be an integer, got {image_id!r}"
    if image_id not in images:
        return f"refers to unknown or rejected image: {image_id}"
    keypoints = annotation.get("keypoints")
    if not isinstance(keypoints, list):
        return "malformed record: 'keypoints' is not a list"
    if len(keypoints) != 3 * num_keypoints:
        return (
            f"wrong keypoint count: {len(keypoints)} values, expected {3 * num_keypoints} "
            f"({num_keypoints} keypoints x 3)"
        )
    if not all_finite(keypoints):
        return "NaN or non-numeric keypoint coordinates"
    if any(v not in (0, 1, 2) for v in keypoints[2::3]):
        return "keypoint visibility flags must be 0, 1 or 2"
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all_finite(bbox):
        return "malformed or NaN bbox"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"zero or negative box size: {bbox[2]}x{bbox[3]}"
    area = annotation.get("area", 0.0)
    if not all_finite([area]):
        return "NaN or non-numeric area"
    if area < 0:
        return f"negative area: {area}"
    if annotation.get("iscrowd", 0) not in (0, 1):
        return "iscrowd must be 0 or 1"
    return None


def read_coco_split(
    annotation_file: str | Path,
    image_dir: str | Path,
    num_keypoints: int,
    log: BadRecordLog,
    check_images: str = "decode",
) -> CocoSplit:
    """Read and validate a COCO keypoint file; bad records go to ``log``."""
    file = str(annotation_file)
    image_dir = Path(image_dir)
    data = load_json(annotation_file)
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise BadInputError(f"{file}: not a COCO annotation file (needs 'images' and 'annotations')")
    images = _validate_images(data["images"], file, image_dir, log, check_images)
    if not isinstance(data["annotations"], list):
        raise BadInputError(f"{file}: 'annotations' must be a list")
    annotations = []
    seen_ids: set[int] = set()
    for position, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("id"), int):
            log.add(file, f"annotations[{position}]", "malformed record: needs an integer 'id'")
            continue
        if annotation["id"] in seen_ids:
            log.add(file, annotation["id"], "duplicate annotation id")
            continue
        problem = _annotation_problem(annotation, images, num_keypoints)
        if problem:
            log.add(file, annotation["id"], problem)
            continue
        seen_ids.add(annotation["id"])
        annotation = dict(annotation)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
        annotation["num_keypoints"] = sum(1 for v in annotation["keypoints"][2::3] if v > 0)
        annotations.append(annotation)
    categories = data.get("categories") or [{"id": 1, "name": "person"}]
    logger.info(
        "%s: %d images, %d annotations valid", file, len(images), len(annotations)
    )
    return CocoSplit(file, str(image_dir), images, annotations, categories)


def clip_box(bbox: list[float], width: int, height: int) -> list[float] | None:
    """Clip an [x, y, w, h] box to the image's pixels; ``None`` when less than a pixel is left.

    The reference code measures the clipped box's far edge from the clipped near edge, which
    shifts a box that crosses the left or top border instead of cutting it; here the far edge is
    the box's own (COCO's ground-truth boxes lie inside their images, where both agree).
    """
    x, y, w, h = bbox
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y + max(0.0, h - 1.0))
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def coco_person_records(
    split: CocoSplit, aspect_ratio: float, padding: float, log: BadRecordLog
) -> list[PersonRecord]:
    """Ground-truth person crops: crowd and zero-keypoint people are dropped, boxes clipped."""
    records: list[PersonRecord] = []
    for annotation in split.annotations:
        if annotation["iscrowd"] or annotation["num_keypoints"] == 0:
            continue
        image = split.images[annotation["image_id"]]
        box = clip_box(annotation["bbox"], image["width"], image["height"])
        if box is None:
            log.add(split.annotation_file, annotation["id"], "box lies outside its image or is under a pixel wide")
            continue
        center, size = box_to_center_size(box, aspect_ratio, padding)
        values = annotation["keypoints"]
        keypoints = [
            [float(values[i]), float(values[i + 1]), float(values[i + 2])]
            for i in range(0, len(values), 3)
        ]
        records.append(
            PersonRecord(
                image=image["file_name"],
                image_id=annotation["image_id"],
                record_id=annotation["id"],
                center=center,
                size=size,
                keypoints=keypoints,
                score=1.0,
                area=float(annotation["area"]),
            )
        )
    return records
