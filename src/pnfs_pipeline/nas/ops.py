"""Candidate operators of the PNFS cell and the connections between fabric scales.

Layer sequences follow the original PNFS operators (Conv-BN-ReLU order, non-affine BatchNorm
inside searched ops) so parameter and compute figures are comparable with the paper's. Every op
keeps the shape ``(N, C, H, W)``; names are lower-case, and the original configuration names
(``Sep_Conv_3x3``, ``Zero`` ...) are accepted as aliases.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pnfs_pipeline.nas.fast_depthwise import is_channels_last
from pnfs_pipeline.nas.fused_batch_norm import (
    FusedBatchNorm2d,
    can_fuse,
    fused_unchecked,
    running_statistics,
    uses_fused_kernel,
)


class Zero(nn.Module):
    """The 'no connection' op. Mixed ops skip it: its output is known to be exactly zero."""

    is_zero = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _separable(channels: int, kernel: int, dilation: int) -> list[nn.Module]:
    padding = dilation * (kernel - 1) // 2
    return [
        nn.Conv2d(channels, channels, kernel, 1, padding, dilation=dilation, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels, affine=False),
        nn.ReLU(inplace=False),
    ]


def sep_conv(channels: int, kernel: int) -> nn.Module:
    """Two depthwise-separable convolutions, each followed by non-affine BN and ReLU."""
    return nn.Sequential(*_separable(channels, kernel, 1), *_separable(channels, kernel, 1))


def atrous_conv(channels: int, kernel: int) -> nn.Module:
    """One dilated (rate 2) depthwise-separable convolution, non-affine BN, ReLU."""
    return nn.Sequential(*_separable(channels, kernel, 2))


def pool(channels: int, kind: str) -> nn.Module:
    layer = (
        nn.AvgPool2d(3, 1, 1, count_include_pad=False) if kind == "avg" else nn.MaxPool2d(3, 1, 1)
    )
    return nn.Sequential(layer, nn.BatchNorm2d(channels, affine=False))


def basic_block(channels: int) -> nn.Module:
    """Two 3x3 conv + BN (ReLU between), as the original ``Basic_Conv_3x3`` (no residual)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=False),
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
    )


def bottleneck_block(channels: int) -> nn.Module:
    """Three 3x3 conv + BN with a final ReLU, as the original ``Bottle_Conv_3x3``."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=False),
    )


OPS: dict[str, Callable[[int], nn.Module]] = {
    "zero": lambda c: Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "sep_conv_3x3": lambda c: sep_conv(c, 3),
    "sep_conv_5x5": lambda c: sep_conv(c, 5),
    "atr_conv_3x3": lambda c: atrous_conv(c, 3),
    "atr_conv_5x5": lambda c: atrous_conv(c, 5),
    "avg_pool_3x3": lambda c: pool(c, "avg"),
    "max_pool_3x3": lambda c: pool(c, "max"),
    "conv_3x3": lambda c: nn.Conv2d(c, c, 3, 1, 1),
    "basic_block": basic_block,
    "bottleneck_block": bottleneck_block,
}

# Names used by the original PoseNFS configuration files.
OP_ALIASES = {
    "none": "zero",
    "basic_conv_3x3": "basic_block",
    "bottle_conv_3x3": "bottleneck_block",
}


def canonical_op_name(name: str) -> str:
    """The registry name for ``name`` (case-insensitive, original aliases accepted)."""
    key = str(name).lower()
    key = OP_ALIASES.get(key, key)
    if key not in OPS:
        raise ValueError(f"unknown operator {name!r}; valid operators: {sorted(OPS)}")
    return key


def canonical_op_names(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not names:
        raise ValueError("the candidate operator set is empty")
    canonical = tuple(canonical_op_name(n) for n in names)
    if len(set(canonical)) != len(canonical):
        raise ValueError(f"operator set {list(names)} names an operator twice")
    if canonical == ("zero",):
        raise ValueError("the operator set needs at least one operator besides 'zero'")
    return canonical


def build_op(name: str, channels: int) -> nn.Module:
    return OPS[canonical_op_name(name)](channels)


# ---- constant output scales folded into BatchNorm ------------------------------------------


def _activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(x)
    if activation == "relu6":
        return F.relu6(x)
    return x


def scaled_batch_norm(
    bn: nn.BatchNorm2d, x: torch.Tensor, factor: float | torch.Tensor = 1.0, activation: str = "none"
) -> torch.Tensor:
    """``activation(factor * bn(x))`` in one pass, the factor folded into the normalisation's affine
    weights.

    Multiplying an op's output by its mixing weight costs a full read and write of the map,
    forward and backward (and, for a learned weight, a product with the gradient to reduce).
    Folded, the weight rides on the normalisation: its gradient comes from BatchNorm's weight
    gradient, which the backward pass reduces anyway. ``factor`` is a number (the derived
    network's constant scales) or a 0-dim tensor (the supernet's architecture weights, which get
    gradients). Running statistics are updated exactly as ``bn(x)`` would update them. A module
    switched by :func:`use_fused_batch_norm` trains through the fused CPU kernel with the activation.
    """
    running_mean, running_var, use_batch_statistics, momentum = running_statistics(bn)
    unit = not isinstance(factor, torch.Tensor) and factor == 1.0
    if bn.affine:
        weight, bias = (bn.weight, bn.bias) if unit else (bn.weight * factor, bn.bias * factor)
    elif unit:
        weight, bias = None, None
    elif isinstance(factor, torch.Tensor):
        # float32 for bf16/fp16 maps too: CPU BatchNorm takes low-precision input only with
        # float32 parameters. Contiguous: a stride-0 weight sends BatchNorm to a path 5x slower.
        dtype = torch.promote_types(x.dtype, torch.float32)
        weight, bias = factor.to(dtype).reshape(1).expand(x.shape[1]).contiguous(), None
    else:
        weight, bias = torch.full((x.shape[1],), float(factor), device=x.device), None
    if uses_fused_kernel(bn) and can_fuse(x, use_batch_statistics, weight, bias, running_mean, running_var):
        return fused_unchecked(x, weight, bias, running_mean, running_var, momentum, bn.eps, activation)
    out = F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_statistics, momentum, bn.eps)
    return _activate(out, activation)


_BATCH_NORMS = (nn.BatchNorm2d, FusedBatchNorm2d)  # not timm's BatchNormAct2d: it activates itself


def _run_layers(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """``layers`` in order, a BatchNorm + ReLU pair in one fused pass where the BatchNorm uses it."""
    index = 0
    while index < len(layers):
        layer = layers[index]
        following = layers[index + 1] if index + 1 < len(layers) else None
        if type(layer) is FusedBatchNorm2d and type(following) is nn.ReLU:
            x = scaled_batch_norm(layer, x, 1.0, "relu")
            index += 2
        else:
            x = layer(x)
            index += 1
    return x


def _batch_norm_tail(module: nn.Module) -> tuple[list[nn.Module], nn.BatchNorm2d, bool] | None:
    """(layers before, final BatchNorm, whether a ReLU follows it) of a Sequential ending that way."""
    if not isinstance(module, nn.Sequential):
        return None
    layers = list(module)
    relu = bool(layers) and type(layers[-1]) is nn.ReLU
    if relu:
        layers.pop()
    if not layers or type(layers[-1]) not in _BATCH_NORMS:
        return None
    return layers[:-1], layers[-1], relu


def folds_scale(module: nn.Module) -> bool:
    """Whether :func:`scaled_forward` folds a factor into ``module`` rather than multiplying."""
    return _batch_norm_tail(module) is not None


def scaled_forward(module: nn.Module, x: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """``factor * module(x)``, folded into a final BatchNorm (optionally followed by ReLU, which
    commutes with a non-negative factor) when the module is a Sequential that ends that way.

    A tensor ``factor`` must be non-negative (softmax or one-hot architecture weights): checking
    its sign here would synchronise a GPU on every op, so the supernet checks its weights once
    per forward pass instead.
    """
    tail = _batch_norm_tail(module)
    if tail is not None and (isinstance(factor, torch.Tensor) or factor > 0):
        layers, bn, relu = tail
        return scaled_batch_norm(bn, _run_layers(layers, x), factor, "relu" if relu else "none")
    return module(x) * factor


# ---- connections between scales (the cell's input pre-processing) ------------------------------


class ReduceConnect(nn.Sequential):
    """From the next finer scale: 3x3 stride-2 conv (with bias) + BN, no ReLU (as the original)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 2, 1), nn.BatchNorm2d(out_channels)
        )


class UpsampleConnect(nn.Module):
    """From the next coarser scale: 1x1 conv (with bias) + BN, then bilinear x2 (align corners)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(
        self, x: torch.Tensor, size: tuple[int, int] | None = None, factor: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """``factor`` scales the output (folded into the BatchNorm; bilinear resizing is linear)."""
        return self.after_conv(self.conv(x), size, factor)

    def after_conv(
        self, x: torch.Tensor, size: tuple[int, int] | None = None, factor: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """The BatchNorm and the resizing, given the 1x1 convolution's output ``x``."""
        unscaled = not isinstance(factor, torch.Tensor) and factor == 1.0
        x = self.bn(x) if unscaled else scaled_batch_norm(self.bn, x, factor)
        target = size if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        return F.interpolate(x, size=target, mode="bilinear", align_corners=True)


def build_connection(source_scale: int, target_scale: int, channels: list[int]) -> nn.Module:
    """The module that brings a feature map from ``source_scale`` to ``target_scale``."""
    if source_scale == target_scale:
        return nn.Identity()
    if source_scale == target_scale - 1:
        return ReduceConnect(channels[source_scale], channels[target_scale])
    if source_scale == target_scale + 1:
        return UpsampleConnect(channels[source_scale], channels[target_scale])
    raise ValueError(f"no connection from scale {source_scale} to scale {target_scale}")


# ---- connections that read a backbone map through its 1x1 adapter -------------------------------


class AdaptedInput:
    """A backbone feature map and the 1x1 convolution that brings it to the fabric's width.

    The adapted map is computed when first asked for (``tensor``), once per forward pass. A
    connection that starts with a convolution can instead read the narrow backbone map itself
    (:func:`connect_through_adapter`), and where every reader does, the adapted map is never made.
    """

    __slots__ = ("raw", "adapter", "_adapted")

    def __init__(self, raw: torch.Tensor, adapter: nn.Conv2d) -> None:
        self.raw = raw
        self.adapter = adapter
        self._adapted: torch.Tensor | None = None

    @property
    def tensor(self) -> torch.Tensor:
        if self._adapted is None:
            self._adapted = self.adapter(self.raw)
        return self._adapted


def as_tensor(source: torch.Tensor | AdaptedInput) -> torch.Tensor:
    """The map a connection reads: the adapted map of an :class:`AdaptedInput`, else itself."""
    return source.tensor if isinstance(source, AdaptedInput) else source


def _plain_convolution(conv: nn.Module, kernel: int, stride: int, padding: int) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (kernel, kernel)
        and conv.stride == (stride, stride)
        and conv.padding == (padding, padding)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


# Compose only where the convolution's saved multiply-adds exceed the weights' product by this
# factor: the product is a small float32 matrix product (forward and two in the backward) that runs
# at a fraction of a convolution's rate, and it costs the same at any batch or map size.
COMPOSITION_MIN_GAIN = 8.0


def _composition_parts(connection: nn.Module, adapter: nn.Module) -> tuple[nn.Conv2d, int] | None:
    """(the connection's convolution, extra input channels) where the pair composes exactly."""
    if not _plain_convolution(adapter, 1, 1, 0):
        return None
    if isinstance(connection, UpsampleConnect):
        conv, extra = connection.conv, 0
        if not _plain_convolution(conv, 1, 1, 0):
            return None
    elif isinstance(connection, ReduceConnect):
        conv, extra = connection[0], 1 if adapter.bias is not None else 0
        if not _plain_convolution(conv, 3, 2, 1):
            return None
    else:
        return None
    return (conv, extra) if conv.in_channels == adapter.out_channels else None


def composes_with_adapter(connection: nn.Module, source: AdaptedInput) -> bool:
    """Whether :func:`connect_through_adapter` serves this connection of ``source`` and saves work.

    A 1x1 adapter (C_in -> C_mid, with bias) followed by a connection's first convolution (C_mid ->
    C_out) is one convolution C_in -> C_out with the two weights multiplied together; a 3x3
    convolution sees the adapter's bias only inside the image (zero padding around it), which a
    constant channel of ones carries exactly. With MobileNetV2's 24 and 32 channels under a
    64/128-channel fabric, the 3x3 stride-2 convolutions take 7.1 ms forward + backward each at
    8x64x64x48 (bf16, 2 cores) through the adapter and 3.4 ms from the backbone map; 7.1 -> 2.5 ms
    at 8x128x32x24. The saving, (C_mid - C_in') multiply-adds per output pixel, channel and tap,
    must exceed the product of the weights (C_mid x C_in' per output channel and tap) by
    :data:`COMPOSITION_MIN_GAIN`: at the stride-32 map (8x6 for a 256x192 input) MobileNetV2's
    320 -> 512 -> 256 chain would cost more to compose than it saves.
    """
    parts = _composition_parts(connection, source.adapter)
    if parts is None:
        return False
    conv, extra = parts
    n, _, h, w = source.raw.shape
    if isinstance(connection, ReduceConnect):
        h, w = (h + 1) // 2, (w + 1) // 2
    inputs, middle = source.adapter.in_channels + extra, source.adapter.out_channels
    return n * h * w * (middle - inputs) > COMPOSITION_MIN_GAIN * middle * inputs


class _GradientInParameterLayout(torch.autograd.Function):
    """The identity on a weight whose backward hands the gradient over with the weight's strides.

    Reshaping a 1x1 weight into a matrix and back yields a gradient with other strides on its
    size-1 dimensions: autograd accepts that, but DistributedDataParallel's buckets, laid out
    as the parameters, then copy it through a slow path and warn on every rank."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        ctx.stride = weight.stride()
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if grad.stride() == ctx.stride:
            return grad
        return torch.empty_strided(grad.shape, ctx.stride, dtype=grad.dtype, device=grad.device).copy_(grad)


def _composed_weights(conv: nn.Conv2d, adapter: nn.Conv2d, bias_channel: bool):
    """(weight, bias) of ``conv`` applied after ``adapter``, in float32 (or the parameters' wider
    dtype) whatever autocast says: rounding the factors' product to bfloat16 would lose more
    than rounding the adapted map does."""
    device_type = conv.weight.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        conv_weight = _GradientInParameterLayout.apply(conv.weight)
        adapter_matrix = _GradientInParameterLayout.apply(adapter.weight).flatten(1)  # (C_mid, C_in)
        if bias_channel:
            adapter_matrix = torch.cat([adapter_matrix, adapter.bias[:, None]], dim=1)
        out_channels, middle, kh, kw = conv_weight.shape
        # One matrix product over (output channel, tap) rows: einsum's batched form measured
        # slower (0.42 against 0.31 ms forward + backward for 128 x 64 x 3 x 3 by 64 x 25).
        rows = conv_weight.permute(0, 2, 3, 1).reshape(out_channels * kh * kw, middle)
        weight = (rows @ adapter_matrix).view(out_channels, kh, kw, -1).permute(0, 3, 1, 2)
        bias = conv.bias
        if not bias_channel and adapter.bias is not None:
            through = conv_weight.flatten(1) @ adapter.bias
            bias = through if bias is None else bias + through
    return weight, bias


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def _with_ones_channel(x: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    ones = torch.ones((n, 1, h, w), dtype=x.dtype, device=x.device).contiguous(memory_format=_memory_format(x))
    return torch.cat([x, ones], dim=1)


def composed_connection(
    connection: nn.Module,
    source: torch.Tensor | AdaptedInput,
    size: tuple[int, int] | None = None,
    factor: float | torch.Tensor | None = None,
) -> torch.Tensor | None:
    """:func:`connect_through_adapter`'s output where ``source`` is an adapted backbone map, the
    pair composes and it saves work (:func:`composes_with_adapter`); None where the connection
    should read the adapted map as written."""
    if isinstance(source, AdaptedInput) and composes_with_adapter(connection, source):
        return connect_through_adapter(connection, source, size, factor)
    return None


def set_adapter_composition(model: nn.Module, enabled: bool) -> int:
    """Switch the composed reading of adapted backbone maps (on by default; see
    :func:`connect_through_adapter`) in every cell of ``model``; returns how many cells.

    Off, training runs the connections as written, which the benchmark's fp32 baseline does.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "compose_adapters"):
            module.compose_adapters = enabled
            count += 1
    return count


def connect_through_adapter(
    connection: nn.Module,
    source: AdaptedInput,
    size: tuple[int, int] | None = None,
    factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """``connection(source.tensor)`` (times ``factor``, folded as :func:`scaled_forward` does)
    computed from the backbone map with the composed convolution; see
    :func:`composes_with_adapter`, which must hold. Equal up to rounding, gradients included."""
    if _composition_parts(connection, source.adapter) is None:
        raise ValueError(f"{type(connection).__name__} does not compose with adapter {source.adapter}")
    adapter = source.adapter
    # The product comes out in channels_last strides (for a 1x1 kernel ambiguous ones), and a
    # channels_last weight makes the convolution's output channels_last whatever its input: the
    # weight takes the input's memory format, with canonical strides.
    layout = _memory_format(source.raw)
    if isinstance(connection, UpsampleConnect):
        weight, bias = _composed_weights(connection.conv, adapter, bias_channel=False)
        convolved = F.conv2d(source.raw, weight.clone(memory_format=layout), bias)
        return connection.after_conv(convolved, size, 1.0 if factor is None else factor)
    conv, bn = connection[0], connection[1]
    bias_channel = adapter.bias is not None
    weight, bias = _composed_weights(conv, adapter, bias_channel)
    weight = weight.clone(memory_format=layout)
    x = _with_ones_channel(source.raw) if bias_channel else source.raw
    convolved = F.conv2d(x, weight, bias, stride=2, padding=1)
    if factor is None:
        return bn(convolved)
    return scaled_batch_norm(bn, convolved, factor)
