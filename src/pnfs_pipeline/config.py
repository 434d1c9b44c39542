"""Typed parameters, validated where a node receives them.

Every parameter group of ``conf/*/parameters_*.yml`` has a pydantic model here. Unknown keys and bad
values fail early with the parameter's dotted name in the message (``parse_params``), instead of
surfacing as a confusing error deep in a training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParameterError(ValueError):
    """A parameter group failed validation; the message names each offending parameter."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ModelT = TypeVar("ModelT", bound=StrictModel)


def parse_params(model: type[ModelT], raw: Any, name: str) -> ModelT:
    """Validate ``raw`` (the dict Kedro passes for ``params:<name>``) against ``model``."""
    if isinstance(raw, model):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParameterError(f"parameter '{name}' must be a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            location = ".".join(str(part) for part in (name, *problem["loc"]))
            lines.append(f"parameter '{location}': {problem['msg']}")
        raise ParameterError("invalid parameters:\n  " + "\n  ".join(lines)) from None


class DataParams(StrictModel):
    """Where the raw keypoint data lives and what it is."""

    # synthetic / synthetic_mpii: generate the embedded dataset under root (the MPII-style
    # variant is read from root/mpii); coco / mpii: read a real dataset from root.
    source: Literal["synthetic", "synthetic_mpii", "coco", "mpii"] = "synthetic"
    root: str = "data/01_raw/synthetic"
    keypoint_spec: str = "coco"
    train_split: str = "train2017"
    val_split: str = "val2017"
    detections_file: str | None = None
    detection_score_threshold: float = Field(0.0, ge=0.0, le=1.0)
    check_images: Literal["decode", "exists"] = "decode"
    on_bad_record: Literal["skip", "fail"] = "skip"
    max_train_samples: int | None = Field(None, gt=0)
    max_val_samples: int | None = Field(None, gt=0)

    @property
    def layout(self) -> Literal["coco", "mpii"]:
        return "mpii" if self.source in ("mpii", "synthetic_mpii") else "coco"

    @property
    def layout_root(self) -> str:
        """The folder that holds the standard layout (the synthetic MPII variant lives in root/mpii)."""
        return str(Path(self.root) / "mpii") if self.source == "synthetic_mpii" else self.root


class SyntheticParams(StrictModel):
    """Size and content of the embedded synthetic dataset (see ``data.synthetic``)."""

    seed: int = 0
    num_train_images: int = Field(160, gt=0)
    num_val_images: int = Field(48, gt=0)
    image_width: int = Field(256, ge=64)
    image_height: int = Field(256, ge=64)
    max_people: int = Field(3, ge=1)
    crowd_prob: float = Field(0.1, ge=0.0, le=1.0)
    occluder_prob: float = Field(0.3, ge=0.0, le=1.0)
    tiny_person_prob: float = Field(0.05, ge=0.0, le=1.0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    mpii: bool = True
    detection_false_positives: float = Field(0.1, ge=0.0)


class SampleParams(StrictModel):
    """Geometry of one top-down training sample: crop, heatmap and target."""

    input_size: tuple[int, int] = (96, 128)  # width, height
    heatmap_size: tuple[int, int] = (24, 32)  # width, height
    sigma: float = Field(2.0, gt=0.0)
    box_padding: float = Field(1.25, ge=1.0)
    use_joint_weights: bool = False

    @field_validator("input_size", "heatmap_size")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError("width and height must be positive")
        return value

    @model_validator(mode="after")
    def _same_aspect(self) -> SampleParams:
        (iw, ih), (hw, hh) = self.input_size, self.heatmap_size
        if iw * hh != ih * hw:
            raise ValueError(
                f"heatmap_size {self.heatmap_size} must have the aspect ratio of input_size {self.input_size}"
            )
        return self

    @property
    def aspect_ratio(self) -> float:
        return self.input_size[0] / self.input_size[1]


class AugmentationParams(StrictModel):
    """Training augmentation, HRNet-style; defaults follow the PNFS configs."""

    enabled: bool = True
    scale_factor: float = Field(0.30, ge=0.0, lt=1.0)
    rotation_factor: float = Field(45.0, ge=0.0, le=180.0)
    rotation_prob: float = Field(0.6, ge=0.0, le=1.0)
    flip: bool = True
    half_body_prob: float = Field(0.3, ge=0.0, le=1.0)
    half_body_min_joints: int = Field(8, ge=2)


class PreviewParams(StrictModel):
    """The figure of augmented samples written by ``prepare``."""

    num_samples: int = Field(8, ge=1, le=64)
    seed: int = 0
