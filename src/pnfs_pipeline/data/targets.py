"""Gaussian heatmap targets with per-joint weights."""

from __future__ import annotations

import numpy as np


def gaussian_heatmaps(
    keypoints: np.ndarray,
    heatmap_size: tuple[int, int],
    sigma: float,
    joint_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``(K, H, W)`` unit-peak Gaussians at sub-pixel keypoint positions.

    ``keypoints`` is ``(K, 3)`` in heatmap pixels with a visibility column. The Gaussian is centred
    on the exact position (not rounded to a pixel as in the reference code), so decoding can be
    checked to sub-pixel accuracy. A joint gets weight 0 when it is not labelled or when its
    3-sigma patch lies wholly outside the map, as in the reference code; its map stays zero.
    """
    width, height = heatmap_size
    num = keypoints.shape[0]
    x, y, vis = keypoints[:, 0:1], keypoints[:, 1:2], keypoints[:, 2]
    reach = 3.0 * sigma
    inside = (x[:, 0] + reach >= 0) & (y[:, 0] + reach >= 0) & (x[:, 0] - reach < width) & (
        y[:, 0] - reach < height
    )
    weight = ((vis > 0) & inside).astype(np.float32)
    gx = np.exp(-((np.arange(width)[None, :] - x) ** 2) / (2.0 * sigma**2))
    gy = np.exp(-((np.arange(height)[None, :] - y) ** 2) / (2.0 * sigma**2))
    heatmaps = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)
    heatmaps *= weight[:, None, None]
    if joint_weights is not None:
        weight = weight * np.asarray(joint_weights, dtype=np.float32).reshape(num)
    return heatmaps, weight
