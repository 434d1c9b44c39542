"""Nodes of the ``predict`` pipeline."""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pnfs_pipeline.config import PredictParams, SampleParams, parse_params
from pnfs_pipeline.data.coco import load_json
from pnfs_pipeline.data.dataset import ImageReadError, TopDownDataset
from pnfs_pipeline.engine.trainer import resolve_device
from pnfs_pipeline.evaluation.coco_eval import rescore
from pnfs_pipeline.evaluation.images import DecodedImages, image_samples
from pnfs_pipeline.evaluation.predict import predict_dataset
from pnfs_pipeline.keypoints import keypoint_spec_from_dict
from pnfs_pipeline.nas.derived import network_from_checkpoint
from pnfs_pipeline.viz.skeleton import plot_people_overlay

logger = logging.getLogger(__name__)


def _stem(name: str) -> str:
    """The image's path under the folder without its extension."""
    return str(PurePosixPath(name).with_suffix(""))


def _overlay_name(name: str, stems: collections.Counter) -> str:
    """The image's stem, or stem and extension where two images share a stem (a.jpg, a.png); an
    image in a subfolder keeps its subfolder."""
    stem = _stem(name)
    return stem if stems[stem] == 1 else f"{stem}_{PurePosixPath(name).suffix.lstrip('.')}"


def _overlay(images: DecodedImages, name: str, people: list[np.ndarray], spec: Any, vis_threshold: float) -> Figure:
    return plot_people_overlay(images[name], people, spec, name, vis_threshold)


def _visible(name: str) -> bool:
    """Not a hidden file or folder (the folder's .gitkeep, a .DS_Store)."""
    return not any(part.startswith(".") for part in PurePosixPath(name).parts)


def _is_image_file(name: str) -> bool:
    """A file name with an extension Pillow reads (a boxes file or notes may share the folder)."""
    return PurePosixPath(name).suffix.lower() in Image.registered_extensions()


def _decoder(name: str, load: Callable[[], Any]) -> Callable[[], np.ndarray]:
    def decode() -> np.ndarray:
        try:
            return np.asarray(load().convert("RGB"))
        except Exception as error:  # Kedro's DatasetError, or Pillow's on a truncated file
            raise ImageReadError(f"predict_images/{name}: cannot be read as an image ({error})") from error

    return decode


def predict_images(
    images: dict[str, Callable[[], Any]], retrained_checkpoint: dict[str, Any], predict: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Callable[[], Figure]]]:
    """Keypoints (COCO results format, plus each image's file name) and one overlay per image
    with people (with a boxes file, images without a box get neither). Images are decoded when
    needed and overlays drawn as they are saved, so the folder need not fit in memory."""
    params = parse_params(PredictParams, predict, "predict")
    # Images are named by their path under the folder, so a/1.jpg and b/1.jpg stay apart.
    images = {name: load for name, load in images.items() if _visible(name)}
    others = sorted(name for name in images if not _is_image_file(name))
    if others:
        logger.warning(
            "predict: %d file(s) without an image extension left out: %s%s",
            len(others), ", ".join(others[:5]), " ..." if len(others) > 5 else "",
        )
    images = {name: load for name, load in images.items() if _is_image_file(name)}
    if not images:
        raise ValueError("no images to predict on: put images in data/01_raw/predict_images (see README)")
    # A batch's images stay decoded while every crop scale reads them; each image is decoded
    # once more for its size (without a boxes file) and once for its overlay.
    loaded = DecodedImages(
        {name: _decoder(name, load) for name, load in sorted(images.items())}, keep=params.batch_size + 1
    )
    network = network_from_checkpoint(retrained_checkpoint, "retrained_checkpoint")
    config = retrained_checkpoint["config"]
    spec = keypoint_spec_from_dict(config["keypoint_spec"], source="retrained_checkpoint")
    sample = parse_params(SampleParams, config["sample"], "sample")
    boxes = load_json(params.boxes_file) if params.boxes_file else None
    index = image_samples(loaded, boxes, spec, sample.aspect_ratio, sample.box_padding, params.boxes_file or "")
    dataset = TopDownDataset(index, sample, None, images=loaded)
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
    scores = rescore(predictions["keypoints"], predictions["scores"], params.vis_threshold)
    results, per_image = [], {}
    for i, sample_index in enumerate(predictions["indices"].astype(int)):
        record = index["samples"][sample_index]
        results.append(
            {
                "image_id": record["image_id"],
                "file_name": record["image"],
                "category_id": 1,
                "keypoints": [round(float(v), 3) for v in predictions["keypoints"][i].reshape(-1)],
                "score": float(scores[i]),
            }
        )
        per_image.setdefault(record["image"], []).append(predictions["keypoints"][i])
    stems = collections.Counter(_stem(name) for name in loaded)
    overlays = {
        _overlay_name(name, stems): functools.partial(
            _overlay, loaded, name, people, spec, params.vis_threshold
        )
        for name, people in per_image.items()
    }
    logger.info("predicted %d people in %d images", len(results), len(loaded))
    return results, overlays

