"""Figures of the architecture parameters: alpha (op) and beta (input) weights over a search."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SLOT_NAMES = ("parallel", "above (finer)", "below (coarser)")


def _cell_sources(architecture: dict[str, Any], cell: str) -> tuple[int, int, int] | None:
    """The previous-layer scale each of a cell's three slots reads (None without the network's
    shape). At the fabric's edges two slots read the same scale, and their weights add."""
    from pnfs_pipeline.nas.genotype import GridShape, parse_cell_name

    network = architecture.get("network")
    if not network:
        return None
    grid = GridShape.of(network)
    return grid.sources(*parse_cell_name(cell))


def _mean_op_weights(alpha: Any) -> np.ndarray:
    """Softmax op weights averaged over every edge (and cell): one value per op."""
    array = np.asarray(alpha, dtype=float)
    return array.reshape(-1, array.shape[-1]).mean(axis=0)


def plot_architecture_history(
    history: list[dict[str, Any]], architecture: dict[str, Any]
) -> Figure:
    """Top row: each part's mean op weight per epoch. Bottom row: each part's final betas."""
    parts = list(architecture["parts"])
    operators = architecture["operators"]
    fig, axes = plt.subplots(2, len(parts), figsize=(3.6 * len(parts), 6.4), squeeze=False)
    epochs = [h["epoch"] for h in history if h.get("architecture")]
    for col, part in enumerate(parts):
        top, bottom = axes[0, col], axes[1, col]
        if epochs:
            weights = np.array([_mean_op_weights(h["architecture"][part]["alpha"]) for h in history if h.get("architecture")])
            for op_index, op in enumerate(operators):
                top.plot(epochs, weights[:, op_index], marker="o", ms=3, label=op)
        top.set_title(f"{part}: op weights (softmax alpha, mean of edges)", fontsize=8)
        top.set_xlabel("epoch", fontsize=8)
        top.xaxis.set_major_locator(MaxNLocator(integer=True))
        top.set_ylim(0, 1)
        top.legend(fontsize=6)
        info = architecture["parts"][part]
        betas = np.asarray(info["beta"], dtype=float)
        image = bottom.imshow(betas, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        bottom.set_yticks(range(len(info["cells"])), info["cells"], fontsize=6)
        bottom.set_xticks(range(len(SLOT_NAMES)), SLOT_NAMES, fontsize=6)
        sources = [_cell_sources(architecture, cell) for cell in info["cells"]]
        for (row, slot), value in np.ndenumerate(betas):
            label = f"{value:.2f}"
            if sources[row] is not None:
                label += f" s{sources[row][slot]}"  # the scale this slot reads
            bottom.text(slot, row, label, ha="center", va="center", fontsize=5, color="w" if value < 0.6 else "k")
        note = "\n(sN: the scale a slot reads; slots reading one scale add up)" if sources and sources[0] else ""
        bottom.set_title(f"{part}: input weights (softmax beta){note}", fontsize=7)
        fig.colorbar(image, ax=bottom, fraction=0.046)
    fig.suptitle(f"Architecture parameters ({architecture['strategy']} search)", fontsize=10)
    fig.tight_layout()
    return fig
