"""The PNFS cell: beta-weighted multi-scale input, alpha-weighted mixed ops, a 1x1 output conv.

A cell at scale ``s`` of layer ``j`` reads three *slots* of layer ``j-1``: the same-scale output
(parallel), the finer one (above, downsampled) and the coarser one (below, upsampled). At the
fabric's boundaries several slots name the same source; such a source is transformed once and
its slot weights are added, since the input mix is linear before its ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pnfs_pipeline.nas.mixing import weighted_sum
from pnfs_pipeline.nas.ops import UpsampleConnect, build_connection, build_op, canonical_op_names

NUM_SLOTS = 3  # parallel, above (finer), below (coarser)


def num_edges(hidden_states: int, input_nodes: int) -> int:
    """Edges of a DARTS-style cell: hidden state i reads every input node and earlier state."""
    return sum(input_nodes + i for i in range(hidden_states))


class MixedOp(nn.Module):
    """Weighted sum of candidate ops on one edge, scaled by the number of ops.

    The scale keeps a uniform mixture equal to the plain sum of all ops, as in the original.
    Zero ops are never run (their term is exactly zero), and when ``active`` names one op (a
    discrete or Gumbel-sampled architecture) only that op runs.
    """

    def __init__(self, channels: int, op_names: tuple[str, ...]) -> None:
        super().__init__()
        self.op_names = canonical_op_names(op_names)
        self.ops = nn.ModuleList(build_op(name, channels) for name in self.op_names)
        self.live = [i for i, name in enumerate(self.op_names) if name != "zero"]

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active: int | None = None) -> torch.Tensor:
        scale = float(len(self.ops))
        if active is not None:
            if self.op_names[active] == "zero":
                return x.new_zeros(x.shape) * weights[active]
            return self.ops[active](x) * (weights[active] * scale)
        return weighted_sum(weights[self.live], [self.ops[i](x) for i in self.live], scale)


class Cell(nn.Module):
    """One searchable cell of the fabric.

    ``slot_sources`` gives, for the parallel/above/below slots, the scale index (in the previous
    layer) each slot reads. ``channels`` lists channels per scale.
    """

    def __init__(
        self,
        scale: int,
        slot_sources: tuple[int, int, int],
        channels: list[int],
        op_names: tuple[str, ...],
        hidden_states: int = 1,
        input_nodes: int = 1,
    ) -> None:
        super().__init__()
        if hidden_states < 1:
            raise ValueError(f"hidden_states must be >= 1, got {hidden_states}")
        if input_nodes not in (1, 2):
            raise ValueError(f"input_nodes must be 1 or 2, got {input_nodes}")
        self.scale = scale
        self.slot_sources = tuple(slot_sources)
        self.sources = tuple(dict.fromkeys(slot_sources))
        self.slot_to_source = [self.sources.index(s) for s in slot_sources]
        self.connections = nn.ModuleList(build_connection(s, scale, channels) for s in self.sources)
        self.hidden_states = hidden_states
        self.input_nodes = input_nodes
        c = channels[scale]
        self.edges = nn.ModuleList(
            MixedOp(c, op_names) for _ in range(num_edges(hidden_states, input_nodes))
        )
        self.channel_keep = nn.Conv2d(c * hidden_states, c, 1)

    def connect(self, previous: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each distinct source brought to this cell's scale."""
        target_size = None
        outputs: list[torch.Tensor | None] = [None] * len(self.sources)
        # Same-scale and finer sources first: their size fixes the upsampling target.
        for k, source in enumerate(self.sources):
            if not isinstance(self.connections[k], UpsampleConnect):
                outputs[k] = self.connections[k](previous[source])
                target_size = outputs[k].shape[-2:]
        for k, source in enumerate(self.sources):
            if outputs[k] is None:
                outputs[k] = self.connections[k](previous[source], target_size)
        return outputs  # type: ignore[return-value]

    def forward(
        self,
        previous: list[torch.Tensor],
        beta: torch.Tensor,
        alpha: torch.Tensor,
        active_ops: list[int] | None = None,
    ) -> torch.Tensor:
        """``beta``: (3,) slot weights; ``alpha``: (edges, ops) op weights."""
        connected = self.connect(previous)
        source_weights = [None] * len(self.sources)
        for slot, k in enumerate(self.slot_to_source):
            source_weights[k] = beta[slot] if source_weights[k] is None else source_weights[k] + beta[slot]
        node = F.relu(weighted_sum(source_weights, connected, float(NUM_SLOTS)))
        states = [node]
        if self.input_nodes == 2:
            # The second input node is the same-scale input on its own (DARTS' second cell input).
            states.append(connected[self.slot_to_source[0]])
        edge = 0
        for _ in range(self.hidden_states):
            hidden = None
            for state in states:
                active = active_ops[edge] if active_ops is not None else None
                term = self.edges[edge](state, alpha[edge], active)
                hidden = term if hidden is None else hidden + term
                edge += 1
            states.append(hidden)
        out = torch.cat(states[-self.hidden_states :], dim=1) if self.hidden_states > 1 else states[-1]
        return self.channel_keep(out)
