"""Keypoints for arbitrary images: boxes from a file, or the whole image as the box."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from pnfs_pipeline.data.dataset import RecentImages
from pnfs_pipeline.data.records import BadInputError, all_finite, box_to_center_size
from pnfs_pipeline.keypoints import KeypointSpec

logger = logging.getLogger(__name__)


class DecodedImages(Mapping):
    """RGB images by name, decoded when asked for, the last ``keep`` of them kept: a folder of
    photos need not fit in memory at once (a 12-megapixel photo decodes to 36 MB)."""

    def __init__(self, loaders: Mapping[str, Callable[[], np.ndarray]], keep: int = 4) -> None:
        self._loaders = dict(loaders)
        self._recent = RecentImages(keep)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._recent.get(name, self._loaders[name])

    def __contains__(self, name: object) -> bool:  # without decoding (Mapping's would)
        return name in self._loaders

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def image_samples(
    images: Mapping[str, np.ndarray],
    boxes: list[dict[str, Any]] | None,
    spec: KeypointSpec,
    aspect_ratio: float,
    padding: float,
    boxes_source: str = "boxes file",
) -> dict[str, Any]:
    """A sample index over in-memory images; image ids follow the sorted file names."""
    names = sorted(images)
    ids = {name: i + 1 for i, name in enumerate(names)}
    samples = []
    if boxes is None:
        for name in names:
            height, width = images[name].shape[:2]
            # The whole image is the box: no padding, a person is assumed to fill it.
            center, size = box_to_center_size([0.0, 0.0, float(width), float(height)], aspect_ratio, 1.0)
            samples.append(_sample(name, ids[name], len(samples), center, size, 1.0, spec))
    else:
        if not isinstance(boxes, list):
            raise BadInputError(f"{boxes_source}: the top level must be a list of boxes, found a {type(boxes).__name__}")
        for position, box in enumerate(boxes):
            name = box.get("file_name") if isinstance(box, dict) else None
            if not isinstance(name, str) or name not in images:
                raise BadInputError(f"{boxes_source} [record {position}]: file_name {name!r} is not among the images")
            bbox, score = box.get("bbox"), box.get("score", 1.0)
            if not isinstance(bbox, list) or len(bbox) != 4 or not all_finite(bbox + [score]) or bbox[2] <= 0 or bbox[3] <= 0:
                raise BadInputError(f"{boxes_source} [record {position}]: bbox must be [x, y, w, h] with positive size")
            center, size = box_to_center_size(bbox, aspect_ratio, padding)
            samples.append(_sample(name, ids[name], position, center, size, float(score), spec))
        unboxed = sorted(set(names) - {sample["image"] for sample in samples})
        if unboxed:
            logger.warning("%s: no box for %d image(s), which get no keypoints: %s", boxes_source, len(unboxed), ", ".join(unboxed[:10]))
    return {"dataset": "images", "image_root": ".", "keypoint_spec": spec.to_dict(), "samples": samples}


def _sample(name, image_id, record_id, center, size, score, spec):
    return {
        "image": name,
        "image_id": image_id,
        "record_id": record_id,
        "center": center,
        "size": size,
        "keypoints": [[0.0, 0.0, 0.0]] * spec.num_keypoints,
        "score": score,
        "area": float(size[0] * size[1]),
    }
