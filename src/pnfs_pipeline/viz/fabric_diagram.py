"""Fabric diagrams of a genotype: the grid of cells per part, kept edges with their ops."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pnfs_pipeline.nas.genotype import GridShape, kept_sources, parse_cell_name, source_weights  # noqa: E402

OP_SHORT = {
    "skip_connect": "skip",
    "sep_conv_3x3": "sep3",
    "sep_conv_5x5": "sep5",
    "atr_conv_3x3": "atr3",
    "atr_conv_5x5": "atr5",
    "avg_pool_3x3": "avg",
    "max_pool_3x3": "max",
    "conv_3x3": "conv3",
    "basic_block": "basic",
    "bottleneck_block": "bottle",
}


def _grid(genotype: dict[str, Any]) -> GridShape:
    return GridShape.of(genotype["network"])


def _ops_label(ops: list) -> str:
    labels = []
    for edge in ops:
        if isinstance(edge, dict):
            labels.append("+".join(OP_SHORT.get(o, o) for o in edge))
        else:
            labels.append(OP_SHORT.get(edge, edge))
    return ",".join(labels)


def _beta_of(architecture: dict[str, Any] | None, part: str, name: str, source: int, grid: GridShape) -> float:
    if not architecture or part not in architecture.get("parts", {}):
        return 1.0
    info = architecture["parts"][part]
    if name not in info["cells"]:
        return 1.0
    betas = np.asarray(info["beta"][info["cells"].index(name)], dtype=float)
    return source_weights(betas, grid.sources(*parse_cell_name(name))).get(source, 0.0)


def plot_fabric_diagrams(genotype: dict[str, Any], architecture: dict[str, Any] | None = None) -> Figure:
    """One panel per part: cells by depth (x) and scale (y); line width = beta weight."""
    grid = _grid(genotype)
    parts = list(genotype["parts"])
    strides = [4 * 2**s for s in range(grid.num_scales)]
    fig, axes = plt.subplots(1, len(parts), figsize=(3.4 * len(parts), 3.6), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        cells = genotype["parts"][part]["cells"]
        kept = {parse_cell_name(n) for n in cells}
        first = grid.cut_layers - 1
        for s in range(grid.input_count):
            ax.scatter(first, s, s=180, marker="s", color="#8c564b", zorder=3)
        for layer, scale in grid.positions():
            colour = "#1f77b4" if (layer, scale) in kept else "#d0d0d0"
            ax.scatter(layer, scale, s=220, color=colour, zorder=3, edgecolors="k", linewidths=0.5)
        for name, cell in cells.items():
            layer, scale = parse_cell_name(name)
            for source in kept_sources(genotype, part, name):
                width = 0.5 + 4.0 * _beta_of(architecture, part, name, source, grid)
                ax.plot([layer - 1, layer], [source, scale], color="#ff7f0e", lw=width, zorder=2)
            ax.text(layer, scale + 0.32, _ops_label(cell["ops"]), ha="center", va="top", fontsize=6)
        output = grid.output
        ax.scatter(*output, s=420, facecolors="none", edgecolors="#2ca02c", linewidths=2, zorder=4)
        ax.set_xticks(range(first, grid.depth), ["backbone"] + [f"L{j}" for j in range(grid.cut_layers, grid.depth)], fontsize=7)
        ax.set_yticks(range(grid.num_scales), [f"1/{s}" for s in strides], fontsize=7)
        ax.set_ylim(grid.num_scales - 0.4, -0.6)
        ax.set_xlim(first - 0.5, grid.depth - 0.5)
        ax.set_title(f"{part}: {len(cells)}/{len(grid.positions())} cells kept", fontsize=8)
        ax.grid(alpha=0.2)
    rule = genotype["provenance"].get("rule")
    fig.suptitle(
        f"Derived fabrics ({genotype['provenance'].get('strategy')} search, {rule} rule): "
        "blue = kept cell, grey = removed, line width = beta",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def genotype_summary(genotype: dict[str, Any], sizes: dict[str, Any] | None = None) -> str:
    """A plain-text description of the genotype, for a person reading beside the diagram."""
    lines = [
        f"genotype ({genotype['format']}): strategy {genotype['provenance'].get('strategy')}, "
        f"rule {genotype['provenance'].get('rule')}",
        f"backbone {genotype['network']['backbone']}, channels {genotype['network']['channels']}",
    ]
    for part, info in genotype["parts"].items():
        lines.append(f"\n[{part}] keypoints {info['keypoints']}")
        for name, cell in info["cells"].items():
            inputs = ", ".join(f"{slot} {weight:.2f}" for slot, weight in cell["inputs"].items())
            lines.append(f"  {name}: inputs {inputs}; ops {_ops_label(cell['ops'])}")
    if sizes:
        lines.append("")
        for key, value in sizes.items():
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"
