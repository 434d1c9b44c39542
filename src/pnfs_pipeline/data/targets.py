"""Gaussian heatmap targets with per-joint weights."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pnfs_pipeline.keypoints import KeypointSpec


def keypoint_sigmas(
    spec: KeypointSpec,
    sigma: float,
    overrides: Mapping[str, float],
    parameter: str = "sample.keypoint_sigmas",
) -> np.ndarray:
    """The target sigma of each keypoint: ``sigma``, except where ``overrides`` names it.

    An override key is a keypoint name or the name of a part in any of the spec's groupings
    (``head``, ``lower_limb``...); a keypoint's own name wins over its part. Keypoints differ in
    how precisely they can be placed (COCO scores a nose 4x more strictly than a hip), and the
    part-specific fabrics of PNFS can each learn their own target width. ``parameter`` names the
    overrides' source in error messages.
    """
    groups: dict[str, tuple[int, ...]] = {}
    for grouping in spec.parts.values():
        groups.update(grouping)
    values = np.full(spec.num_keypoints, float(sigma))
    set_by: dict[int, str] = {}
    for name, value in sorted(overrides.items(), key=lambda item: item[0] in spec.keypoints):
        if name in spec.keypoints:
            indices: tuple[int, ...] = (spec.index(name),)
        elif name in groups:
            indices = groups[name]
        else:
            raise ValueError(
                f"{parameter}: {name!r} is neither a keypoint nor a part of spec {spec.name!r}; "
                f"keypoints: {list(spec.keypoints)}, parts: {sorted(groups)}"
            )
        if not value > 0:
            raise ValueError(f"{parameter}.{name} must be > 0, got {value}")
        for index in indices:
            previous = set_by.get(index)
            if previous in groups and name in groups and values[index] != value:
                raise ValueError(
                    f"{parameter}: parts {previous!r} and {name!r} both hold "
                    f"{spec.keypoints[index]!r} with different sigmas; name the keypoint itself"
                )
            values[index] = value
            set_by[index] = name
    return values


def gaussian_heatmaps(
    keypoints: np.ndarray,
    heatmap_size: tuple[int, int],
    sigma: float | np.ndarray,
    joint_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``(K, H, W)`` unit-peak Gaussians at sub-pixel keypoint positions.

    ``keypoints`` is ``(K, 3)`` in heatmap pixels with a visibility column; ``sigma`` is one value
    for all keypoints or one per keypoint (``(K,)``, see :func:`keypoint_sigmas`). The Gaussian is centred
    on the exact position (not rounded to a pixel as in the reference code), so decoding can be
    checked to sub-pixel accuracy. A joint gets weight 0 when it is not labelled or when its
    3-sigma patch lies wholly outside the map, as in the reference code; its map stays zero.
    """
    width, height = heatmap_size
    num = keypoints.shape[0]
    x, y, vis = keypoints[:, 0:1], keypoints[:, 1:2], keypoints[:, 2]
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (num,))
    reach = 3.0 * sigma
    inside = (x[:, 0] + reach >= 0) & (y[:, 0] + reach >= 0) & (x[:, 0] - reach < width) & (
        y[:, 0] - reach < height
    )
    weight = ((vis > 0) & inside).astype(np.float32)
    spread = 2.0 * sigma[:, None] ** 2
    gx = np.exp(-((np.arange(width)[None, :] - x) ** 2) / spread)
    gy = np.exp(-((np.arange(height)[None, :] - y) ** 2) / spread)
    heatmaps = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
    heatmaps *= weight[:, None, None]
    if joint_weights is not None:
        weight = weight * np.asarray(joint_weights, dtype=np.float32).reshape(num)
    return heatmaps, weight
