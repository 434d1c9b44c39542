"""The derived network: built from a genotype alone, with only the kept cells, inputs and ops.

Mixing in the supernet is scaled (3 x the beta-weighted input sum, n_ops x the alpha-weighted op
sum) so that uniform weights give plain sums. The derived network keeps those constant scales, so a
genotype taken from one-hot architecture parameters computes exactly what the supernet computed,
and inherited weights start where the search left them.

That holds for cells of one input node (the seed's setting). With ``input_nodes_num: 2`` the
supernet's second node reads the parallel slot's connection, which the genotype does not record:
the derived cell reads its same-scale map where the genotype keeps it, else its mixed input, so
a retrained network starts near the supernet's function rather than at it. (The original code
never feeds a second node.)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.cell import NUM_SLOTS
from pnfs_pipeline.nas.genotype import (
    GenotypeError,
    GridShape,
    kept_sources,
    parse_cell_name,
    validate_genotype,
)
from pnfs_pipeline.nas.ops import (
    AdaptedInput,
    UpsampleConnect,
    as_tensor,
    build_connection,
    build_op,
    canonical_op_name,
    composed_connection,
    scaled_forward,
)
from pnfs_pipeline.nas.supernet import HeadConfig, PartHead

logger = logging.getLogger(__name__)


class DerivedEdge(nn.Module):
    def __init__(self, channels: int, edge: str | dict[str, float], num_candidate_ops: int) -> None:
        super().__init__()
        entries = edge if isinstance(edge, dict) else {edge: 1.0}
        self.op_names = [canonical_op_name(o) for o in entries if canonical_op_name(o) != "zero"]
        self.weights = [float(w) for o, w in entries.items() if canonical_op_name(o) != "zero"]
        self.ops = nn.ModuleList(build_op(o, channels) for o in self.op_names)
        self.scale = float(num_candidate_ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ops:
            return torch.zeros_like(x)
        total = None
        for weight, op in zip(self.weights, self.ops, strict=True):
            term = scaled_forward(op, x, weight * self.scale)
            total = term if total is None else total + term
        return total


class DerivedCell(nn.Module):
    compose_adapters = True  # see forward(); switched by ops.set_adapter_composition

    def __init__(
        self,
        scale: int,
        sources: dict[int, float],
        channels: list[int],
        edges: list,
        hidden_states: int,
        input_nodes: int,
        num_candidate_ops: int,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.source_scales = list(sources)
        self.source_weights = [sources[s] * NUM_SLOTS for s in self.source_scales]
        self.connections = nn.ModuleDict(
            {str(s): build_connection(s, scale, channels) for s in self.source_scales}
        )
        self.hidden_states = hidden_states
        self.input_nodes = input_nodes
        c = channels[scale]
        self.edges = nn.ModuleList(DerivedEdge(c, e, num_candidate_ops) for e in edges)
        self.channel_keep = nn.Conv2d(c * hidden_states, c, 1)

    def forward(self, previous: dict[int, torch.Tensor | AdaptedInput], size: tuple[int, int]) -> torch.Tensor:
        """``size``: the (H, W) of this cell's scale. A pruned cell may read only the coarser
        scale, and doubling that is off by one wherever a finer size was odd (9 -> 5 -> 10).

        A source may be a backbone map behind its adapter; while autograd records, connections
        read it through the composed weights, as the supernet's cells do (``cell.Cell.connect``).
        """
        compose = self.compose_adapters and torch.is_grad_enabled()
        node = None
        identity: tuple[torch.Tensor, float] | None = None
        for s, w in zip(self.source_scales, self.source_weights, strict=True):
            module = self.connections[str(s)]
            x = previous[s]
            term = composed_connection(module, x, size if isinstance(module, UpsampleConnect) else None, w) if compose else None
            if term is not None:
                node = term if node is None else node + term
                continue
            x = as_tensor(x)
            if isinstance(module, nn.Identity):
                # Scaled inside the addition below: a separate scaling pass (and Python's
                # ``sum`` starting from 0) each cost a full read and write of the finest maps.
                identity = (x, w)
                continue
            if isinstance(module, UpsampleConnect):
                term = module(x, size, factor=w)
            else:
                term = scaled_forward(module, x, w)
            node = term if node is None else node + term
        if identity is not None:
            same_scale, weight = identity
            node = same_scale * weight if node is None else torch.add(node, same_scale, alpha=weight)
        node = F.relu(node)
        states = [node]
        if self.input_nodes == 2:
            # The same-scale source is an identity connection: its unweighted input is at hand.
            states.append(as_tensor(previous[self.scale]) if self.scale in self.source_scales else node)
        edge = 0
        for _ in range(self.hidden_states):
            hidden = None
            for state in states:
                term = self.edges[edge](state)
                hidden = term if hidden is None else hidden + term
                edge += 1
            states.append(hidden)
        out = torch.cat(states[-self.hidden_states :], dim=1) if self.hidden_states > 1 else states[-1]
        return self.channel_keep(out)


class DerivedPart(nn.Module):
    """Adapters for the backbone scales the part reads, its kept cells, and its head."""

    def __init__(self, genotype: dict[str, Any], part: str, backbone_channels: list[int]) -> None:
        super().__init__()
        network = genotype["network"]
        channels = network["channels"]
        info = genotype["parts"][part]
        self.keypoints = tuple(info["keypoints"])
        # Moves with the module: made in each forward it was a blocking host-to-device copy on a GPU.
        self.register_buffer("keypoint_index", torch.tensor(self.keypoints, dtype=torch.long), persistent=False)
        self.cut_layers = network["cut_layers_num"]
        self.output_cell = (network["depth"] - 1, 0)
        self.order = list(info["cells"])
        self.cells = nn.ModuleDict()
        first_layer_sources: set[int] = set()
        for name in self.order:
            layer, scale = parse_cell_name(name)
            sources = kept_sources(genotype, part, name)
            if layer == self.cut_layers:
                first_layer_sources.update(sources)
            self.cells[name] = DerivedCell(
                scale,
                sources,
                channels,
                info["cells"][name]["ops"],
                network["hidden_states_num"],
                network["input_nodes_num"],
                network["num_candidate_ops"],
            )
        self.used_features = sorted(first_layer_sources)
        self.num_scales = len(channels)
        count = min(len(backbone_channels), len(channels))
        adapt = backbone_channels[:count] != channels[:count]
        self.adapters = nn.ModuleDict(
            {
                str(s): nn.Conv2d(backbone_channels[s], channels[s], 1) if adapt else nn.Identity()
                for s in self.used_features
            }
        )
        self.head = PartHead(channels[0], len(self.keypoints), HeadConfig(**network["head"]))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # Adapted lazily: the first cells' connections may read the backbone maps themselves.
        outputs: dict[tuple[int, int], torch.Tensor | AdaptedInput] = {}
        for s in self.used_features:
            adapter = self.adapters[str(s)]
            key = (self.cut_layers - 1, s)
            outputs[key] = AdaptedInput(features[s], adapter) if isinstance(adapter, nn.Conv2d) else adapter(features[s])
        # Every fabric scale keeps the size of the backbone's feature map at that scale; scales
        # below the backbone's come from stride-2 reductions (3x3, padding 1: ceil of half).
        sizes = [tuple(f.shape[-2:]) for f in features]
        while len(sizes) < self.num_scales:
            sizes.append(tuple(-(-d // 2) for d in sizes[-1]))
        for name in self.order:
            layer, scale = parse_cell_name(name)
            cell = self.cells[name]
            previous = {s: outputs[(layer - 1, s)] for s in cell.source_scales}
            outputs[(layer, scale)] = cell(previous, sizes[scale])
        return self.head(outputs[self.output_cell])


class DerivedNetwork(nn.Module):
    """Backbone + one derived fabric per part; returns (N, K, H/4, W/4) heatmaps.

    ``frozen_backbone``: the backbone built here gets no gradients (``model.frozen_backbone``).
    """

    def __init__(
        self, genotype: dict[str, Any], backbone: nn.Module | None = None, frozen_backbone: bool = False
    ) -> None:
        super().__init__()
        validate_genotype(genotype)
        network = genotype["network"]
        self.genotype = genotype
        self.backbone = backbone if backbone is not None else build_backbone(
            network["backbone"], frozen=frozen_backbone, **network.get("backbone_kwargs", {})
        )
        searched = network.get("backbone_architecture")
        if searched is not None and hasattr(self.backbone, "alphas"):
            # A searchable backbone keeps the mixture the search found, fixed while retraining.
            with torch.no_grad():
                for name in ("alphas", "betas"):
                    parameter = getattr(self.backbone, name)
                    values = torch.as_tensor(searched[name], dtype=parameter.dtype)
                    if values.shape != parameter.shape:
                        raise GenotypeError(
                            f"field 'network.backbone_architecture.{name}' has shape {tuple(values.shape)}, "
                            f"the backbone's is {tuple(parameter.shape)}"
                        )
                    parameter.copy_(values)
                    parameter.requires_grad_(False)
        self.part_names = list(genotype["parts"])
        self.parts = nn.ModuleList(DerivedPart(genotype, p, self.backbone.channels) for p in self.part_names)
        self.num_keypoints = network["num_keypoints"]
        self.combine = network["head"].get("combine", "sum")
        counts = torch.zeros(self.num_keypoints)
        for part in self.parts:
            counts[list(part.keypoints)] += 1
        self.register_buffer("part_counts", counts, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        heatmaps = None
        for part in self.parts:
            out = part(features)
            if heatmaps is None:
                n, _, h, w = out.shape
                heatmaps = out.new_zeros(n, self.num_keypoints, h, w)
            heatmaps = heatmaps.index_add(1, part.keypoint_index, out)
        if self.combine == "mean":
            heatmaps = heatmaps / self.part_counts.to(heatmaps)[None, :, None, None]
        return heatmaps


def inherit_supernet_weights(
    derived: DerivedNetwork,
    supernet_state: dict[str, torch.Tensor],
    supernet_part_names: list[str] | None = None,
    supernet_operators: list[str] | None = None,
) -> int:
    """Copy the supernet weights of every kept module into ``derived``; returns tensors copied.

    Parts are matched by name: ``supernet_part_names`` is the supernet's part order (by default
    the genotype's order). Ops are found by their index in the genotype's searched operators,
    which must be the supernet's (``supernet_operators``, where known): another list would map
    same-shaped ops (avg_pool, max_pool) onto each other without a word.
    """
    searched = [canonical_op_name(o) for o in derived.genotype["provenance"]["operators"]]
    if supernet_operators is not None and [canonical_op_name(o) for o in supernet_operators] != searched:
        raise ValueError(
            f"the genotype was searched over operators {searched}, the supernet has "
            f"{[canonical_op_name(o) for o in supernet_operators]}: derive it from this supernet's search"
        )
    order = list(supernet_part_names) if supernet_part_names is not None else derived.part_names
    missing = [p for p in derived.part_names if p not in order]
    if missing:
        raise KeyError(f"the supernet has no part(s) {missing}; its parts: {order}")
    genotype = derived.genotype
    network = genotype["network"]
    grid = GridShape.of(network)
    mapping: dict[str, str] = {}
    fresh: set[str] = set()
    own = derived.state_dict()
    for key in own:
        if key.startswith("backbone."):
            mapping[key] = key
    for p, part in enumerate(derived.parts):
        prefix = f"parts.{p}."
        source_prefix = f"parts.{order.index(derived.part_names[p])}."
        for key in own:
            if key.startswith(f"{prefix}adapters."):
                # Adapters are indexed by backbone scale in both networks.
                mapping[key] = source_prefix + key[len(prefix) :]
        for name in part.order:
            layer, scale = parse_cell_name(name)
            supernet_sources = list(dict.fromkeys(grid.sources(layer, scale)))
            cell = part.cells[name]
            cell_key, source_cell = f"{prefix}cells.{name}.", f"{source_prefix}fabric.cells.{name}."
            for key in own:
                if not key.startswith(cell_key):
                    continue
                rest = key[len(cell_key) :]
                if rest.startswith("connections."):
                    source, tail = rest[len("connections.") :].split(".", 1)
                    index = supernet_sources.index(int(source))
                    mapping[key] = f"{source_cell}connections.{index}.{tail}"
                elif rest.startswith("edges."):
                    edge, _, op_index, tail = rest[len("edges.") :].split(".", 3)
                    op_name = cell.edges[int(edge)].op_names[int(op_index)]
                    if op_name not in searched:  # a hand-edited op the supernet never had
                        fresh.add(f"{derived.part_names[p]} {name} edge {edge}: {op_name}")
                        continue
                    mapping[key] = f"{source_cell}edges.{edge}.ops.{searched.index(op_name)}.{tail}"
                else:
                    mapping[key] = source_cell + rest
        for key in own:
            if key.startswith(f"{prefix}head."):
                mapping[key] = source_prefix + key[len(prefix) :]
    copied = {}
    for key, source in mapping.items():
        if source not in supernet_state:
            raise KeyError(f"supernet checkpoint has no tensor {source!r} for derived {key!r}")
        if supernet_state[source].shape != own[key].shape:
            raise ValueError(f"shape mismatch inheriting {key!r} from {source!r}")
        copied[key] = supernet_state[source]
    derived.load_state_dict(copied, strict=False)
    if fresh:
        logger.warning("ops outside the searched set start from fresh weights: %s", "; ".join(sorted(fresh)))
    return len(copied)


def describe_checkpoint_network(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Which network a checkpoint holds, for reports: a derived network with the search its
    genotype came from (so a report can be matched with the genotype it sits beside), or a
    supernet."""
    config = checkpoint.get("config", {})
    epochs = {"trained_epochs": int(checkpoint["epoch"]) + 1} if "epoch" in checkpoint else {}
    genotype = config.get("genotype")
    if isinstance(genotype, dict):
        provenance = genotype.get("provenance", {})
        search = provenance.get("search", {})
        return {
            "kind": "derived",
            "backbone": genotype["network"].get("backbone"),
            "strategy": provenance.get("strategy"),
            "rule": provenance.get("rule"),
            "search_finished_at": search.get("finished_at"),
            "search_mlflow_run_id": search.get("mlflow_run_id"),
            "cells_per_part": {part: len(info["cells"]) for part, info in genotype["parts"].items()},
            **epochs,
        }
    return {"kind": "supernet", "backbone": (config.get("model") or {}).get("backbone"), **epochs}


def network_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> nn.Module:
    """Rebuild the network a checkpoint was trained with (derived or supernet) and load it;
    errors name ``source``."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) or not isinstance(checkpoint.get("config"), dict):
        found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{source}: not a checkpoint of this project's search or retraining (needs 'model' and "
            f"'config', found {found})"
        )
    config = checkpoint["config"]
    if "genotype" in config:
        network: nn.Module = DerivedNetwork(validate_genotype(config["genotype"], f"{source} (its genotype)"))
    elif "model" in config and "keypoint_spec" in config:
        from pnfs_pipeline.config import ModelParams, ParameterError, parse_params
        from pnfs_pipeline.keypoints import keypoint_spec_from_dict
        from pnfs_pipeline.nas.supernet import build_supernet

        try:
            model = parse_params(ModelParams, {**config["model"], "pretrained_backbone": None}, "model")
        except ParameterError as error:
            raise ValueError(f"{source}: the checkpoint's model configuration is not valid: {error}") from None
        network = build_supernet(keypoint_spec_from_dict(config["keypoint_spec"], source=source), model)
    else:
        raise ValueError(f"{source}: the checkpoint holds neither a genotype nor a model configuration")
    try:
        network.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        raise ValueError(f"{source}: its weights do not fit the network its configuration describes: {error}") from error
    return network
