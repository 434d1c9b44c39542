"""The genotype: the discrete architecture a search hands to retraining.

A genotype is plain data, written as YAML a person can read, diff and hand-edit::

    format: pnfs-genotype/1
    provenance: {strategy: sync, rule: path, ...}
    network: {backbone: mobilenet_v2, backbone_kwargs: {}, channels: [64, 128, 256, 512],
              depth: 6, cut_layers_num: 3, num_keypoints: 17, hidden_states_num: 1,
              input_nodes_num: 1, num_candidate_ops: 4, head: {...}}
    parts:
      head:
        keypoints: [0, 1, 2, 3, 4]
        cells:                      # in computation order; the last one is the part's output
          cell_3_0:
            inputs: {parallel: 1.0}     # kept slots and their constant weights
            ops: [sep_conv_3x3]         # one op per edge (or {op: weight} maps, see below)
          ...

Slots are ``parallel``, ``above`` (finer scale) and ``below`` (coarser scale) of the previous
layer, as in the supernet; which scale each slot reads follows from the cell's position. An edge
is an op name, or a mapping ``{op: weight}`` when several ops are kept (the original's pruning).

Derivation rules (``derive_genotype``):
- ops: the argmax of softmax alpha, Zero excluded;
- inputs: ``threshold`` keeps slots with softmax beta >= tau (at least the best one), ``top1``
  keeps each cell's best source, ``path`` keeps the single most probable path from the output cell
  back to the backbone (exact dynamic programming, Auto-DeepLab style), ``original`` keeps what the
  original ``Prune(prune_cells=True, prune_operations=True)`` keeps: every slot and op whose
  softmax weight is not exactly zero, with its weight;
- cells that cannot reach the output cell are removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pnfs_pipeline.nas.cell import SLOT_NAMES, num_edges
from pnfs_pipeline.nas.fabric import fabric_layer_sizes, slot_sources
from pnfs_pipeline.nas.ops import canonical_op_name

GENOTYPE_FORMAT = "pnfs-genotype/1"
RULES = ("threshold", "path", "top1", "original")


class GenotypeError(ValueError):
    """A genotype is malformed; the message names the field."""


def cell_name(layer: int, scale: int) -> str:
    return f"cell_{layer}_{scale}"


def parse_cell_name(name: str) -> tuple[int, int]:
    parts = name.split("_")
    if len(parts) != 3 or parts[0] != "cell" or not parts[1].isdigit() or not parts[2].isdigit():
        raise GenotypeError(f"cell name {name!r} is not of the form cell_<layer>_<scale>")
    return int(parts[1]), int(parts[2])


@dataclass(frozen=True)
class GridShape:
    """Which cells exist and what each slot reads, for a fabric of this shape."""

    depth: int
    num_scales: int
    cut_layers: int
    input_count: int

    @classmethod
    def of(cls, network: dict[str, Any]) -> GridShape:
        """The shape a genotype's (or architecture summary's) ``network`` section describes."""
        return cls(network["depth"], len(network["channels"]), network["cut_layers_num"], network["input_count"])

    @property
    def layer_sizes(self) -> list[int]:
        return fabric_layer_sizes(self.depth, self.num_scales)

    def previous_count(self, layer: int) -> int:
        return self.input_count if layer == self.cut_layers else self.layer_sizes[layer - 1]

    def positions(self) -> list[tuple[int, int]]:
        return [(j, s) for j in range(self.cut_layers, self.depth) for s in range(self.layer_sizes[j])]

    def sources(self, layer: int, scale: int) -> tuple[int, int, int]:
        return slot_sources(scale, self.previous_count(layer))

    @property
    def output(self) -> tuple[int, int]:
        return (self.depth - 1, 0)


def source_weights(betas: np.ndarray, sources: tuple[int, int, int]) -> dict[int, float]:
    """Slot weights added per distinct source (slots reading the same map are one input)."""
    weights: dict[int, float] = {}
    for slot, source in enumerate(sources):
        weights[source] = weights.get(source, 0.0) + float(betas[slot])
    return weights


def most_probable_path(grid: GridShape, betas: dict[tuple[int, int], np.ndarray]) -> list[tuple[int, int]]:
    """The cells of the most probable path from a backbone input to the output cell.

    A path's probability is the product of the (source-summed) beta weights of the inputs it uses;
    dynamic programming over layers finds the best one exactly.
    """
    best: dict[tuple[int, int], tuple[float, tuple[int, int] | None]] = {}
    for layer, scale in grid.positions():
        sources = grid.sources(layer, scale)
        candidates = []
        for source, weight in source_weights(betas[(layer, scale)], sources).items():
            previous = (layer - 1, source)
            reach = 1.0 if layer == grid.cut_layers else best[previous][0]
            candidates.append((weight * reach, previous if layer > grid.cut_layers else None, source))
        score, previous, _ = max(candidates, key=lambda c: (c[0], -c[2]))
        best[(layer, scale)] = (score, previous)
    path, cursor = [], grid.output
    while cursor is not None:
        path.append(cursor)
        cursor = best[cursor][1]
    return path[::-1]


def _six_digits(weight: float) -> float:
    """A kept weight, readable in the YAML: six significant digits, never 0 (six decimals turned
    a softmax weight under 5e-7, which the original rule keeps, into a 0 validation refuses)."""
    return float(f"{float(weight):.6g}")


def _reachable(grid: GridShape, kept_inputs: dict[tuple[int, int], dict[int, float]]) -> list[tuple[int, int]]:
    needed = {grid.output}
    for layer, scale in reversed(grid.positions()):
        if (layer, scale) in needed and layer > grid.cut_layers:
            for source in kept_inputs[(layer, scale)]:
                needed.add((layer - 1, source))
    return [p for p in grid.positions() if p in needed]


def _slot_map(grid: GridShape, layer: int, scale: int, kept_sources: dict[int, float]) -> dict[str, float]:
    """Express kept sources as slot names (the first slot that reads each source)."""
    sources = grid.sources(layer, scale)
    slots = {}
    for source, weight in kept_sources.items():
        slot = next(i for i, s in enumerate(sources) if s == source)
        slots[SLOT_NAMES[slot]] = _six_digits(weight)
    return slots


def derive_genotype(
    architecture: dict[str, Any],
    network: dict[str, Any],
    rule: str = "path",
    threshold: float = 0.3,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn searched architecture parameters (``PartSupernet.architecture_summary``) into a genotype."""
    if rule not in RULES:
        raise ValueError(f"unknown derivation rule {rule!r}; valid: {list(RULES)}")
    operators = [canonical_op_name(o) for o in architecture["operators"]]
    grid = GridShape.of(network)
    parts = {}
    for part, info in architecture["parts"].items():
        cells = info["cells"]
        betas = {parse_cell_name(c): np.asarray(b, dtype=float) for c, b in zip(cells, info["beta"], strict=True)}
        alphas = np.asarray(info["alpha"], dtype=float)
        if alphas.ndim == 2:  # shared by every cell
            alphas = np.broadcast_to(alphas, (len(cells), *alphas.shape))
        alpha_of = {parse_cell_name(c): alphas[i] for i, c in enumerate(cells)}

        kept_inputs: dict[tuple[int, int], dict[int, float]] = {}
        if rule == "path":
            path = most_probable_path(grid, betas)
            for position in grid.positions():
                kept_inputs[position] = {}
            for earlier, later in zip(path[:-1], path[1:], strict=True):
                kept_inputs[later] = {earlier[1]: 1.0}
            first = path[0]
            weights = source_weights(betas[first], grid.sources(*first))
            kept_inputs[first] = {max(weights, key=lambda s: (weights[s], -s)): 1.0}
        else:
            for position in grid.positions():
                weights = source_weights(betas[position], grid.sources(*position))
                if rule == "top1":
                    kept_inputs[position] = {max(weights, key=lambda s: (weights[s], -s)): 1.0}
                elif rule == "threshold":
                    kept = {s: w for s, w in weights.items() if w >= threshold}
                    if not kept:
                        best = max(weights, key=lambda s: (weights[s], -s))
                        kept = {best: weights[best]}
                    total = sum(kept.values())
                    kept_inputs[position] = {s: w / total for s, w in kept.items()}
                else:  # original: only an exactly-zero softmax weight removes an input
                    kept_inputs[position] = {s: w for s, w in weights.items() if w > 0.0}

        part_cells = {}
        for position in _reachable(grid, kept_inputs):
            alpha = alpha_of[position]
            if rule == "original":
                edges = [
                    {operators[o]: _six_digits(w) for o, w in enumerate(row) if w > 0.0 and operators[o] != "zero"}
                    for row in alpha
                ]
            else:
                edges = []
                for row in alpha:
                    order = [o for o in np.argsort(-row, kind="stable") if operators[o] != "zero"]
                    edges.append(operators[order[0]])
            part_cells[cell_name(*position)] = {
                "inputs": _slot_map(grid, *position, kept_inputs[position]),
                "ops": edges,
            }
        parts[part] = {"keypoints": list(info["keypoints"]), "cells": part_cells}
    genotype = {
        "format": GENOTYPE_FORMAT,
        "provenance": {
            "strategy": architecture.get("strategy"),
            "rule": rule,
            "operators": operators,
            **(provenance or {}),
        },
        "network": {**network, "num_candidate_ops": len(operators)},
        "parts": parts,
    }
    if rule == "threshold":
        genotype["provenance"]["threshold"] = threshold
    validate_genotype(genotype)
    return genotype


_NETWORK_FIELDS = {
    "backbone": str,
    "backbone_kwargs": dict,
    "channels": list,
    "depth": int,
    "cut_layers_num": int,
    "input_count": int,
    "num_keypoints": int,
    "hidden_states_num": int,
    "input_nodes_num": int,
    "num_candidate_ops": int,
    "head": dict,
}


def validate_genotype(genotype: Any, source: str | None = None) -> dict[str, Any]:
    """Check a genotype's structure; raise :class:`GenotypeError` naming the faulty field, and
    ``source`` (where the genotype came from) when given."""
    try:
        return _checked_genotype(genotype)
    except GenotypeError as error:
        if source is None:
            raise
        raise GenotypeError(f"{source}: {error}") from None


def _checked_genotype(genotype: Any) -> dict[str, Any]:
    if not isinstance(genotype, dict):
        raise GenotypeError("a genotype must be a mapping")
    if genotype.get("format") != GENOTYPE_FORMAT:
        raise GenotypeError(f"field 'format' must be {GENOTYPE_FORMAT!r}, got {genotype.get('format')!r}")
    network = genotype.get("network")
    if not isinstance(network, dict):
        raise GenotypeError("field 'network' is missing or not a mapping")
    for name, kind in _NETWORK_FIELDS.items():
        if not isinstance(network.get(name), kind) or isinstance(network.get(name), bool):
            raise GenotypeError(f"field 'network.{name}' must be a {kind.__name__}, got {network.get(name)!r}")
    grid = GridShape.of(network)
    if not 0 <= grid.cut_layers < grid.depth:
        raise GenotypeError("field 'network.cut_layers_num' must be in [0, depth)")
    edges_per_cell = num_edges(network["hidden_states_num"], network["input_nodes_num"])
    parts = genotype.get("parts")
    if not isinstance(parts, dict) or not parts:
        raise GenotypeError("field 'parts' must map part names to their cells")
    covered: set[int] = set()
    valid_positions = set(grid.positions())
    for part, info in parts.items():
        where = f"parts.{part}"
        if not isinstance(info, dict) or not isinstance(info.get("keypoints"), list) or not info["keypoints"]:
            raise GenotypeError(f"field '{where}.keypoints' must be a non-empty list of keypoint indices")
        for k in info["keypoints"]:
            if not isinstance(k, int) or not 0 <= k < network["num_keypoints"]:
                raise GenotypeError(f"field '{where}.keypoints' has invalid index {k!r}")
        covered.update(info["keypoints"])
        cells = info.get("cells")
        if not isinstance(cells, dict) or not cells:
            raise GenotypeError(f"field '{where}.cells' must map cell names to cells")
        present = set()
        for name, cell in cells.items():
            position = parse_cell_name(name)
            if position not in valid_positions:
                raise GenotypeError(f"field '{where}.cells.{name}': no such cell in a fabric of this shape")
            layer, scale = position
            inputs = cell.get("inputs") if isinstance(cell, dict) else None
            if not isinstance(inputs, dict) or not inputs:
                raise GenotypeError(f"field '{where}.cells.{name}.inputs' must map slots to weights")
            for slot, weight in inputs.items():
                if slot not in SLOT_NAMES:
                    raise GenotypeError(f"field '{where}.cells.{name}.inputs': unknown slot {slot!r}; valid: {list(SLOT_NAMES)}")
                if not isinstance(weight, int | float) or not np.isfinite(weight) or weight <= 0:
                    raise GenotypeError(f"field '{where}.cells.{name}.inputs.{slot}' must be a positive number")
                if layer > grid.cut_layers:
                    source = grid.sources(layer, scale)[SLOT_NAMES.index(slot)]
                    if (layer - 1, source) not in present:
                        raise GenotypeError(
                            f"field '{where}.cells.{name}.inputs.{slot}' reads {cell_name(layer - 1, source)}, "
                            "which is not a kept cell listed before it"
                        )
            ops = cell.get("ops")
            if not isinstance(ops, list) or len(ops) != edges_per_cell:
                raise GenotypeError(f"field '{where}.cells.{name}.ops' must list {edges_per_cell} edge op(s)")
            for e, edge in enumerate(ops):
                entries = edge if isinstance(edge, dict) else {edge: 1.0}
                if not entries:
                    raise GenotypeError(f"field '{where}.cells.{name}.ops[{e}]' keeps no op")
                for op in entries:
                    try:
                        canonical_op_name(op)
                    except ValueError as error:
                        raise GenotypeError(f"field '{where}.cells.{name}.ops[{e}]': {error}") from None
            present.add(position)
        output = cell_name(*grid.output)
        if output not in cells:
            raise GenotypeError(f"field '{where}.cells' must contain the output cell {output}")
        # A cell reads only cells listed before it, so in reverse order every reader comes first.
        reached = {grid.output}
        for name in reversed(list(cells)):
            layer, scale = parse_cell_name(name)
            if (layer, scale) not in reached:
                raise GenotypeError(
                    f"field '{where}.cells.{name}': no kept cell on a path to the output cell {output} "
                    "reads it (derive removes such cells)"
                )
            if layer > grid.cut_layers:
                sources = grid.sources(layer, scale)
                reached.update((layer - 1, sources[SLOT_NAMES.index(slot)]) for slot in cells[name]["inputs"])
    missing = sorted(set(range(network["num_keypoints"])) - covered)
    if missing:
        raise GenotypeError(f"field 'parts': keypoint(s) {missing} belong to no part")
    return genotype


def kept_sources(genotype: dict[str, Any], part: str, name: str) -> dict[int, float]:
    """Previous-layer scale index -> weight for the kept inputs of a cell."""
    network = genotype["network"]
    grid = GridShape.of(network)
    layer, scale = parse_cell_name(name)
    sources = grid.sources(layer, scale)
    result: dict[int, float] = {}
    for slot, weight in genotype["parts"][part]["cells"][name]["inputs"].items():
        source = sources[SLOT_NAMES.index(slot)]
        result[source] = result.get(source, 0.0) + float(weight)
    return result


__all__ = [
    "GENOTYPE_FORMAT",
    "RULES",
    "GenotypeError",
    "GridShape",
    "derive_genotype",
    "kept_sources",
    "most_probable_path",
    "validate_genotype",
]
