"""The cell-based neural fabric (CNF): a trapezoid grid of cells over depth and scale.

Layer ``j`` of a fabric of ``depth`` layers over ``T`` scales has ``min(j + 2, T, depth - j)``
cells, at scales 0 (stride 4) and down. The grid grows one scale per layer, saturates, then
narrows so the last layer is a single stride-4 cell: the fabric's output. With ``cut_layers > 0``
the first ``cut_layers`` layers are not built: backbone feature maps stand in for layer
``cut_layers - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pnfs_pipeline.nas.cell import Cell, num_edges
from pnfs_pipeline.nas.ops import AdaptedInput


def fabric_layer_sizes(depth: int, num_scales: int) -> list[int]:
    return [min(j + 2, num_scales, depth - j) for j in range(depth)]


def slot_sources(scale: int, previous_count: int) -> tuple[int, int, int]:
    """Scale indices in the previous layer read by the parallel, above and below slots.

    The original's boundary rules: a cell below the previous layer's last scale reads that last
    scale as its parallel input; the top cell has nothing finer and the bottom cell nothing
    coarser, so those slots repeat the parallel input.
    """
    parallel = scale if scale < previous_count else scale - 1
    above = scale - 1 if scale != 0 else parallel
    below = scale + 1 if scale < previous_count - 1 else parallel
    return parallel, above, below


@dataclass(frozen=True)
class CellPosition:
    layer: int
    scale: int

    @property
    def name(self) -> str:
        return f"cell_{self.layer}_{self.scale}"


class CellFabric(nn.Module):
    """A fabric of searchable cells. Architecture weights are passed in, not owned."""

    def __init__(
        self,
        channels: list[int],
        depth: int,
        cut_layers: int,
        op_names: tuple[str, ...],
        hidden_states: int = 1,
        input_nodes: int = 1,
        input_count: int | None = None,
    ) -> None:
        super().__init__()
        num_scales = len(channels)
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        if not 0 <= cut_layers < depth:
            raise ValueError(f"cut_layers_num must be in [0, depth), got {cut_layers} for depth {depth}")
        self.channels = list(channels)
        self.depth = depth
        self.cut_layers = cut_layers
        self.layer_sizes = fabric_layer_sizes(depth, num_scales)
        # What stands in for layer cut_layers - 1: backbone features (one per scale) or a stem map.
        self.input_count = input_count if input_count is not None else (
            self.layer_sizes[cut_layers - 1] if cut_layers > 0 else 1
        )
        if not 1 <= self.input_count <= num_scales:
            raise ValueError(f"the fabric needs 1..{num_scales} input maps, got {self.input_count}")
        self.positions: list[CellPosition] = []
        self.cells = nn.ModuleDict()
        previous = self.input_count
        for layer in range(cut_layers, depth):
            for scale in range(self.layer_sizes[layer]):
                position = CellPosition(layer, scale)
                self.positions.append(position)
                self.cells[position.name] = Cell(
                    scale,
                    slot_sources(scale, previous),
                    self.channels,
                    op_names,
                    hidden_states,
                    input_nodes,
                )
            previous = self.layer_sizes[layer]
        self.num_edges = num_edges(hidden_states, input_nodes)
        self.num_ops = len(op_names)

    @property
    def num_cells(self) -> int:
        return len(self.positions)

    def forward(
        self,
        inputs: list[torch.Tensor | AdaptedInput],
        alpha_weights: torch.Tensor,
        beta_weights: torch.Tensor,
        active_ops: list[list[int]] | None = None,
        last_layer: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """``alpha_weights``: (cells, edges, ops); ``beta_weights``: (cells, 3). ``inputs`` may be
        backbone maps behind their adapters (:class:`~pnfs_pipeline.nas.ops.AdaptedInput`).

        Returns the stride-4 output, or with ``last_layer`` every map of the last built layer.
        """
        if len(inputs) != self.input_count:
            raise ValueError(f"the fabric expects {self.input_count} input maps, got {len(inputs)}")
        previous = list(inputs)
        current: list[torch.Tensor] = []
        layer = self.cut_layers
        for index, position in enumerate(self.positions):
            if position.layer != layer:
                previous, current, layer = current, [], position.layer
            cell = self.cells[position.name]
            current.append(
                cell(
                    previous,
                    beta_weights[index],
                    alpha_weights[index],
                    active_ops[index] if active_ops is not None else None,
                )
            )
        return current if last_layer else current[0]
