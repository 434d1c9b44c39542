"""Keypoint specifications as data.

A :class:`KeypointSpec` describes one keypoint dataset: names, flip pairs, OKS sigmas, skeleton and
the body-part groupings that decide how many part-specific fabrics PNFS builds. COCO-17 and MPII-16
ship as YAML files in ``keypoint_specs/``; a user's own dataset (a hand, a horse) is another YAML file
with the same fields, so no Python changes are needed to support it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

logger = logging.getLogger(__name__)

SHIPPED_SPECS_DIR = Path(__file__).parent / "keypoint_specs"

_REQUIRED_FIELDS = ("name", "keypoints", "flip_pairs", "sigmas", "skeleton", "parts")
_OPTIONAL_FIELDS = ("joint_weights", "upper_body", "pckh_groups", "pckh_mean_excludes")


class KeypointSpecError(ValueError):
    """A keypoint specification is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class KeypointSpec:
    """An immutable, validated description of a keypoint set."""

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...]
    parts: dict[int, dict[str, tuple[int, ...]]]
    joint_weights: tuple[float, ...]
    upper_body: tuple[int, ...]
    pckh_groups: dict[str, tuple[int, ...]] = field(default_factory=dict)
    pckh_mean_excludes: tuple[int, ...] = ()
    source: str = "<memory>"

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def lower_body(self) -> tuple[int, ...]:
        upper = set(self.upper_body)
        return tuple(i for i in range(self.num_keypoints) if i not in upper)

    def index(self, keypoint_name: str) -> int:
        try:
            return self.keypoints.index(keypoint_name)
        except ValueError:
            raise KeyError(
                f"keypoint {keypoint_name!r} is not in spec {self.name!r}; known: {list(self.keypoints)}"
            ) from None

    def flip_permutation(self) -> np.ndarray:
        """Index array that maps each keypoint to its mirror partner (itself when unpaired)."""
        permutation = np.arange(self.num_keypoints)
        for left, right in self.flip_pairs:
            permutation[left], permutation[right] = right, left
        return permutation

    def body_parts(self, num_parts: int) -> dict[str, tuple[int, ...]]:
        """The keypoint indices of each body part for a grouping into ``num_parts`` parts."""
        if num_parts not in self.parts:
            raise KeyError(
                f"keypoint spec {self.name!r} defines no grouping into {num_parts} parts; "
                f"available: {sorted(self.parts)}"
            )
        return self.parts[num_parts]

    def to_dict(self) -> dict[str, Any]:
        """The YAML-able form, with names instead of indices (the shape of the files we ship)."""
        names = self.keypoints
        return {
            "name": self.name,
            "keypoints": list(names),
            "flip_pairs": [[names[a], names[b]] for a, b in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "joint_weights": list(self.joint_weights),
            "upper_body": [names[i] for i in self.upper_body],
            "skeleton": [[names[a], names[b]] for a, b in self.skeleton],
            "pckh_groups": {g: [names[i] for i in idx] for g, idx in self.pckh_groups.items()},
            "pckh_mean_excludes": [names[i] for i in self.pckh_mean_excludes],
            "parts": {
                n: {part: [names[i] for i in idx] for part, idx in groups.items()}
                for n, groups in self.parts.items()
            },
        }


def check_same_keypoints(model_spec: dict[str, Any] | None, data_spec: dict[str, Any], model_source: str, data_source: str) -> None:
    """A network predicts the keypoints of the spec it was trained on, in its order, and its
    flip test swaps that spec's pairs: on another spec's data it would fail deep in torch, or,
    with as many keypoints, score the wrong ones silently. ``None``: the model records no spec."""
    if model_spec is None:
        return
    differences = [name for name in ("keypoints", "flip_pairs") if as_lists(model_spec.get(name)) != as_lists(data_spec.get(name))]
    if differences:
        raise KeypointSpecError(
            f"{model_source} was trained on keypoint spec {model_spec.get('name')!r} "
            f"({len(model_spec.get('keypoints') or [])} keypoints), {data_source} holds spec "
            f"{data_spec.get('name')!r} ({len(data_spec.get('keypoints') or [])} keypoints); they differ in "
            f"{' and '.join(differences)}: prepare the data with the model's spec, or train on this data"
        )


def as_lists(value: Any) -> Any:
    """``value`` with every tuple a list, inside dicts and lists too: a configuration as it reads
    back from YAML or a checkpoint, to compare with one built in memory."""
    if isinstance(value, dict):
        return {key: as_lists(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [as_lists(item) for item in value]
    return value


def _fail(source: str, field_name: str, reason: str) -> KeypointSpecError:
    return KeypointSpecError(f"{source}: field '{field_name}': {reason}")


def _resolve_names(
    source: str, field_name: str, names: Any, keypoints: tuple[str, ...]
) -> tuple[int, ...]:
    if not isinstance(names, list | tuple) or not names:
        raise _fail(source, field_name, "must be a non-empty list of keypoint names")
    unknown = [n for n in names if n not in keypoints]
    if unknown:
        raise _fail(source, field_name, f"unknown keypoint name(s) {unknown}")
    return tuple(keypoints.index(n) for n in names)


def _resolve_pairs(
    source: str, field_name: str, pairs: Any, keypoints: tuple[str, ...]
) -> tuple[tuple[int, int], ...]:
    if not isinstance(pairs, list):
        raise _fail(source, field_name, "must be a list of [name, name] pairs")
    resolved = []
    for position, pair in enumerate(pairs):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _fail(source, f"{field_name}[{position}]", f"expected a pair, got {pair!r}")
        a, b = _resolve_names(source, f"{field_name}[{position}]", list(pair), keypoints)
        if a == b:
            raise _fail(source, f"{field_name}[{position}]", f"pairs {pair[0]!r} with itself")
        resolved.append((a, b))
    return tuple(resolved)


def _float_list(source: str, field_name: str, values: Any, expected_len: int) -> tuple[float, ...]:
    if not isinstance(values, list | tuple):
        raise _fail(source, field_name, "must be a list of numbers")
    if len(values) != expected_len:
        raise _fail(
            source, field_name, f"has {len(values)} values but there are {expected_len} keypoints"
        )
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise _fail(source, field_name, f"must hold numbers, got {values!r}") from None
    if any(not np.isfinite(v) or v <= 0 for v in floats):
        raise _fail(source, field_name, "every value must be a positive finite number")
    return floats


def keypoint_spec_from_dict(data: dict[str, Any], source: str = "<memory>") -> KeypointSpec:
    """Validate a mapping (the parsed YAML) and build a :class:`KeypointSpec`."""
    if not isinstance(data, dict):
        raise KeypointSpecError(f"{source}: a keypoint spec must be a mapping, got {type(data).__name__}")
    missing = [f for f in _REQUIRED_FIELDS if f not in data]
    if missing:
        raise KeypointSpecError(f"{source}: missing field(s) {missing}")
    unknown = sorted(set(data) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS))
    if unknown:
        raise KeypointSpecError(f"{source}: unknown field(s) {unknown}")

    raw_names = data["keypoints"]
    if not isinstance(raw_names, list) or not raw_names or not all(isinstance(n, str) for n in raw_names):
        raise _fail(source, "keypoints", "must be a non-empty list of names")
    keypoints = tuple(raw_names)
    duplicates = sorted({n for n in keypoints if keypoints.count(n) > 1})
    if duplicates:
        raise _fail(source, "keypoints", f"duplicate name(s) {duplicates}")
    num = len(keypoints)

    flip_pairs = _resolve_pairs(source, "flip_pairs", data["flip_pairs"], keypoints)
    paired = [i for pair in flip_pairs for i in pair]
    if len(paired) != len(set(paired)):
        raise _fail(source, "flip_pairs", "a keypoint appears in more than one flip pair")

    sigmas = _float_list(source, "sigmas", data["sigmas"], num)
    joint_weights = _float_list(source, "joint_weights", data.get("joint_weights", [1.0] * num), num)
    skeleton = _resolve_pairs(source, "skeleton", data["skeleton"], keypoints)
    upper_body = (
        _resolve_names(source, "upper_body", data["upper_body"], keypoints)
        if "upper_body" in data
        else tuple(range(num))
    )

    raw_parts = data["parts"]
    if not isinstance(raw_parts, dict) or not raw_parts:
        raise _fail(source, "parts", "must map a number of parts to {part name: [keypoint names]}")
    parts: dict[int, dict[str, tuple[int, ...]]] = {}
    for num_parts, groups in raw_parts.items():
        try:
            count = int(num_parts)
        except (TypeError, ValueError):
            raise _fail(source, f"parts.{num_parts}", "the key must be the number of parts") from None
        if not isinstance(groups, dict) or len(groups) != count:
            got = len(groups) if isinstance(groups, dict) else type(groups).__name__
            raise _fail(source, f"parts.{num_parts}", f"must define exactly {count} named parts, got {got}")
        resolved = {
            str(part): _resolve_names(source, f"parts.{num_parts}.{part}", names, keypoints)
            for part, names in groups.items()
        }
        covered = {i for idx in resolved.values() for i in idx}
        orphans = [keypoints[i] for i in range(num) if i not in covered]
        if orphans:
            raise _fail(
                source, f"parts.{num_parts}", f"keypoint(s) {orphans} belong to no part"
            )
        parts[count] = resolved

    pckh_groups = {
        str(group): _resolve_names(source, f"pckh_groups.{group}", names, keypoints)
        for group, names in (data.get("pckh_groups") or {}).items()
    }
    pckh_mean_excludes = (
        _resolve_names(source, "pckh_mean_excludes", data["pckh_mean_excludes"], keypoints)
        if data.get("pckh_mean_excludes")
        else ()
    )
    return KeypointSpec(
        name=str(data["name"]),
        keypoints=keypoints,
        flip_pairs=flip_pairs,
        sigmas=sigmas,
        skeleton=skeleton,
        parts=parts,
        joint_weights=joint_weights,
        upper_body=upper_body,
        pckh_groups=pckh_groups,
        pckh_mean_excludes=pckh_mean_excludes,
        source=source,
    )


def load_keypoint_spec(name_or_path: str | Path) -> KeypointSpec:
    """Load a shipped spec by name (``coco``, ``mpii``) or any spec YAML by path."""
    candidate = Path(name_or_path)
    shipped = SHIPPED_SPECS_DIR / f"{name_or_path}.yml"
    if candidate.suffix in (".yml", ".yaml"):
        path = candidate
    elif shipped.is_file():
        path = shipped
    else:
        available = sorted(p.stem for p in SHIPPED_SPECS_DIR.glob("*.yml"))
        raise KeypointSpecError(
            f"keypoint spec {str(name_or_path)!r} is neither a shipped spec {available} nor a .yml path"
        )
    if not path.is_file():
        raise KeypointSpecError(f"{path}: keypoint spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise KeypointSpecError(f"{path}: not valid YAML: {error}") from error
    return keypoint_spec_from_dict(data, source=str(path))
