"""Multi-scale backbones: four feature maps at strides 4, 8, 16 and 32.

Built from a name plus keyword arguments. Pretrained weights come only from a local file path
(no downloads here); the file may hold the backbone's own state dict or the original ImageNet
checkpoint of the same architecture, loaded non-strictly with a report of what did not match.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from pnfs_pipeline.nas.cell import NUM_SLOTS
from pnfs_pipeline.nas.fabric import CellFabric
from pnfs_pipeline.nas.ops import canonical_op_names

logger = logging.getLogger(__name__)


class Backbone(nn.Module):
    """Base class: ``forward`` returns ``[f4, f8, f16, f32]``; ``channels`` lists their widths."""

    channels: list[int]


class TimmFeatures(Backbone):
    """A timm model with ``features_only=True`` at strides 4..32."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        import timm  # on first use: its import takes seconds (see nas/fused_batch_norm.py)

        self.body = timm.create_model(
            model_name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
        )
        self.channels = list(self.body.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


class HRNetStage3(Backbone):
    """HRNet-W32 from the stem to stage 3, plus the stride-32 branch of transition 3 (as PNFS).

    Stage 4 and the classification heads are removed, so they cost neither parameters nor time.
    """

    def __init__(self, model_name: str = "hrnet_w32") -> None:
        super().__init__()
        import timm

        net = timm.create_model(model_name, pretrained=False)
        for unused in ("stage4", "incre_modules", "downsamp_modules", "final_layer", "classifier"):
            if hasattr(net, unused):
                setattr(net, unused, None)
        self.net = net
        # In eval mode: a training-mode probe would move BatchNorm's running statistics.
        net.eval()
        with torch.no_grad():
            self.channels = [f.shape[1] for f in self.forward(torch.zeros(1, 3, 64, 64))]
        net.train()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        x = net.act1(net.bn1(net.conv1(x)))
        x = net.act2(net.bn2(net.conv2(x)))
        x = net.layer1(x)
        branches = [t(x) for t in net.transition1]
        branches = net.stage2(branches)
        branches = [
            branches[i] if isinstance(t, nn.Identity) else t(branches[-1])
            for i, t in enumerate(net.transition2)
        ]
        branches = net.stage3(branches)
        return [
            branches[i] if isinstance(t, nn.Identity) else t(branches[-1])
            for i, t in enumerate(net.transition3)
        ]


class TinyConvNet(Backbone):
    """A small plain conv net for fast experiments and tests (not in the paper); its default
    width is the CPU default run's, so conf/base sets no backbone_kwargs that the real-data
    environments would inherit through the soft merge."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.channels = [width, width * 2, width * 4, width * 8]

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.stem = nn.Sequential(block(3, width, 2), block(width, width, 2))
        self.stages = nn.ModuleList(
            block(self.channels[i - 1], self.channels[i], 2) for i in range(1, 4)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


class FabricBackbone(Backbone):
    """The original's searchable fabric backbone: a stem and the first layers of a fabric.

    Its architecture parameters are its own (shared alphas, per-cell betas) and are searched
    with the heads' when the search strategy trains architecture parameters.
    """

    def __init__(
        self,
        factor: int = 10,
        reserve_layers: int = 4,
        depth: int = 12,
        operators: tuple[str, ...] = (
            "zero", "skip_connect", "sep_conv_3x3", "atr_conv_3x3", "avg_pool_3x3", "max_pool_3x3"
        ),
        hidden_states: int = 1,
        input_nodes: int = 1,
        size_types: tuple[int, ...] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        fabric_channels = [s * factor for s in size_types]
        # Stem as the original: no ReLU after the first BN.
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.Conv2d(64, 64, 3, 2, 1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, fabric_channels[0], 1, bias=False),
        )
        # The full fabric's first `reserve_layers` layers: a fabric of that depth would narrow at
        # its end, so build it deeper and keep only the cells of the reserved layers.
        self.fabric = CellFabric(
            fabric_channels, depth, 0, canonical_op_names(operators), hidden_states, input_nodes, 1
        )
        keep = [p for p in self.fabric.positions if p.layer < reserve_layers]
        for position in self.fabric.positions[len(keep) :]:
            del self.fabric.cells[position.name]
        self.fabric.positions = keep
        self.reserve_layers = reserve_layers
        self.channels = fabric_channels[: self.fabric.layer_sizes[reserve_layers - 1]]
        if len(self.channels) != 4:
            raise ValueError("the fabric backbone must end on a layer with 4 scales (reserve_layers >= 3)")
        self.alphas = nn.Parameter(torch.zeros(self.fabric.num_edges, self.fabric.num_ops))
        self.betas = nn.Parameter(torch.zeros(len(keep), NUM_SLOTS))

    def forward(
        self,
        x: torch.Tensor,
        alpha: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
        active_ops: list[list[int]] | None = None,
    ) -> list[torch.Tensor]:
        """Mixes with the softmax of its own logits, or with the (cells, edges, ops) ``alpha``
        and (cells, 3) ``beta`` a search strategy sampled."""
        if alpha is None:
            alpha = torch.softmax(self.alphas, dim=-1).expand(self.fabric.num_cells, -1, -1)
        if beta is None:
            beta = torch.softmax(self.betas, dim=-1)
        return self.fabric([self.stem(x)], alpha, beta, active_ops, last_layer=True)


# Partials, not lambdas: their signatures say which backbone_kwargs each takes (config checks).
BACKBONES = {
    "mobilenet_v2": functools.partial(TimmFeatures, "mobilenetv2_100"),
    "resnet50": functools.partial(TimmFeatures, "resnet50"),
    "hrnet_w32": functools.partial(HRNetStage3, "hrnet_w32"),
    "fabric": FabricBackbone,
    "tiny": TinyConvNet,
}
BACKBONE_ALIASES = {"mobilenetv2": "mobilenet_v2", "resnet": "resnet50", "hrnet": "hrnet_w32", "meta_arch": "fabric"}


def build_backbone(
    name: str, pretrained_path: str | None = None, frozen: bool = False, **kwargs
) -> Backbone:
    key = BACKBONE_ALIASES.get(name.lower(), name.lower())
    if key not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {sorted(BACKBONES)}")
    backbone = BACKBONES[key](**kwargs)
    if pretrained_path:
        load_pretrained(backbone, pretrained_path)
    if frozen:
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
    return backbone


def load_pretrained(backbone: nn.Module, path: str | Path) -> None:
    """Load local pretrained weights into every tensor of ``backbone``, or fail saying why.

    Tensors are matched by name (exactly, or by the name below the backbone's own wrapper, as
    in a full timm model's file for its feature extractor). A file of the same architecture under
    other names, such as torchvision's or the original PNFS code's MobileNetV2 (``features.0.0``
    for timm's ``conv_stem``), is matched by order instead: its tensors, in the order they were
    saved, must have the backbone's shapes one for one (what follows, e.g. a classifier, is left
    out). A file that matches in neither way is refused rather than loaded in part.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained backbone weights {path} not found (no downloads here)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"pretrained backbone weights {path}: not a readable torch file ({error})") from error
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's saves
    own = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    own_by_suffix = {k.split(".", 1)[-1]: k for k in own}
    by_name = {}
    for key, tensor in state.items():
        target = key if key in own else own_by_suffix.get(key)
        if target is not None and own[target].shape == tensor.shape:
            by_name[target] = tensor
    if len(by_name) == len(own):
        backbone.load_state_dict(by_name, strict=False)
        logger.info("loaded all %d backbone tensors from %s by name", len(own), path)
        return
    saved = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(saved) >= len(own) and all(v.shape == t.shape for (_, v), t in zip(saved, own.values(), strict=False)):
        backbone.load_state_dict({k: v for k, (_, v) in zip(own, saved, strict=False)}, strict=False)
        logger.info(
            "loaded all %d backbone tensors from %s by order (%s -> %s ... %s -> %s); %d of its tensors after them unused",
            len(own), path, saved[0][0], next(iter(own)), saved[len(own) - 1][0], list(own)[-1], len(saved) - len(own),
        )
        return
    missing = [k for k in own if k not in by_name]
    raise ValueError(
        f"{path}: {len(by_name)} of the backbone's {len(own)} tensors match by name (first missing: "
        f"{missing[0]}) and its tensors do not follow the backbone's shapes in order either; "
        "weights of another architecture?"
    )
