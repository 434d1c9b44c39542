"""MPII PCKh: a joint is correct when it lies within a fraction of the head size (x 0.6)."""

from __future__ import annotations

from typing import Any

import numpy as np

HEAD_SIZE_FACTOR = 0.6


def head_sizes(head_boxes: np.ndarray) -> np.ndarray:
    """Head size per person from ``(N, 4)`` [x1, y1, x2, y2] boxes: box diagonal x 0.6."""
    return np.linalg.norm(head_boxes[:, 2:4] - head_boxes[:, 0:2], axis=1) * HEAD_SIZE_FACTOR


def pckh(
    predictions: np.ndarray,
    ground_truth: np.ndarray,
    visible: np.ndarray,
    head_boxes: np.ndarray,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint PCKh in percent ``(K,)`` and visible counts ``(K,)``.

    ``predictions`` and ``ground_truth`` are ``(N, K, 2)`` image coordinates; ``visible`` is
    ``(N, K)`` booleans (labelled joints only are scored).
    """
    errors = np.linalg.norm(predictions - ground_truth, axis=-1) / head_sizes(head_boxes)[:, None]
    correct = (errors <= threshold) & visible
    counts = visible.sum(axis=0)
    return 100.0 * correct.sum(axis=0) / np.maximum(counts, 1), counts


def pckh_table(
    predictions: np.ndarray,
    ground_truth: np.ndarray,
    visible: np.ndarray,
    head_boxes: np.ndarray,
    groups: dict[str, tuple[int, ...]],
    mean_excludes: tuple[int, ...] = (),
) -> dict[str, Any]:
    """The MPII table: per group (Head, Shoulder ...), Mean (visible-weighted), Mean@0.1, and
    Mean@0.11: HRNet's evaluation, which the paper's MPII figures come from, labels its threshold
    range's index 11 "Mean@0.1", and that index is 0.11 (its range starts at 0.00)."""
    table: dict[str, Any] = {}
    per_joint, counts = pckh(predictions, ground_truth, visible, head_boxes, 0.5)
    per_joint_01, _ = pckh(predictions, ground_truth, visible, head_boxes, 0.1)
    per_joint_011, _ = pckh(predictions, ground_truth, visible, head_boxes, 0.11)
    for name, joints in groups.items():
        table[name] = float(np.mean(per_joint[list(joints)]))
    included = np.ones(len(per_joint), dtype=bool)
    included[list(mean_excludes)] = False
    weights = counts * included
    total = max(weights.sum(), 1)
    table["Mean"] = float((per_joint * weights).sum() / total)
    table["Mean@0.1"] = float((per_joint_01 * weights).sum() / total)
    table["Mean@0.11"] = float((per_joint_011 * weights).sum() / total)
    table["per_joint"] = per_joint.tolist()
    return table
