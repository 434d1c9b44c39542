"""Scores of predictions against the validation ground truth (COCO AP or MPII PCKh)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pnfs_pipeline.evaluation.coco_eval import coco_results, evaluate_coco
from pnfs_pipeline.evaluation.pckh import pckh_table
from pnfs_pipeline.keypoints import KeypointSpec
from pnfs_pipeline.progress import progress_bar


def score_coco(
    predictions: dict[str, np.ndarray],
    ground_truth: dict[str, Any],
    spec: KeypointSpec,
    num_parts: int | None,
    vis_threshold: float = 0.2,
    nms: str = "oks",
    nms_threshold: float = 0.9,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO statistics overall, per keypoint and per part, plus the results list."""
    sigmas = np.asarray(spec.sigmas)
    results = coco_results(
        predictions["keypoints"],
        predictions["scores"],
        predictions["areas"],
        predictions["image_ids"],
        sigmas,
        vis_threshold,
        nms,
        nms_threshold,
    )
    parts = spec.body_parts(num_parts) if num_parts and num_parts in spec.parts else {}
    # One COCOeval over all keypoints, then one per keypoint and per part (~10 s each on COCO val).
    with progress_bar() as progress:
        task = progress.add_task("COCO evaluation", total=1 + len(spec.keypoints) + len(parts))

        def evaluate(keypoints: list[int] | None) -> dict[str, float]:
            scores = evaluate_coco(ground_truth, results, sigmas, keypoints)
            progress.advance(task)
            return scores

        metrics: dict[str, Any] = {"overall": evaluate(None)}
        metrics["per_keypoint_AP"] = {name: evaluate([k])["AP"] for k, name in enumerate(spec.keypoints)}
        if parts:
            metrics["per_part_AP"] = {part: evaluate(list(keypoints))["AP"] for part, keypoints in parts.items()}
    return metrics, results


def score_mpii(
    predictions: dict[str, np.ndarray], samples: list[dict[str, Any]], spec: KeypointSpec
) -> dict[str, Any]:
    """The PCKh table for predictions aligned with ``samples`` (which carry head boxes)."""
    order = predictions["indices"].astype(int)
    records = [samples[i] for i in order]
    if any("head_box" not in r for r in records):
        raise ValueError("MPII scoring needs head boxes (annot/gt_valid.mat) in the validation samples")
    # gt_valid.mat's joints where the records carry them (HRNet's protocol), else the JSON's
    truth = np.asarray([r.get("scored_keypoints", r["keypoints"]) for r in records], dtype=float)
    table = pckh_table(
        predictions["keypoints"][..., :2],
        truth[..., :2],
        truth[..., 2] > 0,
        np.asarray([r["head_box"] for r in records], dtype=float),
        spec.pckh_groups,
        spec.pckh_mean_excludes,
    )
    table["per_joint"] = dict(zip(spec.keypoints, table["per_joint"], strict=True))
    # Sample indexes prepared before the reader took gt_valid.mat's joints fall back to the JSON's.
    scored_against = "gt_valid.mat" if all("scored_keypoints" in r for r in records) else "valid.json"
    return {
        "overall": {k: v for k, v in table.items() if k != "per_joint"},
        "per_keypoint_PCKh": table["per_joint"],
        "scored_against": scored_against,
    }
