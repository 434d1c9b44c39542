"""From a raw dataset folder to validated sample indexes (the library behind ``prepare``).

Three steps, each a plain function so a notebook can run them without Kedro:
``locate_raw_data`` finds the files of the standard layouts, ``validate_raw_data`` reads them and
sets bad records aside, ``build_sample_indexes`` turns the rest into persisted top-down samples.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pnfs_pipeline.config import DataParams, SampleParams
from pnfs_pipeline.data.coco import CocoSplit, coco_person_records, read_coco_split
from pnfs_pipeline.data.detections import read_detection_records
from pnfs_pipeline.data.mpii import read_mpii_ground_truth, read_mpii_records
from pnfs_pipeline.data.records import BadRecordLog, PersonRecord
from pnfs_pipeline.keypoints import KeypointSpec

logger = logging.getLogger(__name__)

MPII_SPLIT_FILES = {"train": "train.json", "val": "valid.json"}


def locate_raw_data(data: DataParams) -> dict[str, Any]:
    """Paths of the annotation files and image folders under ``data.root``, checked to exist.

    COCO layout: ``annotations/person_keypoints_<split>.json``, ``images/<split>/``,
    ``person_detection_results/*.json``. MPII (HRNet) layout: ``annot/{train,valid}.json``,
    ``annot/gt_valid.mat``, ``images/``.
    """
    root = Path(data.layout_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root {root} is not a folder; point data.root at the dataset (see README: data layouts)"
        )
    if data.layout == "mpii":
        manifest = {
            "format": "mpii",
            "root": str(root),
            "train": {"annotations": str(root / "annot" / MPII_SPLIT_FILES["train"]), "images": str(root / "images")},
            "val": {"annotations": str(root / "annot" / MPII_SPLIT_FILES["val"]), "images": str(root / "images")},
            "ground_truth": str(root / "annot" / "gt_valid.mat"),
            "detections": None,
        }
    else:
        manifest = {
            "format": "coco",
            "root": str(root),
            "train": {
                "annotations": str(root / "annotations" / f"person_keypoints_{data.train_split}.json"),
                "images": str(root / "images" / data.train_split),
            },
            "val": {
                "annotations": str(root / "annotations" / f"person_keypoints_{data.val_split}.json"),
                "images": str(root / "images" / data.val_split),
            },
            "ground_truth": None,
            "detections": _find_detections(root, data),
        }
    for split in ("train", "val"):
        for kind in ("annotations", "images"):
            if not Path(manifest[split][kind]).exists():
                raise FileNotFoundError(
                    f"{manifest[split][kind]}: {split} {kind} not found under data.root={root} "
                    f"(expected the standard {manifest['format'].upper()} layout, see README)"
                )
    # PCKh needs its head boxes; without them evaluation would fail after search and retraining.
    if manifest["ground_truth"] and not Path(manifest["ground_truth"]).is_file():
        raise FileNotFoundError(
            f"{manifest['ground_truth']}: not found under data.root={root}; the MPII layout's validation "
            "ground truth (head boxes for PCKh) is read from it (see README)"
        )
    return manifest


def _find_detections(root: Path, data: DataParams) -> str | None:
    if data.detections_file:
        path = Path(data.detections_file)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"data.detections_file {path} not found")
        return str(path)
    candidates = sorted((root / "person_detection_results").glob("*.json"))
    named = [c for c in candidates if data.val_split in c.name]
    if named or len(candidates) <= 1:
        chosen = (named or candidates or [None])[0]
        if chosen is not None:
            logger.info("person detections: %s", chosen)
        return None if chosen is None else str(chosen)
    # Several files and none names the split (e.g. only test-dev boxes): guessing would score
    # the wrong split's boxes, every one a bad record.
    raise FileNotFoundError(
        f"{root / 'person_detection_results'}: none of {[c.name for c in candidates]} names the split "
        f"{data.val_split!r}; set data.detections_file"
    )


@dataclass
class ValidatedData:
    """Annotations that passed validation, per split, with the log of what did not."""

    format: str
    image_roots: dict[str, str]
    coco_splits: dict[str, CocoSplit] = field(default_factory=dict)
    records: dict[str, list[PersonRecord]] = field(default_factory=dict)
    log: BadRecordLog = field(default_factory=BadRecordLog)


def validate_raw_data(
    manifest: dict[str, Any], spec: KeypointSpec, data: DataParams, sample: SampleParams
) -> ValidatedData:
    """Read every annotation file of ``manifest``; bad records are logged (or raise, in fail mode)."""
    log = BadRecordLog(data.on_bad_record)
    validated = ValidatedData(
        format=manifest["format"],
        image_roots={s: manifest[s]["images"] for s in ("train", "val")},
        log=log,
    )
    k = spec.num_keypoints
    if manifest["format"] == "mpii":
        ground_truth = read_mpii_ground_truth(manifest["ground_truth"], k)
        for split in ("train", "val"):
            validated.records[split] = read_mpii_records(
                manifest[split]["annotations"],
                manifest[split]["images"],
                k,
                sample.aspect_ratio,
                sample.box_padding,
                log,
                data.check_images,
                ground_truth=ground_truth if split == "val" else None,
            )
    else:
        for split in ("train", "val"):
            coco_split = read_coco_split(
                manifest[split]["annotations"], manifest[split]["images"], k, log, data.check_images
            )
            validated.coco_splits[split] = coco_split
            validated.records[split] = coco_person_records(
                coco_split, sample.aspect_ratio, sample.box_padding, log
            )
        if manifest.get("detections"):
            validated.records["val_detections"] = read_detection_records(
                manifest["detections"],
                validated.coco_splits["val"],
                k,
                sample.aspect_ratio,
                sample.box_padding,
                data.detection_score_threshold,
                log,
            )
    log.warn_if_any("validate")
    return validated


def _index(name: str, image_root: str, spec: KeypointSpec, samples: list[PersonRecord]) -> dict[str, Any]:
    return {
        "dataset": name,
        "image_root": image_root,
        "keypoint_spec": spec.to_dict(),
        "num_samples": len(samples),
        "samples": samples,
    }


def _limit(samples: list[PersonRecord], limit: int | None, seed: int) -> list[PersonRecord]:
    if limit is None or len(samples) <= limit:
        return samples
    keep = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
    return [samples[i] for i in keep]


def _limit_by_image(samples: list[PersonRecord], limit: int | None, seed: int) -> list[PersonRecord]:
    """Every person of whole images, taken in a seeded random order while the people stay within
    ``limit`` (at least one image).

    Evaluation scores every annotated person of the images it is given: an image sampled in part
    would count its left-out people as misses (and lower AP), so validation is limited by image.
    """
    if limit is None or len(samples) <= limit:
        return samples
    people = Counter(s["image_id"] for s in samples)
    order = np.random.default_rng(seed).permutation(sorted(people))
    kept: set[int] = set()
    total = 0
    for image_id in order.tolist():
        if kept and total + people[image_id] > limit:
            continue
        kept.add(image_id)
        total += people[image_id]
    return [s for s in samples if s["image_id"] in kept]


def build_sample_indexes(
    validated: ValidatedData, spec: KeypointSpec, data: DataParams
) -> dict[str, dict[str, Any]]:
    """Sample indexes for training, validation (ground-truth boxes) and detected boxes."""
    train = _limit(validated.records["train"], data.max_train_samples, seed=data.subset_seed)
    val = _limit_by_image(validated.records["val"], data.max_val_samples, seed=data.subset_seed + 1)
    val_images = {s["image_id"] for s in val}
    # Detections are scored against the ground truth's images (ground_truth_for_evaluation): the
    # whole split, people or not (a box on an image without people is a false positive), or the
    # images of a limited validation.
    detections = validated.records.get("val_detections", [])
    limited = len(val) < len(validated.records["val"])
    if limited:
        detections = [s for s in detections if s["image_id"] in val_images]
        logger.info(
            "data.max_val_samples=%d: %d validation people of %d whole images (evaluation scores those images only)",
            data.max_val_samples, len(val), len(val_images),
        )
    indexes = {
        "train": _index(f"{spec.name}-train", validated.image_roots["train"], spec, train),
        "val": _index(f"{spec.name}-val", validated.image_roots["val"], spec, val),
        "val_detections": _index(
            f"{spec.name}-val-detections",
            validated.image_roots["val"],
            spec,
            detections,
        ),
    }
    for name, index in indexes.items():
        logger.info("sample index %s: %d samples", name, index["num_samples"])
    if not train:
        raise ValueError("no valid training samples remain after validation (see the validation report)")
    return indexes


def ground_truth_for_evaluation(
    validated: ValidatedData, val_index: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The cleaned validation ground truth: COCO JSON (MPII's travels in the validation samples).

    With ``val_index`` (the validation sample index), only the images it samples: an index limited
    by ``data.max_val_samples`` is scored against its own images, not the whole split.
    """
    records = validated.records["val"]
    limited = val_index is not None and len(val_index["samples"]) < len(records)
    if validated.format == "coco":
        truth = validated.coco_splits["val"].to_coco_dict()
        if limited:
            kept = {s["image_id"] for s in val_index["samples"]}
            truth["images"] = [image for image in truth["images"] if image["id"] in kept]
            truth["annotations"] = [a for a in truth["annotations"] if a["image_id"] in kept]
        return {"format": "coco", **truth}
    # PCKh scores the validation samples themselves, which carry gt_valid.mat's joints and head boxes.
    return {"format": "mpii"}


def summarize_indexes(indexes: dict[str, dict[str, Any]], spec: KeypointSpec) -> dict[str, Any]:
    """Counts and the per-keypoint visibility histogram of each index."""
    summary: dict[str, Any] = {"keypoint_spec": spec.name, "num_keypoints": spec.num_keypoints}
    for name, index in indexes.items():
        samples = index["samples"]
        if not samples:
            summary[name] = {"num_samples": 0}
            continue
        vis = np.array([[kp[2] for kp in s["keypoints"]] for s in samples])
        sizes = np.array([s["size"] for s in samples])
        summary[name] = {
            "num_samples": len(samples),
            "num_images": len({s["image_id"] for s in samples}),
            "visibility_histogram": {
                str(flag): int((vis == flag).sum()) for flag in (0, 1, 2)
            },
            "per_keypoint_labelled": {
                spec.keypoints[k]: int((vis[:, k] > 0).sum()) for k in range(spec.num_keypoints)
            },
            "mean_labelled_keypoints": float((vis > 0).sum(axis=1).mean()),
            "crop_height_px": {
                "min": float(sizes[:, 1].min()),
                "median": float(np.median(sizes[:, 1])),
                "max": float(sizes[:, 1].max()),
            },
        }
    return summary
