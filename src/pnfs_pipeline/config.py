"""Typed parameters, validated where a node receives them.

Every parameter group of ``conf/*/parameters_*.yml`` has a pydantic model here. Unknown keys and bad
values fail early with the parameter's dotted name in the message (``parse_params``), instead of
surfacing as a confusing error deep in a training loop.
"""

from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ParameterError(ValueError):
    """A parameter group failed validation; the message names each offending parameter."""


class StrictModel(BaseModel):
    # No inf / NaN: an infinite sigma or learning rate is accepted by every bound and fails (or
    # trains nothing) hours later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # pydantic's lax mode reads true / false as 1 / 0 for a number, so `epochs: true` would train
    # one epoch; a YAML boolean is refused wherever the field takes no boolean.
    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        if _boolean_where_none_belongs(annotation, value):
            shown = value if isinstance(value, bool) else value if isinstance(value, dict) else list(value)
            where = "a boolean" if isinstance(value, bool) else f"a boolean in {shown!r}"
            where = where.replace("True", "true").replace("False", "false")
            hint = " (a number is written without true/false)" if _takes_number(annotation) else ""
            raise ValueError(f"{where} where {_describe(annotation)} is expected{hint}")
        return value


def _plain(annotation: Any) -> Any:
    """``Annotated[T, ...]`` (PositiveFloat and the like) as ``T``."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _takes_boolean(annotation: Any) -> bool:
    annotation = _plain(annotation)
    if annotation is bool or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Literal:
        return any(isinstance(choice, bool) for choice in get_args(annotation))
    if origin in (Union, types.UnionType):
        return any(_takes_boolean(member) for member in get_args(annotation))
    return False


def _takes_number(annotation: Any) -> bool:
    annotation = _plain(annotation)
    if annotation in (int, float):
        return True
    return any(_takes_number(member) for member in get_args(annotation) if member is not Ellipsis)


def _boolean_where_none_belongs(annotation: Any, value: Any) -> bool:
    annotation = _plain(annotation)
    if isinstance(value, bool):
        return not _takes_boolean(annotation)
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [member for member in get_args(annotation) if member is not type(None)]
        return bool(members) and all(_boolean_where_none_belongs(member, value) for member in members)
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        items = [item for item in get_args(annotation) if item is not Ellipsis]
        if not items:
            return False
        if origin is tuple and len(items) > 1:
            return any(_boolean_where_none_belongs(item, element) for item, element in zip(items, value, strict=False))
        return any(_boolean_where_none_belongs(items[0], element) for element in value)
    if origin is dict and isinstance(value, dict):
        value_type = get_args(annotation)[1] if len(get_args(annotation)) == 2 else Any
        return any(_boolean_where_none_belongs(value_type, element) for element in value.values())
    return False


def _describe(annotation: Any) -> str:
    """A type as a person writes it: ``dict[str, float] | None``."""
    annotation = _plain(annotation)
    origin = get_origin(annotation)
    if annotation is type(None):
        return "None"
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(_describe(member) for member in get_args(annotation))
    if origin is Literal:
        return " | ".join(repr(choice) for choice in get_args(annotation))
    inner = ", ".join("..." if item is Ellipsis else _describe(item) for item in get_args(annotation))
    return f"{getattr(origin, '__name__', origin)}[{inner}]"


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
    subset_seed: int = Field(0, ge=0)  # draws those subsets (training people: subset_seed, images: subset_seed + 1)

    @property
    def layout(self) -> Literal["coco", "mpii"]:
        return "mpii" if self.source in ("mpii", "synthetic_mpii") else "coco"

    @property
    def layout_root(self) -> str:
        """The folder that holds the standard layout (the synthetic MPII variant lives in root/mpii)."""
        return str(Path(self.root) / "mpii") if self.source == "synthetic_mpii" else self.root


class SyntheticParams(StrictModel):
    """Size and content of the embedded synthetic dataset (see ``data.synthetic``)."""

    seed: int = Field(0, ge=0)
    num_train_images: int = Field(160, gt=0, lt=1_000_000)  # image ids: validation's start at 1,000,000
    num_val_images: int = Field(48, gt=0)
    image_width: int = Field(256, ge=64)
    image_height: int = Field(256, ge=64)
    max_people: int = Field(3, ge=1, le=50)
    crowd_prob: float = Field(0.1, ge=0.0, le=1.0)
    occluder_prob: float = Field(0.3, ge=0.0, le=1.0)
    tiny_person_prob: float = Field(0.05, ge=0.0, le=1.0)
    jpeg_quality: int = Field(90, ge=1, le=100)
    mpii: bool = True
    detection_false_positives: float = Field(0.1, ge=0.0)
    # Processes that render the images (the same files for any number); null: the usable
    # cores, at most 8. Not part of the dataset's identity: changing it does not regenerate.
    workers: int | None = Field(None, ge=1)


class SampleParams(StrictModel):
    """Geometry of one top-down training sample: crop, heatmap and target."""

    input_size: tuple[int, int] = (96, 128)  # width, height
    heatmap_size: tuple[int, int] = (24, 32)  # width, height
    sigma: float = Field(2.0, gt=0.0)
    # Per keypoint or per part (a part name of the keypoint spec, e.g. head): overrides ``sigma``.
    keypoint_sigmas: dict[str, PositiveFloat] = Field(default_factory=dict)
    box_padding: float = Field(1.25, ge=1.0)
    use_joint_weights: bool = False
    # Keep decoded images in memory after their first use (per data-loading process): decoding is
    # half the loader's time on small crops; only for datasets that fit (the synthetic default ~0.5 GB).
    cache_images: bool = False

    @field_validator("input_size", "heatmap_size")
    @classmethod
    def _positive(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError("width and height must be positive")
        return value

    @model_validator(mode="after")
    def _stride_four(self) -> SampleParams:
        (iw, ih), (hw, hh) = self.input_size, self.heatmap_size
        if iw * hh != ih * hw:
            raise ValueError(
                f"heatmap_size {self.heatmap_size} must have the aspect ratio of input_size {self.input_size}"
            )
        if (iw, ih) != (4 * hw, 4 * hh):
            raise ValueError(
                f"heatmap_size {self.heatmap_size} must be input_size {self.input_size} / 4: "
                "the networks' heatmaps come from their stride-4 maps"
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
    seed: int = Field(0, ge=0)


class FabricParams(StrictModel):
    """Search space of each part's fabric (the original's ``cell_config``)."""

    operators: tuple[str, ...] = ("zero", "skip_connect", "sep_conv_3x3", "atr_conv_3x3")
    depth: int = Field(6, ge=2)
    cut_layers_num: int = Field(3, ge=0)
    size_types: tuple[int, ...] = (4, 8, 16, 32)
    factor: int = Field(16, ge=1)
    hidden_states_num: int = Field(1, ge=1)
    input_nodes_num: int = Field(1, ge=1, le=2)
    share_alpha: bool = True

    @model_validator(mode="after")
    def _cut_below_depth(self) -> FabricParams:
        if self.cut_layers_num >= self.depth:
            raise ValueError(f"cut_layers_num ({self.cut_layers_num}) must be below depth ({self.depth})")
        return self

    @field_validator("size_types")
    @classmethod
    def _scales_fine_to_coarse(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError(f"needs one positive width multiple per fabric scale, got {list(value)}")
        if list(value) != sorted(value):
            raise ValueError(f"scales go from fine to coarse (non-decreasing widths), got {list(value)}")
        return value

    @field_validator("operators")
    @classmethod
    def _known_operators(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from pnfs_pipeline.nas.ops import canonical_op_names

        return canonical_op_names(value)


class HeadParams(StrictModel):
    vector_in_pixel: bool = True
    vector_dim: int = Field(8, ge=1)
    convolution_mode: Literal["2D", "3D"] = "2D"
    combine: Literal["sum", "mean"] = "sum"


class ModelParams(StrictModel):
    """The pose network: backbone, body-part grouping, fabric search space and heads."""

    backbone: str = "mobilenet_v2"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)
    pretrained_backbone: str | None = None  # a local file; nothing is downloaded
    frozen_backbone: bool = False
    num_parts: int = Field(3, ge=1)
    fabric: FabricParams = FabricParams()
    head: HeadParams = HeadParams()

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from pnfs_pipeline.nas.backbones import BACKBONE_ALIASES, BACKBONES

        key = BACKBONE_ALIASES.get(value.lower(), value.lower())
        if key not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}; valid: {sorted(BACKBONES)}")
        return key

    @field_validator("backbone_kwargs")
    @classmethod
    def _backbone_takes_its_keywords(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        import inspect

        from pnfs_pipeline.nas.backbones import BACKBONES

        backbone = info.data.get("backbone")  # absent when the backbone itself failed validation
        if backbone not in BACKBONES:
            return value
        accepted = inspect.signature(BACKBONES[backbone]).parameters
        unknown = sorted(set(value) - set(accepted))
        if unknown:
            raise ValueError(f"{unknown} are not arguments of backbone {backbone!r} (it takes {sorted(accepted)})")
        # The backbones' counts (widths, depths, layers) are positive integers and their lists
        # lists: anything else failed only when the search built the network, after prepare.
        for name, given in value.items():
            default = accepted[name].default
            if isinstance(default, int) and not isinstance(default, bool):
                if isinstance(given, bool) or not isinstance(given, int) or given < 1:
                    raise ValueError(f"{name} of backbone {backbone!r} must be a positive integer, got {given!r}")
            elif isinstance(default, tuple) and not isinstance(given, list | tuple):
                raise ValueError(f"{name} of backbone {backbone!r} must be a list, got {given!r}")
        return value


class StrategyParams(StrictModel):
    name: str = "sync"
    arch_lr: float = Field(0.03, gt=0)
    arch_weight_decay: float = Field(0.01, ge=0)
    arch_warmup_epochs: int = Field(0, ge=0)
    split_for_train: int = Field(2, ge=1)
    split_for_arch: int = Field(1, ge=1)
    gumbel_tau_max: float = Field(10.0, gt=0)
    gumbel_tau_min: float = Field(0.1, gt=0)
    random_candidates: int = Field(8, ge=1)
    seed: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from pnfs_pipeline.nas.strategies import canonical_strategy

        return canonical_strategy(value)

    @model_validator(mode="after")
    def _temperature_falls(self) -> StrategyParams:
        if self.gumbel_tau_min > self.gumbel_tau_max:
            raise ValueError(
                f"gumbel_tau_min {self.gumbel_tau_min} is above gumbel_tau_max {self.gumbel_tau_max}: "
                "the temperature anneals from max to min"
            )
        return self


class TrainerParams(StrictModel):
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["multistep", "cosine"] = "multistep"
    lr_steps: tuple[int, ...] = ()
    lr_factor: float = Field(0.25, gt=0, le=1)  # multiplies the rate at each of lr_steps
    lr_min: float = Field(5e-5, ge=0)
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    seed: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    val_max_batches: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None keeps torch's default
    nproc_per_node: int = Field(1, ge=1)  # > 1: local DistributedDataParallel workers
    cudnn_benchmark: bool = True  # GPU: cuDNN times its algorithms once for the fixed input size (the original's)
    heatmap_foreground_weight: float = Field(0.0, ge=0)  # 0: the paper's plain heatmap MSE
    ohkm_topk: int = Field(0, ge=0)  # > 0: online hard keypoint mining over the k hardest joints

    @model_validator(mode="after")
    def _batch_splits_over_the_workers(self) -> TrainerParams:
        if self.batch_size % self.nproc_per_node:
            raise ValueError(
                f"batch_size {self.batch_size} (the global batch) must divide by nproc_per_node {self.nproc_per_node}"
            )
        return self

    @model_validator(mode="after")
    def _schedule_is_what_it_says(self) -> TrainerParams:
        steps = list(self.lr_steps)
        if self.scheduler == "cosine":
            if steps:
                raise ValueError(f"lr_steps {steps} are for scheduler multistep; cosine would ignore them")
            if self.lr_min > self.lr:
                raise ValueError(f"lr_min {self.lr_min} is above lr {self.lr}: the cosine schedule would raise the rate")
        elif steps and (steps != sorted(set(steps)) or steps[0] < 1):
            # Steps at or past `epochs` are allowed: a resumed run may end sooner than planned.
            raise ValueError(f"lr_steps {steps} must increase from epoch 1 on: others decay at the start or twice")
        return self


def _checkpoint_file(value: str) -> str:
    if not value.strip() or Path(value).is_dir():
        raise ValueError(f"must name a file to write (a folder or an empty name cannot hold the checkpoint), got {value!r}")
    return value


class SearchParams(StrictModel):
    strategy: StrategyParams = StrategyParams()
    trainer: TrainerParams = TrainerParams()
    resume: bool = False
    checkpoint_path: str = "data/06_models/search_last.pt"

    _checkpoint_is_a_file = field_validator("checkpoint_path")(_checkpoint_file)

    @model_validator(mode="after")
    def _architecture_trains_after_warm_up(self) -> SearchParams:
        from pnfs_pipeline.nas.strategies import ARCHITECTURE_TRAINING_STRATEGIES

        trains = self.strategy.name in ARCHITECTURE_TRAINING_STRATEGIES
        if trains and self.strategy.arch_warmup_epochs >= self.trainer.epochs:
            raise ValueError(
                f"strategy.arch_warmup_epochs {self.strategy.arch_warmup_epochs} leaves none of the "
                f"{self.trainer.epochs} epochs to train the architecture (strategy {self.strategy.name!r})"
            )
        return self


class DeriveParams(StrictModel):
    rule: Literal["threshold", "path", "top1", "original"] = "path"
    threshold: float = Field(0.3, gt=0.0, le=1.0)
    latency_repeats: int = Field(10, ge=1)
    latency_threads: int | None = Field(None, ge=1)


class RetrainParams(StrictModel):
    init: Literal["inherit", "scratch"] = "inherit"
    # Target widths while retraining, by part or keypoint name like sample.keypoint_sigmas, which
    # they replace (the search keeps sample's); null: retrain with sample's targets.
    keypoint_sigmas: dict[str, PositiveFloat] | None = None
    trainer: TrainerParams = TrainerParams()
    resume: bool = False
    checkpoint_path: str = "data/06_models/retrain_last.pt"

    _checkpoint_is_a_file = field_validator("checkpoint_path")(_checkpoint_file)


FlipShift = Literal["exact", "reference", "none"]  # see evaluation.predict.flip_shift_pixels


def _odd_kernel(value: int) -> int:
    if value % 2 == 0:
        raise ValueError(f"must be odd (a centred smoothing window), got {value}")
    return value


def _crop_scales(value: tuple[float, ...]) -> tuple[float, ...]:
    if not value:
        raise ValueError("needs at least one crop scale (1.0: the box itself)")
    if any(not 0.25 <= scale <= 4.0 for scale in value):
        raise ValueError(f"crop scales multiply the box size and must lie in [0.25, 4], got {list(value)}")
    if len(set(value)) != len(value):
        raise ValueError(f"crop scales repeat: {list(value)}")
    return value


class EvaluateParams(StrictModel):
    checkpoint: str | None = None  # any checkpoint file; null scores the retrained model
    boxes: Literal["ground_truth", "detections"] = "ground_truth"
    flip_test: bool = True
    decode: Literal["argmax", "dark"] = "dark"
    dark_kernel: int = Field(3, ge=1)  # odd smoothing window of decode=dark (1: none)
    flip_shift: FlipShift = "exact"
    batch_size: int = Field(32, ge=1)
    vis_threshold: float = Field(0.2, ge=0.0, le=1.0)
    nms: Literal["oks", "soft", "none"] = "oks"
    nms_threshold: float = Field(0.9, gt=0.0, le=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_overlays: int = Field(6, ge=0, le=64)
    seed: int = Field(0, ge=0)
    # multi-scale testing: crops at these multiples of each box (same centre; < 1 zooms in), heatmaps averaged
    crop_scales: tuple[float, ...] = (1.0,)

    _dark_kernel_is_odd = field_validator("dark_kernel")(_odd_kernel)
    _crop_scales_valid = field_validator("crop_scales")(_crop_scales)


class PredictParams(StrictModel):
    boxes_file: str | None = None  # JSON list of {file_name, bbox: [x, y, w, h], score}
    flip_test: bool = True
    decode: Literal["argmax", "dark"] = "dark"
    dark_kernel: int = Field(3, ge=1)
    flip_shift: FlipShift = "exact"
    batch_size: int = Field(16, ge=1)
    vis_threshold: float = Field(0.2, ge=0.0, le=1.0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # multi-scale testing: crops at these multiples of each box (same centre; < 1 zooms in), heatmaps averaged
    crop_scales: tuple[float, ...] = (1.0,)

    _dark_kernel_is_odd = field_validator("dark_kernel")(_odd_kernel)
    _crop_scales_valid = field_validator("crop_scales")(_crop_scales)


# Every parameter group of conf/*/parameters_*.yml and its model: what a run checks up front.
PARAMETER_GROUPS: dict[str, type[StrictModel]] = {
    "data": DataParams,
    "synthetic": SyntheticParams,
    "sample": SampleParams,
    "augmentation": AugmentationParams,
    "preview": PreviewParams,
    "model": ModelParams,
    "search": SearchParams,
    "derive": DeriveParams,
    "retrain": RetrainParams,
    "evaluate": EvaluateParams,
    "predict": PredictParams,
}


def check_parameters(groups: dict[str, Any]) -> dict[str, StrictModel]:
    """Validate the given parameter groups and how they fit together, reporting every problem
    at once: a run then fails before its first node, not hours in, when a later group is wrong.

    A name that is no parameter group (a misspelled ``sampel``) is a problem too. Cross-group
    checks: ``model.num_parts`` is a grouping of the keypoint spec (``data.keypoint_spec``), the
    target-width overrides name its keypoints or parts, and online hard keypoint mining keeps at
    most its keypoint count.
    """
    parsed: dict[str, StrictModel] = {}
    problems: list[str] = []
    for name, raw in groups.items():
        if name not in PARAMETER_GROUPS:
            problems.append(f"parameter '{name}': no such parameter group; the groups are {sorted(PARAMETER_GROUPS)}")
            continue
        if raw is None:
            # A group whose keys are all commented out in conf/local replaces conf/base's with null.
            problems.append(f"parameter '{name}': is null (every key commented out?): give it keys or remove it")
            continue
        try:
            parsed[name] = parse_params(PARAMETER_GROUPS[name], raw, name)
        except ParameterError as error:
            problems += [line.strip() for line in str(error).splitlines()[1:]]
    if "data" in parsed:
        problems += _spec_problems(parsed)
    synthetic = parsed.get("synthetic")
    if "data" in parsed and parsed["data"].source == "synthetic_mpii" and synthetic is not None and not synthetic.mpii:
        problems.append(
            "parameter 'synthetic.mpii': false, but data.source is synthetic_mpii, which reads the MPII "
            "files only synthetic.mpii writes (stale or missing ones would be read instead)"
        )
    # The pretrained backbone is read by the search, and by a retraining from scratch only.
    retrain = parsed.get("retrain")
    loads_backbone = "search" in parsed or (retrain is not None and retrain.init == "scratch")
    files = [
        ("evaluate.checkpoint", getattr(parsed.get("evaluate"), "checkpoint", None)),
        ("model.pretrained_backbone", getattr(parsed.get("model"), "pretrained_backbone", None) if loads_backbone else None),
        ("predict.boxes_file", getattr(parsed.get("predict"), "boxes_file", None)),
    ]
    problems += [f"parameter '{name}': no file {value}" for name, value in files if value and not Path(value).is_file()]
    problems += _device_problems(parsed)
    if problems:
        raise ParameterError("invalid parameters:\n  " + "\n  ".join(problems))
    return parsed


def _device_problems(parsed: dict[str, Any]) -> list[str]:
    devices = {
        "search.trainer.device": getattr(getattr(parsed.get("search"), "trainer", None), "device", None),
        "retrain.trainer.device": getattr(getattr(parsed.get("retrain"), "trainer", None), "device", None),
        "evaluate.device": getattr(parsed.get("evaluate"), "device", None),
        "predict.device": getattr(parsed.get("predict"), "device", None),
    }
    # Under torchrun (WORLD_SIZE set) the trainer joins its job and launches no workers.
    launched = {} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {
        f"{group}.trainer.nproc_per_node": trainer
        for group in ("search", "retrain")
        if (trainer := getattr(parsed.get(group), "trainer", None)) is not None and trainer.nproc_per_node > 1
    }
    if "cuda" not in devices.values() and not launched:
        return []
    import torch

    if not torch.cuda.is_available():
        return [f"parameter '{name}': 'cuda', but this machine has no CUDA device (auto uses one where present)"
                for name, device in devices.items() if device == "cuda"]
    # NCCL refuses two workers on one GPU ("Duplicate GPU detected") at its first collective.
    count = torch.cuda.device_count()
    return [
        f"parameter '{name}': {trainer.nproc_per_node} workers, but this machine shows {count} GPU(s) and each "
        f"worker needs one of its own; launch at most {count}, or train on the CPU (device: cpu)"
        for name, trainer in launched.items()
        if trainer.device != "cpu" and trainer.nproc_per_node > count
    ]


def _spec_problems(parsed: dict[str, Any]) -> list[str]:
    from pnfs_pipeline.data.targets import keypoint_sigmas
    from pnfs_pipeline.keypoints import load_keypoint_spec

    try:
        spec = load_keypoint_spec(parsed["data"].keypoint_spec)
    except (OSError, ValueError) as error:
        return [f"parameter 'data.keypoint_spec': {error}"]
    problems = []
    model = parsed.get("model")
    if model is not None and model.num_parts not in spec.parts:
        problems.append(
            f"parameter 'model.num_parts': keypoint spec {spec.name!r} groups its keypoints into "
            f"{sorted(spec.parts)} parts, not {model.num_parts}"
        )
    overrides = [("sample.keypoint_sigmas", getattr(parsed.get("sample"), "keypoint_sigmas", None))]
    overrides.append(("retrain.keypoint_sigmas", getattr(parsed.get("retrain"), "keypoint_sigmas", None)))
    for name, value in overrides:
        if value:
            try:
                keypoint_sigmas(spec, 1.0, value, parameter=name)
            except ValueError as error:
                problems.append(f"parameter '{name}': {str(error).removeprefix(name + ': ')}")
    augmentation = parsed.get("augmentation")
    if augmentation is not None and augmentation.enabled and augmentation.half_body_prob > 0 and augmentation.half_body_min_joints >= spec.num_keypoints:
        problems.append(
            f"parameter 'augmentation.half_body_min_joints': {augmentation.half_body_min_joints} is not below the "
            f"{spec.num_keypoints} keypoints of spec {spec.name!r}: half-body crops (half_body_prob "
            f"{augmentation.half_body_prob}) would never happen"
        )
    for name in ("search", "retrain"):
        trainer = getattr(parsed.get(name), "trainer", None)
        if trainer is not None and trainer.ohkm_topk > spec.num_keypoints:
            problems.append(
                f"parameter '{name}.trainer.ohkm_topk': {trainer.ohkm_topk} is more than the "
                f"{spec.num_keypoints} keypoints of spec {spec.name!r}"
            )
    return problems
