"""Top-down geometry: the crop warp, its inverse, flips and the training augmentation.

A crop is a (center, size, rotation) triple in original-image pixels; ``crop_affine`` maps it onto
the network input. Keeping the warp a single explicit matrix (rather than the three-point fit of
the reference code) makes round trips exact and lets evaluation map predictions back with the
same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pnfs_pipeline.config import AugmentationParams


def crop_affine(
    center: np.ndarray | list[float],
    size: np.ndarray | list[float],
    rotation_deg: float,
    output_size: tuple[int, int],
) -> np.ndarray:
    """2x3 matrix taking image pixels to output pixels (``output_size`` is width, height).

    The crop ``size`` (width, height) is scaled to the output width; callers keep the crop at the
    output aspect ratio so that no axis is stretched. Positive rotation turns the content
    counter-clockwise, as ``cv2.getRotationMatrix2D`` does.
    """
    out_w, out_h = output_size
    scale = out_w / float(size[0])
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta) * scale, math.sin(theta) * scale
    cx, cy = float(center[0]), float(center[1])
    return np.array(
        [
            [cos, sin, out_w * 0.5 - cos * cx - sin * cy],
            [-sin, cos, out_h * 0.5 + sin * cx - cos * cy],
        ],
        dtype=np.float64,
    )


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to an ``(N, 2)`` (or ``(..., 2)``) array of points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    return cv2.warpAffine(
        image, matrix, output_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def mirrored_affine(matrix: np.ndarray, image_width: int) -> np.ndarray:
    """``matrix`` applied after mirroring an image of ``image_width`` pixels (x -> W - 1 - x)."""
    mirrored = matrix.copy()
    mirrored[:, 0] = -matrix[:, 0]
    mirrored[:, 2] = matrix[:, 2] + matrix[:, 0] * (image_width - 1)
    return mirrored


def flip_keypoints(keypoints: np.ndarray, image_width: int, flip_permutation: np.ndarray) -> np.ndarray:
    """Mirror ``(K, 3)`` keypoints about the vertical axis and swap left/right partners."""
    flipped = keypoints.copy()
    flipped[:, 0] = image_width - 1 - keypoints[:, 0]
    flipped = flipped[flip_permutation]
    # A not-labelled point stays at (0, 0) so it cannot be mistaken for a labelled one.
    flipped[flipped[:, 2] <= 0, :2] = 0.0
    return flipped


def half_body_crop(
    keypoints: np.ndarray,
    upper_body: tuple[int, ...],
    lower_body: tuple[int, ...],
    aspect_ratio: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop around the visible upper or lower body only (HRNet's half-body augmentation).

    As HRNet draws it: the upper body when a standard normal draw is below 0.5 (69%) and more
    than two of its joints are visible, else the lower body if more than two of its joints are,
    else the upper body; None when the chosen half has fewer than two visible joints or they
    span no area (a crop of size 0 cannot be warped).
    """
    visible = keypoints[:, 2] > 0
    upper = [i for i in upper_body if visible[i]]
    lower = [i for i in lower_body if visible[i]]
    if rng.normal() < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    points = keypoints[chosen, :2]
    center = points.mean(axis=0)
    width, height = points.max(axis=0) - points.min(axis=0)
    if max(width, height) <= 0:
        return None
    if width > aspect_ratio * height:
        height = width / aspect_ratio
    else:
        width = height * aspect_ratio
    # Limbs extend beyond their joints: the reference code pads half-body crops by 1.5.
    return center, np.array([width, height]) * 1.5


@dataclass(frozen=True)
class CropParams:
    center: np.ndarray
    size: np.ndarray
    rotation: float
    flipped: bool


def sample_augmentation(
    keypoints: np.ndarray,
    center: np.ndarray,
    size: np.ndarray,
    params: AugmentationParams,
    upper_body: tuple[int, ...],
    lower_body: tuple[int, ...],
    aspect_ratio: float,
    rng: np.random.Generator,
) -> CropParams:
    """Draw half-body, scale, rotation and flip for one training sample."""
    center, size = np.asarray(center, dtype=np.float64), np.asarray(size, dtype=np.float64)
    num_visible = int((keypoints[:, 2] > 0).sum())
    if num_visible > params.half_body_min_joints and rng.random() < params.half_body_prob:
        half = half_body_crop(keypoints, upper_body, lower_body, aspect_ratio, rng)
        if half is not None:
            center, size = half
    sf, rf = params.scale_factor, params.rotation_factor
    size = size * float(np.clip(rng.normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
    rotation = 0.0
    if rng.random() < params.rotation_prob:
        rotation = float(np.clip(rng.normal() * rf, -2.0 * rf, 2.0 * rf))
    flipped = bool(params.flip and rng.random() < 0.5)
    return CropParams(center=center, size=size, rotation=rotation, flipped=flipped)
