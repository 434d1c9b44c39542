"""The PNFS cell: beta-weighted multi-scale input, alpha-weighted mixed ops, a 1x1 output conv.

A cell at scale ``s`` of layer ``j`` reads three *slots* of layer ``j-1``: the same-scale output
(parallel), the finer one (above, downsampled) and the coarser one (below, upsampled). At the
fabric's boundaries several slots name the same source; such a source is transformed once and
its slot weights are added, since the input mix is linear before its ReLU. Where that source
needs a reduction or an upsampling, the original builds one connection per slot, each with
weights of its own, so such cells have fewer parameters here; the seed's fabrics
(MobileNetV2 CNFx3, HRNet-W32 CNFx5) have no such cell.

Architecture weights must be non-negative (softmax or one-hot, as every search strategy gives
them; :class:`PartSupernet` checks): an op that ends in BatchNorm (and ReLU) gets its weight folded
into that BatchNorm instead of a multiplication of its output, and its weight's gradient comes with
BatchNorm's. On 2 CPU cores this took a MobileNetV2_CNFx3 supernet training step (256x192, batch 8,
bf16, channels_last) from 683 to 647 ms (means of four interleaved rounds in one process).
"""

from __future__ import annotations

import torch
from torch import nn

from pnfs_pipeline.nas.mixing import weighted_sum
from pnfs_pipeline.nas.ops import (
    AdaptedInput,
    UpsampleConnect,
    as_tensor,
    build_connection,
    build_op,
    canonical_op_names,
    composed_connection,
    folds_scale,
    scaled_forward,
)

SLOT_NAMES = ("parallel", "above", "below")  # same scale, the finer one, the coarser one
NUM_SLOTS = len(SLOT_NAMES)


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
        """``weights``: this edge's non-negative op weights (see the module docstring)."""
        scale = float(len(self.ops))
        if active is not None:
            if self.op_names[active] == "zero":
                return x.new_zeros(x.shape) * weights[active]
            return scaled_forward(self.ops[active], x, weights[active] * scale)
        folded, outputs, output_weights = [], [], []
        for i in self.live:
            op = self.ops[i]
            if folds_scale(op):
                folded.append(scaled_forward(op, x, weights[i] * scale))
            else:
                outputs.append(op(x))
                output_weights.append(weights[i])
        return weighted_sum(output_weights, outputs, scale, prescaled=folded)


class Cell(nn.Module):
    """One searchable cell of the fabric.

    ``slot_sources`` gives, for the parallel/above/below slots, the scale index (in the previous
    layer) each slot reads. ``channels`` lists channels per scale.
    """

    compose_adapters = True  # see connect(); switched by ops.set_adapter_composition

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
        # Sources whose weight folds into their connection's BatchNorm. The second input node
        # needs the parallel source unweighted, so that one is weighted in the sum.
        keep_unweighted = self.slot_to_source[0] if input_nodes == 2 else None
        self.folded_sources = [
            k != keep_unweighted and (isinstance(c, UpsampleConnect) or folds_scale(c))
            for k, c in enumerate(self.connections)
        ]
        self.hidden_states = hidden_states
        self.input_nodes = input_nodes
        c = channels[scale]
        self.edges = nn.ModuleList(
            MixedOp(c, op_names) for _ in range(num_edges(hidden_states, input_nodes))
        )
        self.channel_keep = nn.Conv2d(c * hidden_states, c, 1)

    def connect(
        self, previous: list[torch.Tensor | AdaptedInput], weights: list[torch.Tensor | None]
    ) -> list[torch.Tensor]:
        """Each distinct source brought to this cell's scale, multiplied by its weight where the
        connection can fold it (its BatchNorm); sources with a ``None`` weight come unweighted.

        A source may be a backbone map behind its 1x1 adapter (the first layer after a cut
        backbone): while autograd records, a connection that starts with a convolution reads the
        backbone map through the composed weights (``ops.connect_through_adapter``), fewer
        multiply-adds for the same function. Without gradients (inference, size profiling) every
        connection reads the adapted map, as the architecture is written.
        """
        compose = self.compose_adapters and torch.is_grad_enabled()
        target_size = None
        outputs: list[torch.Tensor | None] = [None] * len(self.sources)
        # Same-scale and finer sources first: their size fixes the upsampling target.
        for k, source in enumerate(self.sources):
            connection = self.connections[k]
            if isinstance(connection, UpsampleConnect):
                continue
            x = previous[source]
            out = composed_connection(connection, x, factor=weights[k]) if compose else None
            if out is None and weights[k] is None:
                out = connection(as_tensor(x))
            elif out is None:
                out = scaled_forward(connection, as_tensor(x), weights[k])
            outputs[k] = out
            target_size = out.shape[-2:]
        for k, source in enumerate(self.sources):
            if outputs[k] is None:
                connection, x = self.connections[k], previous[source]
                factor = 1.0 if weights[k] is None else weights[k]
                out = composed_connection(connection, x, target_size, factor) if compose else None
                outputs[k] = out if out is not None else connection(as_tensor(x), target_size, factor=factor)
        return outputs  # type: ignore[return-value]

    def forward(
        self,
        previous: list[torch.Tensor | AdaptedInput],
        beta: torch.Tensor,
        alpha: torch.Tensor,
        active_ops: list[int] | None = None,
    ) -> torch.Tensor:
        """``beta``: (3,) slot weights; ``alpha``: (edges, ops) op weights; both non-negative."""
        source_weights: list[torch.Tensor | None] = [None] * len(self.sources)
        for slot, k in enumerate(self.slot_to_source):
            source_weights[k] = beta[slot] if source_weights[k] is None else source_weights[k] + beta[slot]
        fold = self.folded_sources
        connected = self.connect(
            previous, [w * float(NUM_SLOTS) if f else None for w, f in zip(source_weights, fold, strict=True)]
        )
        node = weighted_sum(
            [w for w, f in zip(source_weights, fold, strict=True) if not f],
            [t for t, f in zip(connected, fold, strict=True) if not f],
            float(NUM_SLOTS),
            prescaled=[t for t, f in zip(connected, fold, strict=True) if f],
            relu=True,
        )
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
