"""Procedural synthetic human keypoint dataset, written in the real COCO and MPII layouts.

Why this exists: the project must run end to end without internet access, so no real
dataset can be downloaded.  Instead of inventing a toy format (which would need its own
readers and would let bugs in the real readers go unnoticed), this module renders
articulated people and writes them in the *exact* on-disk formats of COCO-2017 keypoints
and of the HRNet MPII conversion.  The same readers, evaluators and pipelines therefore
serve synthetic and real data alike.

Design choices that matter for learning and for fidelity:

* One 3D-ish articulated skeleton (joint angles within anatomical limits, yaw towards or
  away from the camera, orthographic projection) drives both the COCO-17 and the MPII-16
  keypoints, so the two variants agree.
* Left and right are never colour coded: both arms share the shirt colour, both legs the
  trouser colour.  Only pose and the face (eyes/nose/mouth versus hair at the back of the
  head) tell left from right, as with real people.
* Visibility is derived from what was actually drawn: a label map records, per pixel, which
  person part (or occluder) ended up on top, so keypoints hidden by the body itself, by
  other people or by occluders are labelled but not visible (v=1), while points outside the
  image are unlabelled (v=0, x=y=0) as in COCO.
* Every image is rendered from its own random generator derived from (seed, split, index),
  so the output does not depend on the order of work and the JSON is byte-identical for the
  same configuration.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import json
import logging
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
from pycocotools import mask as mask_utils

from pnfs_pipeline.files import atomic_write
from pnfs_pipeline.progress import track

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 3: ears under the person's own long hair labelled occluded
"""Bumped whenever the rendered output changes, so cached datasets get regenerated."""

MANIFEST_NAME = "synthetic_manifest.json"
IN_PROGRESS_MARKER = ".synthetic_in_progress"
VAL_IMAGE_ID_OFFSET = 1_000_000
"""Validation image ids start here so ids stay unique across splits and stable per split."""

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)  # fmt: skip
"""The standard COCO person skeleton, 1-based keypoint index pairs (as in the COCO JSON)."""
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)  # fmt: skip
"""0-based left/right pairs of COCO keypoints, for horizontal-flip augmentation."""

MPII_JOINT_NAMES: tuple[str, ...] = (
    "r_ankle",
    "r_knee",
    "r_hip",
    "l_hip",
    "l_knee",
    "l_ankle",
    "pelvis",
    "thorax",
    "upper_neck",
    "head_top",
    "r_wrist",
    "r_elbow",
    "r_shoulder",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
)
MPII_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
"""0-based left/right pairs of MPII joints, for horizontal-flip augmentation."""

SPLIT_DIRS: dict[str, str] = {"train": "train2017", "val": "val2017"}
MPII_SPLIT_FILES: dict[str, str] = {"train": "train.json", "val": "valid.json"}

# Names of the skeleton points (see build_person) that become COCO / MPII keypoints.
_COCO_POINTS = (
    "nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow",
    "r_elbow", "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle",
)  # fmt: skip
_MPII_POINTS = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)  # fmt: skip

PART_IDS: dict[str, int] = {
    "trousers": 0, "shirt": 1, "neck": 2, "head": 3,
    "l_upper_arm": 4, "l_forearm": 5, "l_hand": 6,
    "r_upper_arm": 7, "r_forearm": 8, "r_hand": 9,
    "l_thigh": 10, "l_shin": 11, "l_foot": 12,
    "r_thigh": 13, "r_shin": 14, "r_foot": 15, "long_hair": 16,
}  # fmt: skip
"""Body part ids; label-map code of a part = person code base + part id (one slot a part)."""
_PART_NAMES = {v: k for k, v in PART_IDS.items()}
_PARTS_PER_PERSON = 17
_LABEL_OCCLUDER = 1
_LABEL_BACKGROUND_PEOPLE = 2  # crowd members and tiny people: never checked for visibility
_FIRST_PERSON_CODE = 16

# Which drawn parts count as "the keypoint itself" when found on top at the keypoint's pixel.
_KEYPOINT_PARTS: dict[str, tuple[str, ...]] = {
    "nose": ("head",), "l_eye": ("head",), "r_eye": ("head",),
    "l_ear": ("head",), "r_ear": ("head",),
    "l_shoulder": ("l_upper_arm", "shirt", "neck"), "r_shoulder": ("r_upper_arm", "shirt", "neck"),
    "l_elbow": ("l_upper_arm", "l_forearm"), "r_elbow": ("r_upper_arm", "r_forearm"),
    "l_wrist": ("l_forearm", "l_hand"), "r_wrist": ("r_forearm", "r_hand"),
    "l_hip": ("l_thigh", "trousers", "shirt"), "r_hip": ("r_thigh", "trousers", "shirt"),
    "l_knee": ("l_thigh", "l_shin"), "r_knee": ("r_thigh", "r_shin"),
    "l_ankle": ("l_shin", "l_foot"), "r_ankle": ("r_shin", "r_foot"),
}  # fmt: skip
_TORSO_PARTS = frozenset({"shirt", "trousers", "neck"})
_FACE_POINTS = ("nose", "l_eye", "r_eye", "mouth")
# A face mark is drawn, and its keypoint can be visible, where it faces the camera at least this
# much (one threshold for both, so labels never disagree with the pixels).
_FACE_DRAWN_ABOVE = {"nose": -0.3, "l_eye": 0.1, "r_eye": 0.1, "mouth": 0.15}
_EAR_POINTS = ("l_ear", "r_ear")
_EAR_HIDDEN_BELOW = -0.25  # ears sit at the sides: seen from the front, hidden in far profile


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic dataset; the whole config is the dataset's cache key.

    Validated on construction so that a bad Kedro parameter fails early with a message
    naming the offending field instead of producing an odd dataset.
    """

    seed: int = 0
    num_train_images: int = 160
    num_val_images: int = 48
    image_width: int = 256
    image_height: int = 256
    max_people: int = 3  # 1..max_people people per image
    crowd_prob: float = 0.1  # probability an image also gets a crowd region (iscrowd=1)
    occluder_prob: float = 0.3  # probability per person of an occluding shape
    tiny_person_prob: float = 0.05  # far-away person annotated with zero keypoints, as in COCO
    jpeg_quality: int = 90
    mpii: bool = True  # also write the MPII-style variant
    detection_false_positives: float = 0.1  # expected false-positive detections per val image

    def __post_init__(self) -> None:
        ints = {
            "seed": (0, None),
            "num_train_images": (1, VAL_IMAGE_ID_OFFSET - 1),
            "num_val_images": (1, None),
            "image_width": (64, None),
            "image_height": (64, None),
            "max_people": (1, 50),
            "jpeg_quality": (1, 100),
        }
        for name, (lo, hi) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"SyntheticConfig.{name} must be an integer, got {value!r}")
            if value < lo or (hi is not None and value > hi):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"SyntheticConfig.{name} must be {bound}, got {value!r}")
            object.__setattr__(self, name, int(value))  # plain int keeps the manifest JSON-able
        floats = {
            "crowd_prob": 1.0,
            "occluder_prob": 1.0,
            "tiny_person_prob": 1.0,
            "detection_false_positives": None,
        }
        for name, hi in floats.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"SyntheticConfig.{name} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value) or value < 0.0 or (hi is not None and value > hi):
                bound = ">= 0" if hi is None else "in [0, 1]"
                raise ValueError(f"SyntheticConfig.{name} must be {bound}, got {value!r}")
            object.__setattr__(self, name, value)
        if not isinstance(self.mpii, bool | np.bool_):
            raise ValueError(f"SyntheticConfig.mpii must be a boolean, got {self.mpii!r}")
        object.__setattr__(self, "mpii", bool(self.mpii))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (used for the manifest and for comparisons)."""
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------- body model


@dataclass(frozen=True)
class LimbAngles:
    """Angles in degrees of one arm or leg.

    Arms: ``flexion`` raises the arm forwards (180 = straight up), ``abduction`` sideways,
    ``rotation`` is internal rotation (turns a bent forearm towards the body), ``bend`` is the
    elbow flexion.  Legs: ``flexion`` moves the thigh forwards, ``abduction`` sideways,
    ``rotation`` turns the foot in, ``bend`` is the knee flexion (the shin goes backwards).
    Knees and elbows only bend one way, like real joints.
    """

    flexion: float = 0.0
    abduction: float = 8.0
    rotation: float = 0.0
    bend: float = 0.0


@dataclass(frozen=True)
class BodyPose:
    """Whole-body pose in degrees; ``yaw`` 0 faces the camera, 180 faces away, 90 faces image right."""

    yaw: float = 0.0
    roll: float = 0.0  # in-plane tilt of the whole body
    torso_pitch: float = 0.0  # forward lean
    torso_side: float = 0.0
    torso_twist: float = 0.0
    head_yaw: float = 0.0
    head_pitch: float = 0.0  # positive looks down
    head_roll: float = 0.0
    l_arm: LimbAngles = field(default_factory=LimbAngles)
    r_arm: LimbAngles = field(default_factory=LimbAngles)
    l_leg: LimbAngles = field(default_factory=lambda: LimbAngles(abduction=3.0))
    r_leg: LimbAngles = field(default_factory=lambda: LimbAngles(abduction=3.0))
    kind: str = "custom"


Colour = tuple[int, int, int]


@dataclass(frozen=True)
class BodyShape:
    """Per-person proportions (fractions of standing height) and clothing colours (BGR).

    Left and right share every length and every colour by construction, which is what
    keeps the dataset free of a left/right colour code.
    """

    spine: float = 0.30
    neck: float = 0.045
    head_half_height: float = 0.066
    head_half_width: float = 0.05
    head_half_depth: float = 0.058
    shoulder_half: float = 0.105
    waist_half: float = 0.09
    hip_half: float = 0.07
    upper_arm: float = 0.17
    forearm: float = 0.15
    hand: float = 0.055
    thigh: float = 0.245
    shin: float = 0.245
    foot: float = 0.075
    build: float = 1.0  # limb thickness factor
    hairline: float = 0.3  # in head units, higher = less hair on the forehead
    long_hair: bool = False
    long_sleeves: bool = True
    shorts: bool = False
    skin: Colour = (140, 175, 220)
    hair: Colour = (30, 35, 45)
    shirt: Colour = (160, 90, 40)
    trousers: Colour = (80, 50, 30)
    shoes: Colour = (30, 30, 30)

    def part_colours(self) -> dict[str, Colour]:
        """Base (unshaded) colour of every body part; left and right are equal on purpose."""
        forearm = self.shirt if self.long_sleeves else self.skin
        shin = self.skin if self.shorts else self.trousers
        colours: dict[str, Colour] = {
            "trousers": self.trousers,
            "shirt": self.shirt,
            "neck": self.skin,
            "head": self.skin,
        }
        for side in ("l", "r"):
            colours[f"{side}_upper_arm"] = self.shirt
            colours[f"{side}_forearm"] = forearm
            colours[f"{side}_hand"] = self.skin
            colours[f"{side}_thigh"] = self.trousers
            colours[f"{side}_shin"] = shin
            colours[f"{side}_foot"] = self.shoes
        return colours


@dataclass
class _Layer:
    polygon: np.ndarray  # (K, 2) float pixel coordinates
    colour: Colour
    outline: bool = True


@dataclass
class _Group:
    """Layers of one body part, drawn together at one depth (painter's algorithm)."""

    part: str
    depth: float
    layers: list[_Layer]


@dataclass
class PersonModel:
    """A posed, projected person: 3D points, pixel points and depth-sorted drawing layers.

    ``points3d`` are in units of standing height with y up and z towards the camera;
    ``points2d`` are pixel coordinates (x right, y down, pixel centres at integers).
    """

    shape: BodyShape
    pose: BodyPose
    height_px: float
    points3d: dict[str, np.ndarray]
    points2d: dict[str, np.ndarray]
    normal_z: dict[str, float]
    groups: list[_Group]

    def shift(self, dx: float, dy: float) -> None:
        """Translate the person in the image plane (used for placement)."""
        offset = np.array([dx, dy])
        for name in self.points2d:
            self.points2d[name] = self.points2d[name] + offset
        for group in self.groups:
            for layer in group.layers:
                layer.polygon = layer.polygon + offset

    def bounds(self) -> tuple[float, float, float, float]:
        """Unclipped (x0, y0, x1, y1) extent of everything drawn for this person."""
        pts = np.concatenate([layer.polygon for g in self.groups for layer in g.layers])
        return (
            float(pts[:, 0].min()),
            float(pts[:, 1].min()),
            float(pts[:, 0].max()),
            float(pts[:, 1].max()),
        )


def _rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _flex(deg: float) -> np.ndarray:
    """Rotation that swings a downward segment forwards (towards +z) by ``deg``."""
    return _rot_x(-deg)


def _unit_sphere(n_lat: int = 11, n_lon: int = 18) -> np.ndarray:
    lat = np.linspace(-90.0, 90.0, n_lat)
    lon = np.linspace(0.0, 360.0, n_lon, endpoint=False)
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    pts = np.stack([np.cos(la) * np.sin(lo), np.sin(la), np.cos(la) * np.cos(lo)], axis=-1)
    return pts.reshape(-1, 3)


_SPHERE = _unit_sphere()
_RING = np.linspace(0.0, 2.0 * math.pi, 12, endpoint=False)
_ARC = np.linspace(0.0, math.pi, 7)
_CIRCLE = np.linspace(0.0, 2.0 * math.pi, 12, endpoint=False)


def _hull(points: np.ndarray) -> np.ndarray:
    hull = cv2.convexHull(np.asarray(points, dtype=np.float32))
    return hull.reshape(-1, 2).astype(np.float64)


def _capsule(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Tapered capsule polygon from p0 (radius r0) to p1 (radius r1): rounded limb ends."""
    d = p1 - p0
    length = float(np.hypot(d[0], d[1]))
    d = np.array([1.0, 0.0]) if length < 1e-6 else d / length
    n = np.array([-d[1], d[0]])
    c, s = np.cos(_ARC)[:, None], np.sin(_ARC)[:, None]
    end = p1 + r1 * (c * n + s * d)
    start = p0 + r0 * (c * -n + s * -d)
    return np.concatenate([end, start])


def _circle(center: np.ndarray, radius: float) -> np.ndarray:
    return center + radius * np.stack([np.cos(_CIRCLE), np.sin(_CIRCLE)], axis=-1)


def _scale_colour(colour: Colour, factor: float) -> Colour:
    b, g, r = (int(np.clip(round(c * factor), 0, 255)) for c in colour)
    return (b, g, r)


def build_person(
    shape: BodyShape,
    pose: BodyPose,
    height_px: float,
    origin: tuple[float, float] = (0.0, 0.0),
) -> PersonModel:
    """Pose the skeleton, project it and prepare depth-sorted drawing layers.

    ``origin`` is the pixel position of the pelvis.  Bone lengths come from ``shape`` in
    units of standing height, so ``height_px`` is the standing height in pixels.
    """
    s, p = shape, pose
    loc: dict[str, np.ndarray] = {"pelvis": np.zeros(3)}
    r_torso = _rot_x(p.torso_pitch) @ _rot_z(p.torso_side) @ _rot_y(p.torso_twist)
    loc["neck_base"] = r_torso @ np.array([0.0, s.spine, 0.0])
    limb_frames: dict[str, np.ndarray] = {}
    for side, sign in (("l", 1.0), ("r", -1.0)):
        arm: LimbAngles = getattr(p, f"{side}_arm")
        shoulder = r_torso @ np.array([sign * s.shoulder_half, s.spine - 0.022, -0.005])
        r_arm = (
            r_torso
            @ _rot_z(sign * arm.abduction)
            @ _flex(arm.flexion)
            @ _rot_y(-sign * arm.rotation)
        )
        r_fore = r_arm @ _flex(arm.bend)
        elbow = shoulder + r_arm @ np.array([0.0, -s.upper_arm, 0.0])
        wrist = elbow + r_fore @ np.array([0.0, -s.forearm, 0.0])
        loc[f"{side}_shoulder"] = shoulder
        loc[f"{side}_elbow"] = elbow
        loc[f"{side}_wrist"] = wrist
        loc[f"{side}_hand_tip"] = wrist + r_fore @ np.array([0.0, -s.hand, 0.0])

        leg: LimbAngles = getattr(p, f"{side}_leg")
        hip = np.array([sign * s.hip_half, -0.015, 0.0])
        r_leg = _rot_z(sign * leg.abduction) @ _flex(leg.flexion) @ _rot_y(-sign * leg.rotation)
        r_shin = r_leg @ _flex(-leg.bend)
        foot_dir = r_shin @ _flex(85.0) @ np.array([0.0, -1.0, 0.0])
        knee = hip + r_leg @ np.array([0.0, -s.thigh, 0.0])
        ankle = knee + r_shin @ np.array([0.0, -s.shin, 0.0])
        heel = ankle + r_shin @ np.array([0.0, -0.028, 0.0]) - 0.02 * foot_dir
        loc[f"{side}_hip"] = hip
        loc[f"{side}_knee"] = knee
        loc[f"{side}_ankle"] = ankle
        loc[f"{side}_heel"] = heel
        loc[f"{side}_toe"] = heel + s.foot * foot_dir
        limb_frames[side] = r_leg

    r_neck = r_torso @ _rot_x(0.4 * p.head_pitch)
    loc["upper_neck"] = loc["neck_base"] + r_neck @ np.array([0.0, s.neck, 0.008])
    r_head = r_torso @ _rot_x(p.head_pitch) @ _rot_y(p.head_yaw) @ _rot_z(p.head_roll)
    axes = np.array([s.head_half_width, s.head_half_height, s.head_half_depth])
    head_center = loc["upper_neck"] + r_head @ np.array([0.0, 0.85 * s.head_half_height, 0.006])
    loc["head_center"] = head_center
    loc["head_top"] = head_center + r_head @ np.array([0.0, s.head_half_height, 0.0])
    # Face landmarks in head units (x = person's left, y up, z forward) and their normals.
    face_local = {
        "nose": ((0.0, -0.22, 1.12), (0.0, -0.1, 1.0)),
        "l_eye": ((0.36, 0.1, 0.86), (0.35, 0.05, 1.0)),
        "r_eye": ((-0.36, 0.1, 0.86), (-0.35, 0.05, 1.0)),
        "l_ear": ((1.0, -0.02, -0.05), (1.0, 0.0, -0.15)),
        "r_ear": ((-1.0, -0.02, -0.05), (-1.0, 0.0, -0.15)),
        "mouth": ((0.0, -0.52, 0.84), (0.0, -0.3, 1.0)),
    }
    r_world = _rot_z(p.roll) @ _rot_y(p.yaw)
    normal_z: dict[str, float] = {}
    for name, (pos, normal) in face_local.items():
        loc[name] = head_center + r_head @ (np.array(pos) * axes)
        nrm = r_world @ r_head @ np.array(normal)
        normal_z[name] = float(nrm[2] / np.linalg.norm(nrm))
    loc["thorax"] = 0.5 * (loc["l_shoulder"] + loc["r_shoulder"])
    loc["pelvis"] = 0.5 * (loc["l_hip"] + loc["r_hip"])

    pts3 = {k: r_world @ v for k, v in loc.items()}
    org = np.asarray(origin, dtype=np.float64)

    def project(x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        return org + height_px * np.stack([x[:, 0], -x[:, 1]], axis=-1)

    pts2 = {k: project(v)[0] for k, v in pts3.items()}
    groups = _body_groups(shape, r_world, r_torso, r_head, axes, pts3, pts2, normal_z, height_px, project)
    groups.sort(key=lambda g: g.depth)
    return PersonModel(shape, pose, float(height_px), pts3, pts2, normal_z, groups)


def _body_groups(
    s: BodyShape,
    r_world: np.ndarray,
    r_torso: np.ndarray,
    r_head: np.ndarray,
    axes: np.ndarray,
    p3: dict[str, np.ndarray],
    p2: dict[str, np.ndarray],
    normal_z: dict[str, float],
    hp: float,
    project: Callable[[np.ndarray], np.ndarray],
) -> list[_Group]:
    """Drawing layers of one person: torso hulls, tapered limbs, head with face or hair."""
    colours = s.part_colours()
    outline = hp >= 50.0
    b = s.build
    groups: list[_Group] = []

    def rings(frame: np.ndarray, spec: list[tuple[float, float, float]]) -> tuple[np.ndarray, float]:
        pts = []
        centres = []
        for height, half_w, half_d in spec:
            centre = frame @ np.array([0.0, height, 0.0])
            ring = np.stack(
                [half_w * b * np.cos(_RING), np.zeros_like(_RING), half_d * b * np.sin(_RING)],
                axis=-1,
            )
            pts.append(centre + ring @ frame.T)
            centres.append(centre)
        world = np.concatenate(pts) @ r_world.T
        depth = float(np.mean((np.array(centres) @ r_world.T)[:, 2]))
        return _hull(project(world)), depth

    sh, sp = s.shoulder_half, s.spine
    shirt_poly, shirt_depth = rings(
        r_torso,
        [
            (sp + 0.012, 0.55 * sh, 0.04),
            (sp - 0.03, sh + 0.03, 0.058),
            (0.62 * sp, 0.9 * sh + 0.01, 0.068),
            (0.33 * sp, s.waist_half, 0.06),
            (0.12 * sp, s.hip_half + 0.03, 0.062),
        ],
    )
    trouser_poly, trouser_depth = rings(
        np.eye(3),
        [
            (0.2 * sp, s.waist_half + 0.005, 0.06),
            (0.0, s.hip_half + 0.04, 0.068),
            (-0.05, s.hip_half + 0.025, 0.06),
        ],
    )
    groups.append(_Group("trousers", trouser_depth - 0.035, [_Layer(trouser_poly, colours["trousers"], outline)]))
    groups.append(_Group("shirt", shirt_depth, [_Layer(shirt_poly, colours["shirt"], outline)]))
    torso_z = shirt_depth

    def limb(part: str, a: str, c: str, ra: float, rc: float, bias: float = 0.0) -> None:
        z = 0.5 * (p3[a][2] + p3[c][2])
        shade = float(np.clip(1.0 + 2.2 * (z - torso_z), 0.72, 1.05))
        poly = _capsule(p2[a], p2[c], max(0.8, ra * b * hp), max(0.8, rc * b * hp))
        colour = _scale_colour(colours[part], shade)
        groups.append(_Group(part, z + bias, [_Layer(poly, colour, outline)]))

    for side in ("l", "r"):
        limb(f"{side}_upper_arm", f"{side}_shoulder", f"{side}_elbow", 0.034, 0.028, 0.005)
        limb(f"{side}_forearm", f"{side}_elbow", f"{side}_wrist", 0.027, 0.021, 0.006)
        limb(f"{side}_hand", f"{side}_wrist", f"{side}_hand_tip", 0.021, 0.018, 0.007)
        limb(f"{side}_thigh", f"{side}_hip", f"{side}_knee", 0.055, 0.04, -0.03)
        limb(f"{side}_shin", f"{side}_knee", f"{side}_ankle", 0.039, 0.028, -0.029)
        limb(f"{side}_foot", f"{side}_heel", f"{side}_toe", 0.022, 0.02, -0.028)
    neck_top = p2["upper_neck"] + 0.3 * (p2["head_center"] - p2["upper_neck"])
    neck_z = 0.5 * (p3["neck_base"][2] + p3["upper_neck"][2])
    groups.append(
        _Group("neck", neck_z - 0.01, [_Layer(_capsule(p2["neck_base"], neck_top, 0.028 * b * hp, 0.026 * b * hp), s.skin, outline)])
    )

    # Head: ellipsoid silhouette, hair where the scalp is seen, face marks where the face is seen.
    r_full = r_world @ r_head
    centre3 = p3["head_center"]
    surface = centre3 + (_SPHERE * axes) @ r_full.T
    normals = (_SPHERE / axes) @ r_full.T
    nz = normals[:, 2] / np.linalg.norm(normals, axis=1)
    head_layers = [_Layer(_hull(project(surface)), s.skin, outline)]
    seen = nz > -0.05
    # Scalp = top cap and back of the head; two convex pieces so no hair chord crosses the face.
    for hair_sel in (
        seen & (_SPHERE[:, 1] > s.hairline),
        seen & (_SPHERE[:, 2] < -0.12) & (_SPHERE[:, 1] > -0.6),
    ):
        if hair_sel.sum() >= 3:
            head_layers.append(_Layer(_hull(project(surface[hair_sel])), s.hair, outline))
    ear_r = max(0.7, 0.22 * s.head_half_height * hp)
    for ear in _EAR_POINTS:
        if normal_z[ear] > _EAR_HIDDEN_BELOW:
            head_layers.append(_Layer(_circle(p2[ear], ear_r), _scale_colour(s.skin, 0.9), outline))
    if normal_z["nose"] > _FACE_DRAWN_ABOVE["nose"]:
        nose_local = np.array(
            [(0.0, 0.05, 1.0), (0.0, -0.25, 1.14), (0.0, -0.35, 0.95), (0.16, -0.33, 0.95), (-0.16, -0.33, 0.95)]
        )
        nose3 = centre3 + (nose_local * axes) @ r_full.T
        head_layers.append(_Layer(_hull(project(nose3)), _scale_colour(s.skin, 0.86), outline))
    eye_r = max(0.6, 0.11 * s.head_half_width * hp)
    for eye in ("l_eye", "r_eye"):
        if normal_z[eye] > _FACE_DRAWN_ABOVE[eye]:
            head_layers.append(_Layer(_circle(p2[eye], eye_r), (35, 30, 30), False))
    if normal_z["mouth"] > _FACE_DRAWN_ABOVE["mouth"]:
        half = r_full @ np.array([0.28 * axes[0], 0.0, 0.0])
        m0 = project(p3["mouth"] - half)[0]
        m1 = project(p3["mouth"] + half)[0]
        mr = max(0.5, 0.045 * s.head_half_height * hp)
        head_layers.append(_Layer(_capsule(m0, m1, mr, mr), (70, 60, 150), False))
    groups.append(_Group("head", float(centre3[2]) + 0.02, head_layers))

    if s.long_hair:
        back = (_SPHERE[:, 2] < 0.0) & (_SPHERE[:, 1] < 0.5)
        strands_local = np.array(
            [
                (1.05, -2.2, -0.5), (-1.05, -2.2, -0.5), (0.85, -2.5, -0.9),
                (-0.85, -2.5, -0.9), (0.0, -2.6, -1.0),
            ]  # fmt: skip
        )
        pts = np.concatenate([_SPHERE[back] * axes, strands_local * axes]) @ r_full.T + centre3
        depth = float(pts[:, 2].mean())
        # A part of its own: an ear it covers is hidden, though the hair belongs to the head.
        groups.append(_Group("long_hair", depth, [_Layer(_hull(project(pts)), s.hair, outline)]))
    return groups


def _fill(
    image: np.ndarray | None,
    label: np.ndarray | None,
    mask: np.ndarray | None,
    polygon: np.ndarray,
    colour: Colour,
    code: int,
    outline: bool,
) -> None:
    pts = np.round(polygon * 16.0).astype(np.int32).reshape(-1, 1, 2)
    if image is not None:
        cv2.fillPoly(image, [pts], colour, lineType=cv2.LINE_AA, shift=4)
        if outline:
            dark = _scale_colour(colour, 0.62)
            cv2.polylines(image, [pts], True, dark, 1, lineType=cv2.LINE_AA, shift=4)
    if label is not None:
        cv2.fillPoly(label, [pts], code, lineType=cv2.LINE_8, shift=4)
    if mask is not None:
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)


def draw_person(
    image: np.ndarray | None,
    label: np.ndarray | None,
    mask: np.ndarray | None,
    person: PersonModel,
    code_base: int,
    *,
    per_part_codes: bool = True,
) -> None:
    """Draw a person far-to-near into the image, the label map and the person's own mask.

    Any target may be ``None``.  With ``per_part_codes`` the label map receives
    ``code_base + part id`` so keypoint visibility can be decided afterwards; otherwise every
    pixel gets ``code_base`` (background people nobody asks about).
    """
    for group in person.groups:
        code = code_base + PART_IDS[group.part] if per_part_codes else code_base
        for layer in group.layers:
            _fill(image, label, mask, layer.polygon, layer.colour, code, layer.outline)


# --------------------------------------------------------------------------- random sampling

_SKIN_TONES: tuple[Colour, ...] = (
    (189, 224, 255), (160, 200, 240), (125, 170, 225), (105, 150, 205),
    (80, 120, 175), (60, 95, 150), (40, 70, 115), (30, 50, 85),
)  # fmt: skip
_HAIR_COLOURS: tuple[Colour, ...] = (
    (20, 20, 25), (25, 35, 55), (35, 60, 95), (90, 160, 205), (150, 150, 155), (40, 60, 150),
)  # fmt: skip
_TROUSER_COLOURS: tuple[Colour, ...] = (
    (100, 55, 30), (35, 35, 35), (110, 110, 110), (120, 170, 190), (40, 60, 90), (70, 40, 20),
)  # fmt: skip
POSE_KINDS: tuple[str, ...] = ("standing", "walking", "arms_raised", "sitting", "reaching", "free")
_POSE_PROBS = (0.22, 0.22, 0.14, 0.12, 0.12, 0.18)


def _hsv_colour(rng: np.random.Generator, s_range: tuple[int, int], v_range: tuple[int, int]) -> Colour:
    hsv = np.array(
        [[[rng.integers(0, 180), rng.integers(s_range[0], s_range[1]), rng.integers(v_range[0], v_range[1])]]],
        dtype=np.uint8,
    )
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return (int(bgr[0]), int(bgr[1]), int(bgr[2]))


def _jitter(rng: np.random.Generator, colour: Colour, amount: int) -> Colour:
    c = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def sample_body_shape(rng: np.random.Generator) -> BodyShape:
    """Random plausible proportions (a few % around average adults) and clothing."""

    def var(x: float, sd: float = 0.04) -> float:
        return float(x * (1.0 + np.clip(rng.normal(0.0, sd), -2.5 * sd, 2.5 * sd)))

    frame = rng.uniform(-1.0, 1.0)  # broad shoulders versus broad hips
    trousers = (
        _TROUSER_COLOURS[int(rng.integers(len(_TROUSER_COLOURS)))]
        if rng.random() < 0.65
        else _hsv_colour(rng, (30, 220), (40, 200))
    )
    shoes = _jitter(rng, (35, 35, 40), 25) if rng.random() < 0.75 else _hsv_colour(rng, (0, 120), (150, 245))
    return BodyShape(
        spine=var(0.30, 0.03),
        neck=var(0.045, 0.08),
        head_half_height=var(0.066, 0.05),
        head_half_width=var(0.05, 0.05),
        head_half_depth=var(0.058, 0.05),
        shoulder_half=var(0.105 + 0.008 * frame, 0.04),
        waist_half=var(0.088 - 0.004 * frame, 0.08),
        hip_half=var(0.07 - 0.006 * frame, 0.05),
        upper_arm=var(0.17, 0.035),
        forearm=var(0.15, 0.035),
        hand=var(0.055, 0.05),
        thigh=var(0.245, 0.03),
        shin=var(0.245, 0.03),
        foot=var(0.075, 0.06),
        build=var(1.0, 0.12),
        hairline=float(rng.uniform(0.15, 0.5)),
        long_hair=bool(rng.random() < 0.3),
        long_sleeves=bool(rng.random() < 0.55),
        shorts=bool(rng.random() < 0.2),
        skin=_jitter(rng, _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], 12),
        hair=_jitter(rng, _HAIR_COLOURS[int(rng.integers(len(_HAIR_COLOURS)))], 12),
        shirt=_hsv_colour(rng, (40, 255), (60, 250)),
        trousers=_jitter(rng, trousers, 12),
        shoes=shoes,
    )


def sample_pose(rng: np.random.Generator, kind: str | None = None) -> BodyPose:
    """Random pose of a given kind (or a random kind) with angles inside anatomical limits."""
    if kind is None:
        kind = str(rng.choice(POSE_KINDS, p=_POSE_PROBS))
    u = rng.uniform

    def n(mean: float, sd: float, lo: float, hi: float) -> float:
        return float(np.clip(rng.normal(mean, sd), lo, hi))

    def arm_down() -> LimbAngles:
        return LimbAngles(n(0, 12, -30, 40), u(4, 25), u(-10, 40), u(0, 35))

    def leg_stand() -> LimbAngles:
        return LimbAngles(n(0, 5, -10, 20), u(0, 10), u(-20, 10), u(0, 12))

    def arm_free() -> LimbAngles:
        if rng.random() < 0.5:  # mostly forwards / upwards
            return LimbAngles(u(-40, 175), u(0, 35), u(-60, 80), u(0, 145))
        return LimbAngles(u(-20, 40), u(20, 165), u(-80, 60), u(0, 145))

    view = rng.choice(["front", "back", "left", "right", "oblique"], p=[0.38, 0.2, 0.14, 0.14, 0.14])
    yaw = {
        "front": n(0, 18, -45, 45),
        "back": 180.0 + n(0, 18, -45, 45),
        "left": -90.0 + n(0, 12, -30, 30),
        "right": 90.0 + n(0, 12, -30, 30),
        "oblique": u(-180, 180),
    }[str(view)]
    pitch = n(3, 4, -8, 15)
    l_arm, r_arm = arm_down(), arm_down()
    l_leg, r_leg = leg_stand(), leg_stand()
    if kind == "walking":
        swing, sign = u(15, 35), (1.0 if rng.random() < 0.5 else -1.0)
        fwd = LimbAngles(swing, u(0, 8), u(-15, 10), u(0, 20))
        back = LimbAngles(-swing * u(0.5, 0.8), u(0, 8), u(-15, 10), u(10, 45))
        l_leg, r_leg = (fwd, back) if sign > 0 else (back, fwd)
        l_arm = LimbAngles(-sign * swing * u(0.6, 1.2), u(4, 15), u(0, 30), u(5, 40))
        r_arm = LimbAngles(sign * swing * u(0.6, 1.2), u(4, 15), u(0, 30), u(5, 40))
    elif kind == "arms_raised":
        arms = []
        for _ in range(2):
            mode = rng.random()
            if mode < 0.4:
                arms.append(LimbAngles(u(140, 180), u(0, 30), u(-60, 30), u(0, 60)))
            elif mode < 0.8:
                arms.append(LimbAngles(u(-10, 40), u(70, 170), u(-80, 20), u(0, 70)))
            else:
                arms.append(arm_down())
        l_arm, r_arm = arms
    elif kind == "sitting":
        l_leg = LimbAngles(u(70, 105), u(3, 20), u(-15, 10), u(60, 110))
        r_leg = LimbAngles(u(70, 105), u(3, 20), u(-15, 10), u(60, 110))
        l_arm = LimbAngles(u(10, 60), u(5, 25), u(0, 60), u(20, 100))
        r_arm = LimbAngles(u(10, 60), u(5, 25), u(0, 60), u(20, 100))
        pitch = u(-5, 15)
    elif kind == "reaching":
        reach = LimbAngles(u(60, 130), u(0, 40), u(-20, 40), u(0, 40))
        if rng.random() < 0.5:
            l_arm = reach
        else:
            r_arm = reach
        if rng.random() < 0.5:
            lunge = LimbAngles(u(20, 60), u(0, 12), u(-15, 10), u(20, 70))
            rear = LimbAngles(u(-20, 5), u(0, 10), u(-15, 10), u(0, 30))
            l_leg, r_leg = (lunge, rear) if rng.random() < 0.5 else (rear, lunge)
        pitch = u(5, 30)
    elif kind == "free":
        l_arm, r_arm = arm_free(), arm_free()
        if rng.random() < 0.5:
            kick = LimbAngles(u(-20, 100), u(0, 45), u(-20, 20), u(0, 130))
            l_leg, r_leg = (kick, r_leg) if rng.random() < 0.5 else (l_leg, kick)
        elif rng.random() < 0.5:  # crouch
            depth = u(30, 100)
            l_leg = LimbAngles(depth, u(5, 25), u(-15, 10), min(140.0, depth * u(1.0, 1.4)))
            r_leg = LimbAngles(depth, u(5, 25), u(-15, 10), min(140.0, depth * u(1.0, 1.4)))
        pitch = u(-10, 35)
    return BodyPose(
        yaw=yaw,
        roll=n(0, 5, -15, 15),
        torso_pitch=pitch,
        torso_side=n(0, 4, -12, 12),
        torso_twist=n(0, 10, -30, 30),
        head_yaw=n(0, 20, -60, 60),
        head_pitch=n(0, 10, -35, 35),
        head_roll=n(0, 6, -20, 20),
        l_arm=l_arm,
        r_arm=r_arm,
        l_leg=l_leg,
        r_leg=r_leg,
        kind=kind,
    )


# --------------------------------------------------------------------------- scene rendering


@dataclass
class ScenePerson:
    """One annotated person of a rendered scene (kind ``person`` or ``tiny``)."""

    model: PersonModel
    kind: str
    code_base: int
    mask: np.ndarray  # amodal silhouette (the person as drawn, ignoring what covers it)
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((17, 3)))
    mpii_joints: np.ndarray = field(default_factory=lambda: np.zeros((16, 3)))

    @property
    def num_keypoints(self) -> int:
        return int((self.keypoints[:, 2] > 0).sum())


@dataclass
class Scene:
    """A rendered image with everything needed to write its annotations."""

    image: np.ndarray  # BGR uint8
    label: np.ndarray  # uint16 label map of what ended up on top
    people: list[ScenePerson]
    crowd_masks: list[np.ndarray]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered, textured background so the network has to find people, not contrast."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(1.0, float(t.max() - t.min()))
    grey = np.float32(rng.uniform(60, 200))
    c0 = grey + rng.uniform(0.3, 1.0) * (rng.uniform(0, 255, 3).astype(np.float32) - grey)
    c1 = grey + rng.uniform(0.3, 1.0) * (rng.uniform(0, 255, 3).astype(np.float32) - grey)
    img = c0 + t[..., None] * (c1 - c0)
    grid = int(rng.integers(2, 9))
    blobs = rng.uniform(-1.0, 1.0, (grid, grid, 3)).astype(np.float32)
    img += rng.uniform(10, 60) * cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    scale = min(width, height)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.random()
        if kind < 0.3:  # rectangles: furniture, windows, walls
            x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
            w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), colour, -1)
        elif kind < 0.42:  # striped patch: blinds, fences, tiles
            x0, x1 = sorted(int(v) for v in rng.uniform(0, width, 2))
            y0, y1 = sorted(int(v) for v in rng.uniform(0, height, 2))
            step = int(rng.integers(6, 24))
            thick = int(rng.integers(1, max(2, step // 2)))
            vertical = rng.random() < 0.5
            for k in range(x0 if vertical else y0, x1 if vertical else y1, step):
                p0, p1 = ((k, y0), (k, y1)) if vertical else ((x0, k), (x1, k))
                cv2.line(img, p0, p1, colour, thick)
        elif kind < 0.65:  # blobs
            centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            axes_ = (int(rng.uniform(0.03, 0.2) * scale), int(rng.uniform(0.03, 0.2) * scale))
            cv2.ellipse(img, centre, axes_, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind < 0.85:  # random polygons
            c = rng.uniform(0, 1, 2) * (width, height)
            pts = c + rng.normal(0, 0.12 * scale, (int(rng.integers(3, 7)), 2))
            cv2.fillPoly(img, [_hull(pts).round().astype(np.int32)], colour, cv2.LINE_AA)
        else:  # line clutter: poles, cables
            p0 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            cv2.line(img, p0, p1, colour, int(rng.integers(1, 6)), cv2.LINE_AA)
    noise = rng.normal(0, rng.uniform(2, 12), (height // 2, width // 2, 3)).astype(np.float32)
    noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _place(
    rng: np.random.Generator,
    model: PersonModel,
    width: int,
    height: int,
    outside: float,
    others: list[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    """Shift a person to a random spot, allowing up to ``outside`` of its box off-image."""
    x0, y0, x1, y1 = model.bounds()
    bw, bh = x1 - x0, y1 - y0
    best: tuple[float, float] = (width / 2.0, height / 2.0)
    for _ in range(8):
        lo_x, hi_x = bw / 2 - outside * bw, width - bw / 2 + outside * bw
        lo_y, hi_y = bh / 2 - outside * bh, height - bh / 2 + outside * bh
        cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else width / 2.0
        cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else height / 2.0
        best = (cx, cy)
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        if all(_iou(box, o) < 0.4 for o in others):
            break
    model.shift(best[0] - (x0 + x1) / 2, best[1] - (y0 + y1) / 2)
    return model.bounds()


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_crowd(rng: np.random.Generator, image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """A packed group of small people, annotated later as one iscrowd region."""
    height, width = image.shape[:2]
    rw, rh = rng.uniform(0.35, 0.7) * width, rng.uniform(0.22, 0.4) * height
    rx, ry = rng.uniform(0, width - rw), rng.uniform(0, height - rh)
    mask = np.zeros((height, width), np.uint8)
    members = []
    for _ in range(int(rng.integers(6, 13))):
        model = build_person(
            sample_body_shape(rng),
            sample_pose(rng, "standing" if rng.random() < 0.6 else "walking"),
            rng.uniform(0.55, 0.9) * rh,
        )
        x0, _, x1, y1 = model.bounds()
        foot_y = ry + rh - rng.uniform(0.0, 0.3) * rh
        model.shift(rng.uniform(rx, rx + rw) - (x0 + x1) / 2, foot_y - y1)
        members.append((foot_y, model))
    members.sort(key=lambda m: m[0])
    for _, model in members:
        draw_person(image, label, mask, model, _LABEL_BACKGROUND_PEOPLE, per_part_codes=False)
    return mask.astype(bool)


def _draw_occluder(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, person: PersonModel) -> None:
    """An object in front of the person covering some joints (which become v=1)."""
    joints = _COCO_POINTS[5:]
    centre = person.points2d[joints[int(rng.integers(len(joints)))]]
    centre = centre + rng.normal(0, 0.04 * person.height_px, 2)
    size = rng.uniform(0.12, 0.3) * person.height_px
    kind = rng.random()
    if kind < 0.35:  # box
        rect = ((float(centre[0]), float(centre[1])), (size * rng.uniform(0.6, 1.4), size * rng.uniform(0.6, 1.4)), float(rng.uniform(0, 90)))
        poly = cv2.boxPoints(rect).astype(np.float64)
    elif kind < 0.6:  # ball / round object
        poly = centre + np.stack(
            [size * 0.5 * np.cos(_CIRCLE) * rng.uniform(0.7, 1.3), size * 0.5 * np.sin(_CIRCLE)], axis=-1
        )
    elif kind < 0.8:  # irregular object
        poly = _hull(centre + rng.normal(0, 0.35 * size, (7, 2)))
    else:  # pole or table edge crossing the person
        length = rng.uniform(0.6, 1.5) * person.height_px
        thick = rng.uniform(0.06, 0.15) * person.height_px
        vertical = rng.random() < 0.5
        dims = (thick, length) if vertical else (length, thick)
        rect = ((float(centre[0]), float(centre[1])), dims, float(rng.uniform(-10, 10)))
        poly = cv2.boxPoints(rect).astype(np.float64)
    b, g, r = (int(c) for c in rng.integers(0, 256, 3))
    _fill(image, label, None, poly, (b, g, r), _LABEL_OCCLUDER, True)


def _postprocess(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Camera-like blur, exposure and sensor noise so edges are not perfectly synthetic."""
    img = image.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
    img += rng.normal(0, rng.uniform(1, 5), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def visible_keypoints(person: ScenePerson, label: np.ndarray) -> np.ndarray:
    """COCO keypoints (17, 3) with v from what ended up on top of each point."""
    height, width = label.shape
    model = person.model
    out = np.zeros((len(_COCO_POINTS), 3))
    for k, name in enumerate(_COCO_POINTS):
        x, y = model.points2d[name]
        if not (0.0 <= x <= width - 1 and 0.0 <= y <= height - 1):
            continue  # outside the image: unlabelled
        nz = model.normal_z.get(name, 1.0)
        if name in _FACE_POINTS and nz < -0.45:
            continue  # face seen from behind: COCO leaves it unlabelled
        hidden_by_head = (name in _FACE_DRAWN_ABOVE and nz <= _FACE_DRAWN_ABOVE[name]) or (
            name in _EAR_POINTS and nz <= _EAR_HIDDEN_BELOW
        )
        top = int(label[int(round(y)), int(round(x))])
        part = None
        if person.code_base <= top < person.code_base + _PARTS_PER_PERSON:
            part = _PART_NAMES[top - person.code_base]
        visible = part in _KEYPOINT_PARTS[name] and not hidden_by_head
        if visible and part in _TORSO_PARTS and name[2:] in ("shoulder", "hip"):
            # The torso is a volume: a shoulder/hip on its far half is behind it.
            other = ("r_" if name[0] == "l" else "l_") + name[2:]
            p, q = model.points3d[name], model.points3d[other]
            half = 0.5 * float(np.linalg.norm(p - q))
            visible = p[2] >= 0.5 * (p[2] + q[2]) - 0.4 * half
        out[k] = (x, y, 2.0 if visible else 1.0)
    return out


def _mpii_joints(person: ScenePerson, width: int, height: int) -> np.ndarray:
    """MPII joints (16, 3): 0-based x, y and 1 where labelled (inside the image).

    As in real MPII, occluded joints are labelled too; only points outside the image (or the
    face points COCO leaves unlabelled, which MPII does not use) are missing.
    """
    out = np.zeros((len(_MPII_POINTS), 3))
    coco = {name: person.keypoints[k] for k, name in enumerate(_COCO_POINTS)}
    for j, name in enumerate(_MPII_POINTS):
        if name in coco:
            if coco[name][2] > 0:
                out[j] = (coco[name][0], coco[name][1], 1.0)
            continue
        x, y = person.model.points2d[name]
        if 0.0 <= x <= width - 1 and 0.0 <= y <= height - 1:
            out[j] = (x, y, 1.0)
    return out


def render_scene(rng: np.random.Generator, config: SyntheticConfig) -> Scene:
    """Render one image: background, crowd, tiny people, main people, occluders, camera."""
    width, height = config.image_width, config.image_height
    image = _background(rng, height, width)
    label = np.zeros((height, width), np.uint16)
    crowd_masks: list[np.ndarray] = []
    people: list[ScenePerson] = []
    if rng.random() < config.crowd_prob:
        crowd = _draw_crowd(rng, image, label)
        if crowd.any():
            crowd_masks.append(crowd)
    if rng.random() < config.tiny_person_prob:
        for _ in range(int(rng.integers(1, 3))):
            model = build_person(sample_body_shape(rng), sample_pose(rng), rng.uniform(0.05, 0.11) * height)
            _place(rng, model, width, height, 0.0, [])
            mask = np.zeros((height, width), np.uint8)
            draw_person(image, label, mask, model, _LABEL_BACKGROUND_PEOPLE, per_part_codes=False)
            people.append(ScenePerson(model, "tiny", _LABEL_BACKGROUND_PEOPLE, mask.astype(bool)))

    count = int(rng.integers(1, config.max_people + 1))
    shrink = 1.0 - 0.08 * min(count - 1, 4)
    fractions = sorted(0.35 + 0.6 * shrink * float(rng.beta(2.0, 1.6)) for _ in range(count))
    boxes: list[tuple[float, float, float, float]] = []
    main: list[ScenePerson] = []
    for i, fraction in enumerate(fractions):  # small (far) people first, big (near) on top
        model = build_person(sample_body_shape(rng), sample_pose(rng), fraction * height)
        outside = 0.25 if rng.random() < 0.3 else 0.0
        boxes.append(_place(rng, model, width, height, outside, boxes))
        code = _FIRST_PERSON_CODE + _PARTS_PER_PERSON * i
        mask = np.zeros((height, width), np.uint8)
        draw_person(image, label, mask, model, code)
        main.append(ScenePerson(model, "person", code, mask.astype(bool)))
    for person in main:
        if rng.random() < config.occluder_prob:
            _draw_occluder(rng, image, label, person.model)
    for person in main:
        person.keypoints = visible_keypoints(person, label)
        person.mpii_joints = _mpii_joints(person, width, height)
    people.extend(main)
    image = _postprocess(rng, image)
    return Scene(image=image, label=label, people=people, crowd_masks=crowd_masks)


# --------------------------------------------------------------------------- annotation formats


def _mask_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]


def _mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a silhouette as COCO polygons (at least 3 points each)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        approx = cv2.approxPolyDP(contour, 0.75, True).reshape(-1, 2)
        if len(approx) >= 3:
            polygons.append([float(v) for v in approx.reshape(-1)])
    if not polygons:  # degenerate sliver: fall back to the box outline
        x, y, w, h = _mask_bbox(mask)
        polygons.append([x, y, x + w, y, x + w, y + h, x, y + h])
    return polygons


def _round(values: np.ndarray | list[float], ndigits: int = 2) -> list[float]:
    return [round(float(v), ndigits) for v in values]


def scene_annotations(scene: Scene, image_id: int, first_annotation_id: int) -> list[dict[str, Any]]:
    """COCO keypoint annotations of one scene (persons, zero-keypoint people, crowd regions)."""
    anns: list[dict[str, Any]] = []
    next_id = first_annotation_id
    for person in scene.people:
        if not person.mask.any():
            continue
        kps = person.keypoints if person.kind == "person" else np.zeros((17, 3))
        flat = []
        for x, y, v in kps:
            flat.extend([round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0])
        anns.append(
            {
                "id": next_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": _mask_polygons(person.mask),
                "area": float(person.mask.sum()),
                "bbox": _mask_bbox(person.mask),
                "num_keypoints": int((kps[:, 2] > 0).sum()),
                "keypoints": flat,
            }
        )
        next_id += 1
    for crowd in scene.crowd_masks:
        rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
        anns.append(
            {
                "id": next_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
                "area": float(crowd.sum()),
                "bbox": _mask_bbox(crowd),
                "num_keypoints": 0,
                "keypoints": [0] * (3 * len(COCO_KEYPOINT_NAMES)),
            }
        )
        next_id += 1
    return anns


def _fake_detections(
    rng: np.random.Generator,
    anns: list[dict[str, Any]],
    image_id: int,
    config: SyntheticConfig,
) -> list[dict[str, Any]]:
    """Detector-like boxes: jittered true boxes with high scores plus a few false positives."""
    width, height = config.image_width, config.image_height
    dets = []
    for ann in anns:
        if ann["iscrowd"] or ann["num_keypoints"] == 0:
            continue
        x, y, w, h = ann["bbox"]
        cx = x + w / 2 + rng.normal(0, 0.03 * w)
        cy = y + h / 2 + rng.normal(0, 0.03 * h)
        w2 = w * float(np.clip(1 + rng.normal(0, 0.04), 0.85, 1.15))
        h2 = h * float(np.clip(1 + rng.normal(0, 0.04), 0.85, 1.15))
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": 1,
                "bbox": _round([cx - w2 / 2, cy - h2 / 2, w2, h2]),
                "score": round(float(rng.uniform(0.55, 0.99)), 4),
            }
        )
    for _ in range(int(rng.poisson(config.detection_false_positives))):
        w, h = rng.uniform(0.1, 0.5) * width, rng.uniform(0.15, 0.6) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        dets.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "bbox": _round([x, y, w, h]),
                "score": round(float(rng.uniform(0.05, 0.45)), 4),
            }
        )
    return dets


def scene_mpii_entries(scene: Scene, file_name: str) -> list[dict[str, Any]]:
    """HRNet-style MPII entries (1-based coordinates) for the annotated people of a scene.

    ``scale`` is the larger side of the person's full extent / 200 (MPII: the box side is
    scale*200).  As in real MPII, ``center`` sits 15*scale pixels above the middle of the
    person's box; HRNet-style readers add 15*scale back before cropping.
    """
    entries = []
    for person in scene.people:
        if person.kind != "person" or person.num_keypoints == 0:
            continue
        x0, y0, x1, y1 = person.model.bounds()
        scale = max(x1 - x0, y1 - y0) / 200.0
        joints = person.mpii_joints
        coords = [[round(float(x) + 1.0, 2), round(float(y) + 1.0, 2)] if v > 0 else [0.0, 0.0] for x, y, v in joints]
        entries.append(
            {
                "image": file_name,
                "center": _round([(x0 + x1) / 2 + 1.0, (y0 + y1) / 2 - 15.0 * scale + 1.0]),
                "scale": round(scale, 4),
                "joints": coords,
                "joints_vis": [int(v > 0) for v in joints[:, 2]],
                "headbox": _head_box(person.model),
            }
        )
    return entries


def _head_box(model: PersonModel) -> list[list[float]]:
    """MPII-like head rectangle (1-based): a square, chin to crown, around the head."""
    top, neck = model.points2d["head_top"], model.points2d["upper_neck"]
    side = float(np.linalg.norm(model.points3d["head_top"] - model.points3d["upper_neck"])) * model.height_px
    mid = 0.5 * (top + neck) + 1.0
    return [_round(mid - side / 2), _round(mid + side / 2)]


def coco_categories() -> list[dict[str, Any]]:
    """The standard COCO person category with keypoint names and 1-based skeleton."""
    return [
        {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": list(COCO_KEYPOINT_NAMES),
            "skeleton": [list(pair) for pair in COCO_SKELETON],
        }
    ]


# --------------------------------------------------------------------------- files on disk


def synthetic_paths(root: Path | str) -> dict[str, Path]:
    """Where everything lives under ``root`` (the real COCO / HRNet-MPII layouts)."""
    root = Path(root)
    return {
        "manifest": root / MANIFEST_NAME,
        "train_annotations": root / "annotations" / "person_keypoints_train2017.json",
        "val_annotations": root / "annotations" / "person_keypoints_val2017.json",
        "train_images": root / "images" / SPLIT_DIRS["train"],
        "val_images": root / "images" / SPLIT_DIRS["val"],
        "detections": root / "person_detection_results" / "synthetic_val2017_detections.json",
        "mpii_train": root / "mpii" / "annot" / MPII_SPLIT_FILES["train"],
        "mpii_valid": root / "mpii" / "annot" / MPII_SPLIT_FILES["val"],
        "mpii_gt_valid": root / "mpii" / "annot" / "gt_valid.mat",
        "mpii_images": root / "mpii" / "images",
    }


def image_id_for(split: str, index: int) -> int:
    """Image id of the index-th image of a split (unique across splits, stable per split)."""
    return index + 1 + (VAL_IMAGE_ID_OFFSET if split == "val" else 0)


def image_file_name(image_id: int) -> str:
    """COCO-style file name: 12-digit zero-padded id."""
    return f"{image_id:012d}.jpg"


def _write_json(path: Path, obj: Any) -> None:
    """Written whole or not at all: a crash never leaves half a JSON file."""
    atomic_write(path, lambda stream: stream.write(json.dumps(obj, separators=(",", ":")).encode("utf-8")))


def _write_gt_valid(path: Path, entries: list[dict[str, Any]]) -> None:
    """HRNet's MPII evaluation file: positions, missing flags and head boxes (1-based)."""
    n = len(entries)
    pos = np.zeros((16, 2, n))
    missing = np.ones((16, n))
    heads = np.zeros((2, 2, n))
    for i, entry in enumerate(entries):
        pos[:, :, i] = np.asarray(entry["joints"], dtype=np.float64)
        missing[:, i] = 1 - np.asarray(entry["joints_vis"], dtype=np.float64)
        heads[:, :, i] = np.asarray(entry["headbox"], dtype=np.float64)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"pos_gt_src": pos, "jnt_missing": missing, "headboxes_src": heads})
    data = buffer.getvalue()
    # A MAT 5 file opens with 116 bytes of free text, which scipy fills with the time of writing:
    # a fixed text keeps the file the same from run to run, as every other generated file.
    header = b"MATLAB 5.0 MAT-file, written by pnfs_pipeline's synthetic dataset generator"
    atomic_write(path, lambda stream: stream.write(header.ljust(116) + data[116:]))


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        with open(root / MANIFEST_NAME, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def synthetic_dataset_exists(root: Path | str, config: SyntheticConfig) -> bool:
    """True when ``root`` holds a complete dataset generated with exactly this config.

    Lets a pipeline skip regeneration; any doubt (no/unreadable manifest, other config or
    format version, an interrupted run, a missing file) answers False.
    """
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None or (root / IN_PROGRESS_MARKER).exists():
        return False
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("config") != config.to_dict():
        return False
    paths = synthetic_paths(root)
    required = [paths["train_annotations"], paths["val_annotations"], paths["detections"]]
    if config.mpii:
        required += [paths["mpii_train"], paths["mpii_valid"], paths["mpii_gt_valid"]]
    if not all(p.is_file() for p in required):
        return False
    for split, count in (("train", config.num_train_images), ("val", config.num_val_images)):
        folders = [paths[f"{split}_images"]] + ([paths["mpii_images"]] if config.mpii else [])
        for i in range(count):
            name = image_file_name(image_id_for(split, i))
            if not all((folder / name).is_file() for folder in folders):
                return False
    return True


def _render_encoded(job: tuple[SyntheticConfig, int, int, list[int]]) -> tuple[Scene, bytes]:
    """Scene ``index`` of split ``split_index`` and its JPEG bytes (run in worker processes)."""
    config, split_index, index, jpeg_params = job
    scene = render_scene(np.random.default_rng([config.seed, split_index, index]), config)
    ok, buf = cv2.imencode(".jpg", scene.image, jpeg_params)
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for scene {index} of split {split_index}")
    return scene, buf.tobytes()


def _single_threaded_worker() -> None:
    cv2.setNumThreads(1)  # the processes are the parallelism; OpenCV's own threads would compete


@contextlib.contextmanager
def _scene_renderer(workers: int) -> Iterator[Callable[[Iterable], Iterator[tuple[Scene, bytes]]]]:
    """``map`` over rendering jobs, in order: in this process, or over ``workers`` processes.

    Every scene draws from its own seeded generator, so the dataset is the same either way.
    """
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if workers > 1 and main_file is not None and not Path(main_file).is_file():
        # Spawned workers re-import the main module; one read from stdin (``python -``) cannot be.
        logger.info("rendering in this process: worker processes cannot re-import %s", main_file)
        workers = 1
    if workers <= 1:
        yield lambda jobs: map(_render_encoded, jobs)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    pool = concurrent.futures.ProcessPoolExecutor(workers, context, initializer=_single_threaded_worker)

    def ordered(jobs: Iterable) -> Iterator[tuple[Scene, bytes]]:
        # A bounded window of scenes in flight: Executor.map would submit every job at once
        # and hold all finished scenes (~0.5 MB each) until they are written.
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        for job in jobs:
            pending.append(pool.submit(_render_encoded, job))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    try:
        yield ordered
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_generation_workers() -> int:
    """Processes for :func:`generate_synthetic_dataset`: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _write_split(
    paths: dict[str, Path],
    config: SyntheticConfig,
    split: str,
    split_index: int,
    rendered: Iterable[tuple[Scene, bytes]],
    next_ann_id: int,
    detections: list[dict[str, Any]],
    mpii: dict[str, list[dict[str, Any]]],
) -> tuple[dict[str, int], int]:
    """Write one split's images and COCO annotations; returns its counts and the next id."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, (scene, data) in enumerate(rendered):
        image_id = image_id_for(split, i)
        name = image_file_name(image_id)
        (paths[f"{split}_images"] / name).write_bytes(data)
        if config.mpii:
            (paths["mpii_images"] / name).write_bytes(data)
        images.append(
            {
                "license": 1,
                "id": image_id,
                "file_name": name,
                "width": config.image_width,
                "height": config.image_height,
            }
        )
        anns = scene_annotations(scene, image_id, next_ann_id)
        next_ann_id += len(anns)
        annotations.extend(anns)
        if split == "val":
            det_rng = np.random.default_rng([config.seed, 10 + split_index, i])
            detections.extend(_fake_detections(det_rng, anns, image_id, config))
        if config.mpii:
            mpii[split].extend(scene_mpii_entries(scene, name))
    _write_json(
        paths[f"{split}_annotations"],
        {
            "info": {
                "description": "pnfs_pipeline synthetic keypoint dataset (procedurally rendered)",
                "version": f"{FORMAT_VERSION}",
                "year": 2024,
                "contributor": "pnfs_pipeline.data.synthetic",
                "date_created": "",
            },
            "licenses": [{"id": 1, "name": "Synthetic data, no restrictions", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": coco_categories(),
        },
    )
    people = [a for a in annotations if not a["iscrowd"] and a["num_keypoints"] > 0]
    vis = [a["keypoints"][2::3] for a in people]
    counts = {
        "images": len(images),
        "annotations": len(annotations),
        "persons": len(people),
        "zero_keypoint_persons": sum(1 for a in annotations if not a["iscrowd"] and a["num_keypoints"] == 0),
        "crowd_regions": sum(1 for a in annotations if a["iscrowd"]),
        "labelled_keypoints": sum(sum(1 for v in vs if v > 0) for vs in vis),
        "visible_keypoints": sum(sum(1 for v in vs if v == 2) for vs in vis),
    }
    return counts, next_ann_id


def _marker_says_mpii(marker: Path) -> bool:
    """Whether the interrupted generation that left ``marker`` may have written MPII files (an
    older marker, plain text, does not say: taken as yes)."""
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")).get("mpii_files", True))
    except (OSError, ValueError, AttributeError):
        return True


def _written_by(mpii: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The files and image folders (keys of :func:`synthetic_paths`) a generation writes."""
    files = ("train_annotations", "val_annotations", "detections") + (("mpii_train", "mpii_valid", "mpii_gt_valid") if mpii else ())
    folders = ("train_images", "val_images") + (("mpii_images",) if mpii else ())
    return files, folders


def generate_synthetic_dataset(
    root: Path | str,
    config: SyntheticConfig,
    *,
    overwrite_foreign: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Write the dataset under ``root``; return a summary (counts per split, timing).

    The manifest is removed first and written last, so an interrupted run is never taken
    for a complete dataset.  To avoid clobbering a real dataset placed at ``root`` by
    mistake, any file this would write (annotations, detections, the MPII files, images)
    that an earlier generation here did not write (as its manifest, or the marker of an
    interrupted one, says) raises ``FileExistsError`` unless ``overwrite_foreign`` is set.
    ``workers`` > 1 renders in that many processes; the files are the same as with one.
    """
    start = time.perf_counter()
    root = Path(root)
    paths = synthetic_paths(root)
    files, folders = _written_by(config.mpii)
    # What an earlier generation here wrote (its manifest, or an interrupted one's marker, says
    # whether that included the MPII files) may be replaced; anything else at a path this one
    # writes is someone's data.
    manifest, marker = _read_manifest(root), root / IN_PROGRESS_MARKER
    if manifest is not None:
        wrote_mpii: bool | None = bool(manifest.get("config", {}).get("mpii", True))
    elif marker.exists():
        wrote_mpii = _marker_says_mpii(marker)
    else:
        wrote_mpii = None
    ours = set() if wrote_mpii is None else set(sum(_written_by(wrote_mpii), ()))
    foreign = [paths[k] for k in files if k not in ours and paths[k].exists()]
    foreign += [paths[k] for k in folders if k not in ours and paths[k].is_dir() and any(paths[k].iterdir())]
    if foreign and not overwrite_foreign:
        raise FileExistsError(
            f"{root} already holds data that was not generated here ({', '.join(str(f) for f in foreign[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}); refusing to overwrite it: point data.root at another folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"generation_in_progress": True, "mpii_files": config.mpii or bool(wrote_mpii)}), encoding="utf-8")
    paths["manifest"].unlink(missing_ok=True)
    for key in ("train_images", "val_images") + (("mpii_images",) if config.mpii else ()):
        paths[key].mkdir(parents=True, exist_ok=True)
    logger.info(
        "Generating synthetic keypoint dataset in %s (%d train + %d val images, %dx%d, seed %d)",
        root, config.num_train_images, config.num_val_images,
        config.image_width, config.image_height, config.seed,
    )  # fmt: skip

    summary: dict[str, Any] = {"format_version": FORMAT_VERSION, "splits": {}}
    detections: list[dict[str, Any]] = []
    mpii: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    next_ann_id = 1
    params = [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]
    with _scene_renderer(workers) as render_all:
        for split_index, (split, count) in enumerate(
            (("train", config.num_train_images), ("val", config.num_val_images))
        ):
            rendered = track(
                render_all((config, split_index, i, params) for i in range(count)),
                f"rendering {count} {split} images",
                total=count,
            )
            summary["splits"][split], next_ann_id = _write_split(
                paths, config, split, split_index, rendered, next_ann_id, detections, mpii
            )
    _write_json(paths["detections"], detections)
    summary["detections"] = len(detections)
    if config.mpii:
        for split in ("train", "val"):
            entries = [{k: v for k, v in e.items() if k != "headbox"} for e in mpii[split]]
            _write_json(paths[f"mpii_{'train' if split == 'train' else 'valid'}"], entries)
        _write_gt_valid(paths["mpii_gt_valid"], mpii["val"])
        summary["mpii"] = {"train": len(mpii["train"]), "valid": len(mpii["val"])}
    summary["seconds"] = round(time.perf_counter() - start, 3)
    _write_json(paths["manifest"], {"format_version": FORMAT_VERSION, "config": config.to_dict(), "summary": summary})
    (root / IN_PROGRESS_MARKER).unlink(missing_ok=True)
    logger.info("Synthetic dataset ready in %.1fs: %s", summary["seconds"], summary)
    return summary
