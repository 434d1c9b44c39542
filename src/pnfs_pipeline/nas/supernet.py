"""The part-specific supernet: a shared backbone and one cell-based neural fabric per body part.

Each part's fabric predicts the heatmaps of that part's keypoints; keypoints that belong to
several parts are summed (the original) or averaged. Architecture parameters (alphas for ops,
betas for cell inputs) are kept apart from the weights so search strategies can optimise them
separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pnfs_pipeline.nas.backbones import Backbone
from pnfs_pipeline.nas.cell import NUM_SLOTS, SLOT_NAMES
from pnfs_pipeline.nas.fabric import CellFabric
from pnfs_pipeline.nas.fast_depthwise import is_channels_last
from pnfs_pipeline.nas.ops import AdaptedInput, canonical_op_names


@dataclass(frozen=True)
class FabricConfig:
    """The search space of one part's fabric (the original's ``cell_config``)."""

    operators: tuple[str, ...] = ("zero", "skip_connect", "sep_conv_3x3", "atr_conv_3x3")
    depth: int = 6
    cut_layers_num: int = 3
    size_types: tuple[int, ...] = (4, 8, 16, 32)
    factor: int = 16
    hidden_states_num: int = 1
    input_nodes_num: int = 1
    share_alpha: bool = True  # the original's one-shot-search: one alpha per part, all cells

    def __post_init__(self) -> None:
        object.__setattr__(self, "operators", canonical_op_names(tuple(self.operators)))
        if list(self.size_types) != sorted(self.size_types):
            raise ValueError(f"size_types must go from fine to coarse, got {self.size_types}")

    @property
    def channels(self) -> list[int]:
        return [s * self.factor for s in self.size_types]


@dataclass(frozen=True)
class HeadConfig:
    """How a part's fabric output becomes keypoint heatmaps."""

    vector_in_pixel: bool = True
    vector_dim: int = 8
    convolution_mode: str = "2D"
    combine: str = "sum"  # sum (the original) | mean: for keypoints shared by several parts

    def __post_init__(self) -> None:
        if self.convolution_mode not in ("2D", "3D"):
            raise ValueError(f"convolution_mode must be '2D' or '3D', got {self.convolution_mode!r}")
        if self.combine not in ("sum", "mean"):
            raise ValueError(f"combine must be 'sum' or 'mean', got {self.combine!r}")
        if self.vector_dim < 1:
            raise ValueError(f"vector_dim must be >= 1, got {self.vector_dim}")


def squash(squared_length: torch.Tensor) -> torch.Tensor:
    """Confidence from a vector's squared length n^2: n^2 / (n^2 + 1), in [0, 1)."""
    return squared_length / (squared_length + 1.0)


def squash_length(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`squash` of the vectors' lengths along ``dim``."""
    return squash((vectors * vectors).sum(dim=dim))


class PartHead(nn.Module):
    """Heatmaps of K keypoints from a stride-4 map: plain, or vector-in-pixel (2D / 3D conv)."""

    def __init__(self, in_channels: int, num_keypoints: int, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.num_keypoints = num_keypoints
        d = config.vector_dim
        if not config.vector_in_pixel:
            self.conv = nn.Conv2d(in_channels, num_keypoints, 1)
        elif config.convolution_mode == "2D":
            self.conv = nn.Conv2d(in_channels, num_keypoints * d, 1)
            # Channel k * D + d is coordinate d of keypoint k's vector: a 0/1 matrix sums each
            # keypoint's D squares in one matrix product.
            groups = torch.arange(num_keypoints * d) // d
            indicator = (groups[:, None] == torch.arange(num_keypoints)[None, :]).float()
            self.register_buffer("group_indicator", indicator, persistent=False)
        else:
            self.conv = nn.Conv2d(in_channels, in_channels * d, 1)
            self.conv3d = nn.Conv3d(in_channels, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        config = self.config
        if not config.vector_in_pixel:
            return self.conv(torch.relu(x))
        if config.convolution_mode == "2D":
            flat = self.conv(torch.relu(x))
            if is_channels_last(flat):
                # In channels_last memory the (N, H, W, K * D) view is free and the per-keypoint
                # sums are one matrix product: the head's forward + backward at batch 64 take
                # 3-5 ms instead of 7-9 ms with a (N, H, W, K, D) reduction (bf16, measured),
                # with the same rounding (products and sums in the autocast dtype as before).
                pixels = flat.permute(0, 2, 3, 1)
                squared = torch.matmul(pixels * pixels, self.group_indicator.to(pixels.dtype))
                return squash(squared).permute(0, 3, 1, 2)
            vectors = flat.view(n, self.num_keypoints, config.vector_dim, h, w)
            return squash_length(vectors, dim=2)
        volume = torch.relu(self.conv(x)).view(n, c, config.vector_dim, h, w)
        return squash_length(self.conv3d(volume), dim=2)


class PartBranch(nn.Module):
    """Adapters, fabric and head of one body part."""

    def __init__(
        self, backbone_channels: list[int], keypoints: tuple[int, ...], fabric: FabricConfig, head: HeadConfig
    ) -> None:
        super().__init__()
        self.keypoints = tuple(keypoints)
        # Moves with the module: made in each forward it was a blocking host-to-device copy on a GPU.
        self.register_buffer("keypoint_index", torch.tensor(self.keypoints, dtype=torch.long), persistent=False)
        channels = fabric.channels
        # A fabric of fewer scales than the backbone has maps reads the finest ones.
        count = min(len(backbone_channels), len(channels))
        if backbone_channels[:count] != channels[:count]:
            # 1x1 convs adapt backbone widths to the fabric's, as the original's reduce convs.
            self.adapters = nn.ModuleList(
                nn.Conv2d(cin, cout, 1) for cin, cout in zip(backbone_channels[:count], channels[:count], strict=True)
            )
        else:
            self.adapters = nn.ModuleList(nn.Identity() for _ in range(count))
        self.fabric = CellFabric(
            channels,
            fabric.depth,
            fabric.cut_layers_num,
            fabric.operators,
            fabric.hidden_states_num,
            fabric.input_nodes_num,
            input_count=count if fabric.cut_layers_num > 0 else 1,
        )
        self.head = PartHead(channels[0], len(keypoints), head)

    def forward(self, features, alpha_weights, beta_weights, active_ops=None) -> torch.Tensor:
        # Adapted lazily: the fabric's first connections may read the backbone maps themselves.
        adapted = [
            AdaptedInput(f, adapt) if isinstance(adapt, nn.Conv2d) else adapt(f)
            for adapt, f in zip(self.adapters, features[: len(self.adapters)], strict=True)
        ]
        if self.fabric.cut_layers == 0:
            adapted = adapted[:1]
        return self.head(self.fabric(adapted, alpha_weights, beta_weights, active_ops))


@dataclass
class ArchitectureWeights:
    """What a search strategy hands the supernet for one forward pass, per part."""

    alphas: list[torch.Tensor]  # (cells, edges, ops) each
    betas: list[torch.Tensor]  # (cells, 3) each
    active_ops: list[list[list[int]] | None] = field(default_factory=list)
    # A searchable backbone's (alpha (cells, edges, ops), beta (cells, 3), active ops); None:
    # the softmax of its own logits.
    backbone: tuple[torch.Tensor, torch.Tensor, list[list[int]] | None] | None = None


def check_non_negative(arch: ArchitectureWeights) -> None:
    """Cells fold each weight into a BatchNorm before a ReLU, which needs weights >= 0.

    One reduction (and on a GPU one synchronisation) per forward pass instead of one per op.
    """
    with torch.no_grad():
        backbone = arch.backbone[:2] if arch.backbone is not None else ()
        lowest = torch.stack([w.min().float() for w in (*arch.alphas, *arch.betas, *backbone)]).min()
    if lowest < 0:
        raise ValueError(
            f"architecture weights must be non-negative (softmax or one-hot), got a weight of {float(lowest):.4g}"
        )


class PartSupernet(nn.Module):
    """Backbone + one fabric per body part; ``forward`` returns (N, K, H/4, W/4) heatmaps."""

    def __init__(
        self,
        backbone: Backbone,
        parts: dict[str, tuple[int, ...]],
        num_keypoints: int,
        fabric: FabricConfig,
        head: HeadConfig,
    ) -> None:
        super().__init__()
        if not parts:
            raise ValueError("the supernet needs at least one body part")
        self.backbone = backbone
        self.part_names = list(parts)
        self.num_keypoints = num_keypoints
        self.fabric_config = fabric
        self.head_config = head
        self.parts = nn.ModuleList(
            PartBranch(backbone.channels, parts[name], fabric, head) for name in self.part_names
        )
        cells, edges, ops = self.parts[0].fabric.num_cells, self.parts[0].fabric.num_edges, len(fabric.operators)
        alpha_shape = (edges, ops) if fabric.share_alpha else (cells, edges, ops)
        # Zero-initialised as the original: every softmax starts uniform.
        self.arch_alphas = nn.ParameterList(nn.Parameter(torch.zeros(alpha_shape)) for _ in self.part_names)
        self.arch_betas = nn.ParameterList(nn.Parameter(torch.zeros(cells, NUM_SLOTS)) for _ in self.part_names)
        counts = torch.zeros(num_keypoints)
        for name in self.part_names:
            counts[list(parts[name])] += 1
        if (counts == 0).any():
            missing = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"keypoint(s) {missing} belong to no part")
        self.register_buffer("part_counts", counts, persistent=False)

    # ---- parameter groups -------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        params = list(self.arch_alphas) + list(self.arch_betas)
        if self.searchable_backbone:
            params += [self.backbone.alphas, self.backbone.betas]
        return params

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # ---- architecture weights --------------------------------------------------------------
    def expand_alpha(self, alpha: torch.Tensor, part: int) -> torch.Tensor:
        """(edges, ops) shared alphas -> (cells, edges, ops)."""
        cells = self.parts[part].fabric.num_cells
        return alpha.expand(cells, -1, -1) if alpha.dim() == 2 else alpha

    @property
    def searchable_backbone(self) -> bool:
        """Whether the backbone has architecture parameters of its own (the fabric backbone)."""
        return hasattr(self.backbone, "alphas")

    def softmax_weights(self) -> ArchitectureWeights:
        return ArchitectureWeights(
            alphas=[self.expand_alpha(torch.softmax(a, dim=-1), i) for i, a in enumerate(self.arch_alphas)],
            betas=[torch.softmax(b, dim=-1) for b in self.arch_betas],
            active_ops=[None] * len(self.part_names),
        )

    def network_description(self) -> dict:
        """What a genotype needs besides the architecture to rebuild the network (with a
        searchable fabric backbone, also that backbone's searched architecture logits)."""
        fabric = self.parts[0].fabric
        description = {
            "backbone": getattr(self, "backbone_name", type(self.backbone).__name__),
            "backbone_kwargs": dict(getattr(self, "backbone_kwargs", {})),
            "channels": list(self.fabric_config.channels),
            "depth": self.fabric_config.depth,
            "cut_layers_num": self.fabric_config.cut_layers_num,
            "input_count": fabric.input_count,
            "num_keypoints": self.num_keypoints,
            "hidden_states_num": self.fabric_config.hidden_states_num,
            "input_nodes_num": self.fabric_config.input_nodes_num,
            "head": {
                "vector_in_pixel": self.head_config.vector_in_pixel,
                "vector_dim": self.head_config.vector_dim,
                "convolution_mode": self.head_config.convolution_mode,
                "combine": self.head_config.combine,
            },
        }
        if self.searchable_backbone:
            description["backbone_architecture"] = {
                "alphas": self.backbone.alphas.detach().cpu().tolist(),
                "betas": self.backbone.betas.detach().cpu().tolist(),
            }
        return description

    def architecture_summary(self, strategy: str) -> dict:
        """Readable architecture parameters: logits and softmax per part, with cell and op names."""
        parts = {}
        for i, name in enumerate(self.part_names):
            alpha, beta = self.arch_alphas[i].detach().float().cpu(), self.arch_betas[i].detach().float().cpu()
            parts[name] = {
                "keypoints": list(self.parts[i].keypoints),
                "cells": [p.name for p in self.parts[i].fabric.positions],
                "alpha_logits": alpha.tolist(),
                "alpha": torch.softmax(alpha, -1).tolist(),
                "beta_logits": beta.tolist(),
                "beta": torch.softmax(beta, -1).tolist(),
            }
        return {
            "strategy": strategy,
            "operators": list(self.fabric_config.operators),
            "slots": list(SLOT_NAMES),
            "share_alpha": self.fabric_config.share_alpha,
            "parts": parts,
        }

    def forward(self, x: torch.Tensor, arch: ArchitectureWeights | None = None) -> torch.Tensor:
        if arch is None:
            arch = self.softmax_weights()
        else:
            check_non_negative(arch)
        features = self.backbone(x, *arch.backbone) if arch.backbone is not None else self.backbone(x)
        outputs = []
        for i, branch in enumerate(self.parts):
            active = arch.active_ops[i] if arch.active_ops else None
            outputs.append(branch(features, arch.alphas[i], arch.betas[i], active))
        n, _, h, w = outputs[0].shape
        heatmaps = outputs[0].new_zeros(n, self.num_keypoints, h, w)
        for branch, out in zip(self.parts, outputs, strict=True):
            heatmaps = heatmaps.index_add(1, branch.keypoint_index, out)
        if self.head_config.combine == "mean":
            heatmaps = heatmaps / self.part_counts.to(heatmaps)[None, :, None, None]
        return heatmaps


def build_supernet(spec, model) -> PartSupernet:
    """The supernet for a :class:`KeypointSpec` and validated :class:`ModelParams`."""
    from pnfs_pipeline.nas.backbones import build_backbone

    backbone = build_backbone(
        model.backbone,
        pretrained_path=model.pretrained_backbone,
        frozen=model.frozen_backbone,
        **model.backbone_kwargs,
    )
    fabric = FabricConfig(**model.fabric.model_dump())
    head = HeadConfig(**model.head.model_dump())
    supernet = PartSupernet(backbone, spec.body_parts(model.num_parts), spec.num_keypoints, fabric, head)
    supernet.backbone_name = model.backbone
    supernet.backbone_kwargs = dict(model.backbone_kwargs)
    return supernet
