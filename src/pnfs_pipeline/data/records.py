"""Person records shared by every reader, and the bookkeeping of bad input.

Every reader (COCO, MPII, detections) turns its file format into the same *person record*: one
dict per person crop with plain JSON types, so sample indexes can be persisted and read back by
later pipelines. Records that cannot be trusted are never silently turned into samples: they are
reported as :class:`BadRecord` entries, and a :class:`BadRecordLog` either skips them (counting
them) or fails on the first one, as the user asked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict

logger = logging.getLogger(__name__)

OnBadRecord = Literal["skip", "fail"]


class PersonRecord(TypedDict):
    """One person crop. Coordinates are 0-based pixels of the original image."""

    image: str  # path relative to the index's image_root
    image_id: int
    record_id: int  # annotation id (COCO), entry index (MPII), detection index (detections)
    center: list[float]  # crop center [x, y]
    size: list[float]  # crop [width, height] in pixels, already padded and at the input aspect
    keypoints: list[list[float]]  # K x [x, y, visibility]; visibility 0 = not labelled
    score: float  # 1.0 for ground truth, the detector's score for detections
    area: float  # COCO area (used by OKS); box area for other sources


@dataclass(frozen=True)
class BadRecord:
    file: str
    record_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} [record {self.record_id}]: {self.reason}"


class BadInputError(ValueError):
    """Raised on the first bad record when ``on_bad_record`` is ``fail``, or on a bad file."""


@dataclass
class BadRecordLog:
    """Collects bad records; raises at once in ``fail`` mode."""

    on_bad_record: OnBadRecord = "skip"
    records: list[BadRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("skip", "fail"):
            raise ValueError(
                f"on_bad_record must be 'skip' or 'fail', got {self.on_bad_record!r}"
            )

    def add(self, file: str, record_id: Any, reason: str) -> None:
        bad = BadRecord(file=str(file), record_id=str(record_id), reason=reason)
        if self.on_bad_record == "fail":
            raise BadInputError(f"bad record (on_bad_record=fail): {bad}")
        self.records.append(bad)

    def report(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for bad in self.records:
            key = bad.reason.split(":")[0]  # every reason reads 'kind: detail'
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "num_bad_records": len(self.records),
            "by_reason": dict(sorted(reasons.items())),
            "records": [asdict(b) for b in self.records],
        }

    def warn_if_any(self, what: str) -> None:
        if self.records:
            logger.warning(
                "%s: skipped %d bad record(s); first: %s (the validation report lists all)",
                what,
                len(self.records),
                self.records[0],
            )


def all_finite(values: Any) -> bool:
    """True when a (nested) list of numbers holds no NaN or infinity and no non-numbers."""
    if isinstance(values, list | tuple):
        return all(all_finite(v) for v in values)
    return isinstance(values, int | float) and not isinstance(values, bool) and math.isfinite(values)


def box_to_center_size(
    box: list[float], aspect_ratio: float, padding: float
) -> tuple[list[float], list[float]]:
    """Crop center and size for an [x, y, w, h] box at ``aspect_ratio`` (width / height).

    The shorter side is grown to the input aspect ratio so the warp never distorts a person,
    then both sides are padded (x1.25 in the top-down literature) to keep context around limbs.
    """
    x, y, w, h = box
    center = [x + w * 0.5, y + h * 0.5]
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, [w * padding, h * padding]
