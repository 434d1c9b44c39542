"""Nodes of the ``evaluate`` pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pnfs_pipeline.config import EvaluateParams, SampleParams, parse_params
from pnfs_pipeline.data.dataset import TopDownDataset, read_rgb_image
from pnfs_pipeline.engine.checkpoint import load_checkpoint
from pnfs_pipeline.engine.trainer import resolve_device
from pnfs_pipeline.evaluation.coco_eval import rescore
from pnfs_pipeline.evaluation.predict import predict_dataset
from pnfs_pipeline.evaluation.report import score_coco, score_mpii
from pnfs_pipeline.keypoints import check_same_keypoints, keypoint_spec_from_dict
from pnfs_pipeline.nas.derived import describe_checkpoint_network, network_from_checkpoint
from pnfs_pipeline.pipelines.tracking import log_metrics
from pnfs_pipeline.viz.skeleton import plot_prediction_overlays

logger = logging.getLogger(__name__)


def predict_validation(
    retrained_checkpoint: dict[str, Any],
    val_samples: dict[str, Any],
    val_detection_samples: dict[str, Any],
    evaluate: dict[str, Any],
    sample: dict[str, Any],
) -> dict[str, Any]:
    """Keypoints for every validation crop (ground-truth or detected boxes)."""
    params = parse_params(EvaluateParams, evaluate, "evaluate")
    checkpoint = load_checkpoint(params.checkpoint) if params.checkpoint else retrained_checkpoint
    source = params.checkpoint or "retrained_checkpoint"
    network = network_from_checkpoint(checkpoint, source)
    samples = val_samples if params.boxes == "ground_truth" else val_detection_samples
    if not samples["samples"]:
        raise ValueError(f"no validation samples with {params.boxes} boxes (see the prepare pipeline's data summary)")
    check_same_keypoints(
        checkpoint["config"].get("keypoint_spec"),
        samples["keypoint_spec"],
        source,
        "val_samples" if params.boxes == "ground_truth" else "val_detection_samples",
    )
    sample_params = parse_params(SampleParams, checkpoint["config"].get("sample", sample), "sample")
    dataset = TopDownDataset(samples, sample_params, None)
    predictions = predict_dataset(
        network,
        dataset,
        batch_size=params.batch_size,
        flip_test=params.flip_test,
        decode=params.decode,
        dark_kernel=params.dark_kernel,
        device=resolve_device(params.device),
        flip_shift=params.flip_shift,
        crop_scales=params.crop_scales,
    )
    return {
        "boxes": params.boxes,
        "source": params.checkpoint or "retrained_checkpoint",
        "num_parts": _num_parts(checkpoint),
        "network": describe_checkpoint_network(checkpoint),
        "flip_test": params.flip_test,
        "flip_shift": params.flip_shift if params.flip_test else None,
        **{key: value.tolist() for key, value in predictions.items()},
    }


def _num_parts(checkpoint: dict[str, Any]) -> int | None:
    """The body-part grouping the scored network was built with (per-part AP follows it)."""
    config = checkpoint.get("config", {})
    if isinstance(config.get("genotype"), dict):
        return len(config["genotype"]["parts"])
    return (config.get("model") or {}).get("num_parts")


def score_predictions(
    predictions: dict[str, Any],
    val_ground_truth: dict[str, Any],
    val_samples: dict[str, Any],
    evaluate: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO AP (overall, per keypoint, per part) or the MPII PCKh table; logged to MLflow."""
    params = parse_params(EvaluateParams, evaluate, "evaluate")
    spec = keypoint_spec_from_dict(val_samples["keypoint_spec"], source="val_samples")
    arrays = {k: np.asarray(predictions[k]) for k in ("keypoints", "scores", "areas", "image_ids", "indices")}
    if val_ground_truth["format"] == "mpii":
        metrics, results = score_mpii(arrays, val_samples["samples"], spec), []
    else:
        metrics, results = score_coco(
            arrays,
            val_ground_truth,
            spec,
            predictions["num_parts"],
            params.vis_threshold,
            params.nms,
            params.nms_threshold,
        )
    metrics["boxes"] = predictions["boxes"]
    metrics["checkpoint"] = predictions.get("source", "retrained_checkpoint")
    metrics["network"] = predictions.get("network")
    # How the predictions were made, from them: score_predictions may run alone with other parameters.
    metrics["flip_test"] = predictions.get("flip_test")
    metrics["flip_shift"] = predictions.get("flip_shift")
    logger.info("evaluation (%s boxes): %s", predictions["boxes"], metrics["overall"])
    log_metrics(metrics["overall"], prefix="eval_")
    return metrics, results


def plot_validation_overlays(
    predictions: dict[str, Any], val_samples: dict[str, Any], val_detection_samples: dict[str, Any], evaluate: dict[str, Any]
) -> Figure:
    """A few validation images with predicted and true skeletons."""
    params = parse_params(EvaluateParams, evaluate, "evaluate")
    samples = val_samples if predictions["boxes"] == "ground_truth" else val_detection_samples
    spec = keypoint_spec_from_dict(samples["keypoint_spec"], source="val_samples")
    keypoints = np.asarray(predictions["keypoints"])
    indices = np.asarray(predictions["indices"], dtype=int)
    # The rescored confidence COCO ranks people by: box score x the mean confidence of the
    # keypoints above vis_threshold (the results file's with nms: oks or none; soft NMS lowers
    # overlapping people's further, and NMS may have dropped a person drawn here).
    scores = rescore(keypoints, np.asarray(predictions["scores"]), params.vis_threshold)
    rng = np.random.default_rng(params.seed)
    chosen = sorted(rng.choice(len(indices), size=min(params.num_overlays, len(indices)), replace=False).tolist())
    images, preds, truths, titles = [], [], [], []
    for i in chosen:
        record = samples["samples"][indices[i]]
        images.append(read_rgb_image(Path(samples["image_root"]) / record["image"]))
        preds.append(keypoints[i])
        truth = np.asarray(record["keypoints"], dtype=float)
        truths.append(truth if truth[:, 2].any() else None)
        titles.append(f"image {record['image_id']}, score {scores[i]:.2f}")
    return plot_prediction_overlays(images, preds, truths, spec, titles, params.vis_threshold)
