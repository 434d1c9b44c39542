"""Faster CPU training for dilated and strided depthwise convolutions.

On the CPU, PyTorch's oneDNN kernels compute the backward pass of a 3x3 depthwise convolution
quickly only for stride 1 and dilation 1; the dilated (``atr_conv``) and strided (MobileNetV2's
down-sampling) variants fall back to kernels 8-15x slower than their forward pass (measured on
2 cores: a rate-2 3x3 depthwise conv on 8x64x64x48 takes 0.3 ms forward and 19 ms backward).
Both can be rewritten exactly in terms of the fast kernel:

- dilation ``d`` with "same" padding: split the image into its ``d x d`` phases (every ``d``-th
  row and column), run the undilated kernel on each phase as a batch, and interleave the results
  back. Each output pixel reads exactly the inputs the dilated kernel would (zero padding maps to
  zero padding), so the result is the same up to float rounding.
- stride ``s``: run the kernel at stride 1 and keep every ``s``-th row and column.

The rewrite is used only while autograd records (training); inference keeps the native kernels,
which are fast in the forward direction. State dicts are unchanged: the modules stay
``nn.Conv2d`` with the same parameters.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _in_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _to_phases(x: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) with H, W divisible by d -> (d*d*N, C, H/d, W/d), keeping the memory format."""
    n, c, h, w = x.shape
    if _is_channels_last(x):
        nhwc = x.permute(0, 2, 3, 1).reshape(n, h // d, d, w // d, d, c)
        phases = nhwc.permute(2, 4, 0, 1, 3, 5).reshape(d * d * n, h // d, w // d, c)
        return phases.permute(0, 3, 1, 2)
    phases = x.reshape(n, c, h // d, d, w // d, d).permute(3, 5, 0, 1, 2, 4)
    return phases.reshape(d * d * n, c, h // d, w // d)


def _from_phases(y: torch.Tensor, d: int, n: int) -> torch.Tensor:
    """Inverse of :func:`_to_phases`."""
    _, c, hd, wd = y.shape
    if _is_channels_last(y):
        nhwc = y.permute(0, 2, 3, 1).reshape(d, d, n, hd, wd, c)
        return nhwc.permute(2, 3, 0, 4, 1, 5).reshape(n, hd * d, wd * d, c).permute(0, 3, 1, 2)
    out = y.reshape(d, d, n, c, hd, wd).permute(2, 3, 4, 0, 5, 1)
    return out.reshape(n, c, hd * d, wd * d)


def phase_split_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int, groups: int
) -> torch.Tensor:
    """A stride-1, "same"-padded convolution of rate ``dilation`` through undilated kernels."""
    n, _, h, w = x.shape
    channels_last = _is_channels_last(x)
    pad_h, pad_w = (-h) % dilation, (-w) % dilation
    if pad_h or pad_w:
        x = _in_format(F.pad(x, (0, pad_w, 0, pad_h)), channels_last)
    half = (weight.shape[-1] - 1) // 2
    phases = F.conv2d(_to_phases(x, dilation), weight, bias, 1, half, 1, groups)
    out = _from_phases(phases, dilation, n)
    if pad_h or pad_w:
        out = _in_format(out[:, :, :h, :w], channels_last)
    return out


def strided_by_subsampling(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """A strided convolution as the stride-1 convolution sampled every ``stride`` pixels."""
    full = F.conv2d(x, weight, bias, 1, padding, dilation, groups)
    return _in_format(full[:, :, :: stride[0], :: stride[1]], _is_channels_last(x))


def _reduced_precision(x: torch.Tensor) -> bool:
    return x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")


class FastDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose CPU training pass avoids the slow dilated/strided depthwise kernels."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if input.device.type != "cpu" or not torch.is_grad_enabled():
            return super()._conv_forward(input, weight, bias)
        if self.dilation[0] > 1:
            return phase_split_conv2d(input, weight, bias, self.dilation[0], self.groups)
        if self.stride[0] > 1 and _reduced_precision(input):
            return strided_by_subsampling(
                input, weight, bias, self.stride, self.padding, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def _eligible(module: nn.Module) -> bool:
    if type(module) is not nn.Conv2d or module.padding_mode != "zeros":
        return False
    if module.groups == 1 or module.groups != module.in_channels:
        return False
    kh, kw = module.kernel_size
    if kh != kw or kh % 2 == 0 or kh == 1:
        return False
    dilated = module.dilation[0] > 1
    strided = module.stride[0] > 1
    if module.dilation[0] != module.dilation[1] or module.stride[0] != module.stride[1]:
        return False
    if dilated and strided:
        return False
    if dilated:
        return module.padding == (module.dilation[0] * (kh - 1) // 2,) * 2
    return strided and isinstance(module.padding, tuple)


def use_fast_depthwise(model: nn.Module) -> int:
    """Switch every eligible depthwise convolution of ``model`` to :class:`FastDepthwiseConv2d`.

    Returns how many were switched. Parameters, buffers and state-dict keys are untouched, so
    checkpoints load either way; call it again after building a new model.
    """
    switched = 0
    for module in model.modules():
        if _eligible(module):
            module.__class__ = FastDepthwiseConv2d
            switched += 1
    if switched:
        logger.debug("Fast CPU training path for %d dilated/strided depthwise convolutions", switched)
    return switched
