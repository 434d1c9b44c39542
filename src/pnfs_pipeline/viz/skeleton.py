"""Skeleton overlays and the figure of augmented training samples."""

from __future__ import annotations

import re
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pnfs_pipeline.keypoints import KeypointSpec  # noqa: E402

LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = "#1f77b4", "#d62728", "#2ca02c"


def _named_side(name: str) -> str | None:
    """'left' / 'right' as a keypoint's name says it: left_eye, l_hip, L_Eye, LShoulder, front_left_paw."""
    lower = name.lower()
    for side in ("left", "right"):
        if side in lower:
            return side
    for side in ("left", "right"):
        if re.match(rf"[{side[0]}{side[0].upper()}](?:[_\-\s.]|(?=[A-Z]))", name):
            return side
    return None


def keypoint_colours(spec: KeypointSpec) -> tuple[list[str], str]:
    """A colour per keypoint, from the spec's flip pairs (a keypoint in none is central), and the
    legend that says what the two colours mean.

    Where the names of a flip pair do not tell its left from its right, the pair's order colours
    it, and the legend says so instead of claiming left and right.
    """
    colours = [CENTRE_COLOUR] * spec.num_keypoints
    sides = [(_named_side(spec.keypoints[a]), _named_side(spec.keypoints[b])) for a, b in spec.flip_pairs]
    # One rule for every pair, or the legend would describe only some of them.
    by_name = all(set(pair) == {"left", "right"} for pair in sides)
    for (a, b), pair in zip(spec.flip_pairs, sides, strict=True):
        if by_name and pair == ("right", "left"):
            a, b = b, a
        colours[a], colours[b] = LEFT_COLOUR, RIGHT_COLOUR
    legend = "blue = left, red = right" if by_name else "blue / red = first / second keypoint of each flip pair"
    return colours, legend


def draw_skeleton(
    ax: Axes,
    keypoints: np.ndarray,
    spec: KeypointSpec,
    min_visibility: float = 0.0,
    linestyle: str = "-",
    alpha: float = 1.0,
) -> None:
    """Draw bones and joints of ``(K, 3)`` keypoints whose third column exceeds ``min_visibility``.

    The two keypoints of each flip pair in two colours (:func:`keypoint_colours`: left blue, right
    red where the names say which), so a person can spot a left/right swap at a glance.
    """
    shown = keypoints[:, 2] > min_visibility
    colours, _ = keypoint_colours(spec)
    for a, b in spec.skeleton:
        if shown[a] and shown[b]:
            colour = colours[a] if colours[a] == colours[b] else CENTRE_COLOUR
            ax.plot(
                keypoints[[a, b], 0], keypoints[[a, b], 1], color=colour, lw=1.5, ls=linestyle, alpha=alpha
            )
    for k in np.flatnonzero(shown):
        ax.scatter(keypoints[k, 0], keypoints[k, 1], s=9, color=colours[k], alpha=alpha, zorder=3)


def plot_augmented_samples(
    images: Sequence[np.ndarray],
    input_keypoints: Sequence[np.ndarray],
    heatmaps: Sequence[np.ndarray],
    spec: KeypointSpec,
    titles: Sequence[str] | None = None,
) -> Figure:
    """One column per sample: the augmented crop with its skeleton above, its targets below."""
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(2.0 * count, 5.2), squeeze=False)
    for col in range(count):
        image, keypoints, maps = images[col], input_keypoints[col], heatmaps[col]
        top, bottom = axes[0, col], axes[1, col]
        top.imshow(image)
        draw_skeleton(top, keypoints, spec)
        top.set_title(titles[col] if titles else f"sample {col}", fontsize=7)
        bottom.imshow(image, alpha=0.45)
        # Heatmap pixel u sits at input pixel u * stride, so its cell spans +-stride/2 around it.
        stride = image.shape[1] / maps.shape[2]
        map_h, map_w = maps.shape[1:]
        bottom.imshow(
            maps.max(axis=0),
            cmap="magma",
            alpha=0.6,
            extent=(-0.5 * stride, (map_w - 0.5) * stride, (map_h - 0.5) * stride, -0.5 * stride),
            vmin=0.0,
            vmax=1.0,
        )
        bottom.set_title("targets (max over joints)", fontsize=7)
        for ax in (top, bottom):
            # Keypoints outside the crop must not widen the view beyond the image.
            ax.set_xlim(-0.5, image.shape[1] - 0.5)
            ax.set_ylim(image.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Augmented {spec.name} training samples ({keypoint_colours(spec)[1]})", fontsize=9)
    fig.tight_layout()
    return fig


def plot_prediction_overlays(
    images: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    truths: Sequence[np.ndarray | None],
    spec: KeypointSpec,
    titles: Sequence[str] | None = None,
    min_confidence: float = 0.2,
) -> Figure:
    """Images with predicted skeletons (solid) and, where known, the true ones (dashed)."""
    count = len(images)
    columns = min(count, 4) or 1
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(count):
        ax = axes.flat[i]
        ax.imshow(images[i])
        if truths[i] is not None:
            draw_skeleton(ax, truths[i], spec, linestyle="--", alpha=0.6)
        draw_skeleton(ax, predictions[i], spec, min_visibility=min_confidence)
        ax.set_xlim(-0.5, images[i].shape[1] - 0.5)
        ax.set_ylim(images[i].shape[0] - 0.5, -0.5)
        if titles:
            ax.set_title(titles[i], fontsize=7)
    drawn = "Predictions (solid) and ground truth (dashed)" if any(t is not None for t in truths) else "Predictions"
    fig.suptitle(f"{drawn}; {keypoint_colours(spec)[1]}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_people_overlay(
    image: np.ndarray, people: Sequence[np.ndarray], spec: KeypointSpec, title: str, min_confidence: float = 0.2
) -> Figure:
    """One image with the predicted skeleton of every person found in it."""
    fig, ax = plt.subplots(figsize=(4.0, 4.0 * image.shape[0] / max(image.shape[1], 1)))
    ax.imshow(image)
    for keypoints in people:
        draw_skeleton(ax, keypoints, spec, min_visibility=min_confidence)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig
