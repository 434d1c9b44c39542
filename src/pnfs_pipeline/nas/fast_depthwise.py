"""Faster CPU training for depthwise convolutions.

On the CPU, PyTorch's oneDNN kernels compute the backward pass of a 3x3 depthwise convolution
quickly only for stride 1 and dilation 1; the dilated (``atr_conv``) and strided (MobileNetV2's
down-sampling) variants fall back to kernels 8-15x slower than their forward pass (measured on
2 cores: a rate-2 3x3 depthwise conv on 8x64x64x48 takes 0.3 ms forward and 19 ms backward).

- Stride 1, "same" padding, any dilation, channels_last maps: both gradients come from one C
  kernel (``csrc/depthwise_backward.c``) that reads the output gradient and the input once. In
  bfloat16 on 2 cores it takes 0.89 ms at 8x64x64x48 where oneDNN's undilated backward takes 1.29
  (0.38 against 0.78 ms at 8x128x32x24, 1.38 against 2.92 at 8x144x64x48); dilated, it replaces
  the rewrite below (0.66 against ~1.3 ms). Undilated float32 maps keep oneDNN's kernel, which is
  as fast there.
- Without the C kernels, dilation ``d`` with "same" padding: the input gradient is a
  forward-direction dilated convolution with the kernel flipped, which is fast, and the weight
  gradient is taken on the image split into its ``d x d`` phases (every ``d``-th row and column),
  where the dilated kernel becomes an undilated one: each phase pairs exactly the inputs and output
  gradients the dilated kernel would (zero padding maps to zero padding), so the result is the
  same up to float rounding.
- stride ``s``: the C kernels' gradients on channels_last maps, else the kernel run at stride 1
  keeping every ``s``-th row and column.

The rewrite is used only while autograd records (training); inference keeps the native kernels,
which are fast in the forward direction. State dicts are unchanged: the modules stay
``nn.Conv2d`` with the same parameters.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from pnfs_pipeline.nas.native_kernels import DTYPE_SUFFIXES, kernel, load_kernels

logger = logging.getLogger(__name__)


def is_channels_last(x: torch.Tensor) -> bool:
    """Dense in channels_last order and not also in NCHW order (as with one channel or 1x1 maps)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _in_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _to_phases(x: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) with H, W divisible by d -> (d*d*N, C, H/d, W/d), keeping the memory format."""
    n, c, h, w = x.shape
    if is_channels_last(x):
        nhwc = x.permute(0, 2, 3, 1).reshape(n, h // d, d, w // d, d, c)
        phases = nhwc.permute(2, 4, 0, 1, 3, 5).reshape(d * d * n, h // d, w // d, c)
        return phases.permute(0, 3, 1, 2)
    phases = x.reshape(n, c, h // d, d, w // d, d).permute(3, 5, 0, 1, 2, 4)
    return phases.reshape(d * d * n, c, h // d, w // d)


def _native_kernels_serve(x: torch.Tensor) -> bool:
    """Whether the C kernels (``csrc/depthwise_grad.c``) can take this map's gradients."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in DTYPE_SUFFIXES
        and is_channels_last(x)
        and load_kernels() is not None
    )


def _weight_gradient_buffer(weight: torch.Tensor) -> torch.Tensor:
    """An empty (C, 1, k, k) float32 gradient with the weight's strides (DistributedDataParallel's
    buckets expect a gradient laid out as its parameter; with one input channel both layouts are
    the same memory, which the kernels write as (C, k, k))."""
    channels, _, kernel_size, _ = weight.shape
    grad_weight = torch.empty(channels, 1, kernel_size, kernel_size, dtype=torch.float32)
    if weight.is_contiguous(memory_format=torch.channels_last):
        grad_weight = grad_weight.as_strided(grad_weight.shape, weight.stride())
    return grad_weight


def _native_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int, padding: int
) -> torch.Tensor:
    """(C, 1, k, k) float32 weight gradient of a depthwise convolution, both maps channels_last."""
    n, channels, height, width = x.shape
    kernel_size = weight.shape[-1]
    grad_weight = _weight_gradient_buffer(weight)
    status = kernel("pnfs_depthwise_weight_grad", x.dtype)(
        grad.data_ptr(), x.data_ptr(), n, channels, height, width, grad.shape[2], grad.shape[3],
        kernel_size, stride, dilation, padding, torch.get_num_threads(), grad_weight.data_ptr(),
    )
    if status:
        raise RuntimeError(f"depthwise weight gradient kernel failed (status {status}) on {tuple(x.shape)}")
    return grad_weight


def _native_input_grad(
    grad: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size, stride: int, dilation: int, padding: int
) -> torch.Tensor:
    n, channels, height, width = input_shape
    grad_x = torch.empty(input_shape, dtype=grad.dtype, memory_format=torch.channels_last)
    weight = weight.detach().float().contiguous()
    status = kernel("pnfs_depthwise_input_grad", grad.dtype)(
        grad.data_ptr(), weight.data_ptr(), n, channels, height, width, grad.shape[2], grad.shape[3],
        weight.shape[-1], stride, dilation, padding, torch.get_num_threads(), grad_x.data_ptr(),
    )
    if status:
        raise RuntimeError(f"depthwise input gradient kernel failed (status {status}) on {tuple(input_shape)}")
    return grad_x


def _native_same_padded_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, dilation: int, need_input: bool, need_weight: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both gradients of a stride-1, "same"-padded depthwise convolution in one C kernel call:
    the input's in ``x``'s type and channels_last, the weight's in float32 (``None`` where not
    asked for). ``weight`` is the one the forward pass used (bfloat16 under autocast)."""
    n, channels, height, width = x.shape
    grad_x = torch.empty(x.shape, dtype=x.dtype, memory_format=torch.channels_last) if need_input else None
    grad_weight = _weight_gradient_buffer(weight) if need_weight else None
    weight_f32 = weight.detach().float().contiguous()
    status = kernel("pnfs_depthwise_backward", x.dtype)(
        grad.data_ptr(), x.data_ptr(), weight_f32.data_ptr(), n, channels, height, width, weight.shape[-1],
        dilation, torch.get_num_threads(),
        None if grad_x is None else grad_x.data_ptr(), None if grad_weight is None else grad_weight.data_ptr(),
    )
    if status:
        raise RuntimeError(f"depthwise backward kernel failed (status {status}) on {tuple(x.shape)}")
    return grad_x, grad_weight


def _phase_padded(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """``x`` zero-padded at the bottom and right to multiples of ``dilation``, in its memory format."""
    pad_h, pad_w = (-x.shape[2]) % dilation, (-x.shape[3]) % dilation
    if not (pad_h or pad_w):
        return x
    return _in_format(F.pad(x, (0, pad_w, 0, pad_h)), is_channels_last(x))


class _SamePaddedDepthwise(torch.autograd.Function):
    """A stride-1, "same"-padded depthwise convolution: oneDNN's forward, the C kernel's backward
    on channels_last maps, else the flipped-kernel and phase rewrites (module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        with torch.autocast("cpu", enabled=False):
            x_used, weight_used = x.to(dtype), weight.to(dtype)
            half = dilation * (weight.shape[-1] - 1) // 2
            out = F.conv2d(x_used, weight_used, None if bias is None else bias.to(dtype), 1, half, dilation, x.shape[1])
        ctx.save_for_backward(x_used, weight_used)
        ctx.dilation, ctx.half = dilation, half
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        d, channels = ctx.dilation, x.shape[1]
        grad_x = grad_weight = grad_bias = None
        with torch.autocast("cpu", enabled=False):
            grad = _in_format(grad.to(x.dtype), is_channels_last(x))
            if _native_kernels_serve(x):
                grad_x, grad_weight = _native_same_padded_backward(
                    grad, x, weight, d, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
                )
                grad_x = None if grad_x is None else grad_x.to(x_dtype)
                grad_weight = None if grad_weight is None else grad_weight.to(weight_dtype)
            else:
                if ctx.needs_input_grad[0]:
                    flipped = weight.flip(-2, -1)
                    grad_x = F.conv2d(grad, flipped, None, 1, ctx.half, d, channels).to(x_dtype)
                if ctx.needs_input_grad[1]:
                    half = (weight.shape[-1] - 1) // 2
                    grad_weight = torch.nn.grad.conv2d_weight(
                        _to_phases(_phase_padded(x, d), d),
                        weight.shape,
                        _to_phases(_phase_padded(grad, d), d),
                        1,
                        half,
                        1,
                        channels,
                    ).to(weight_dtype)
            if bias_dtype is not None and ctx.needs_input_grad[2]:
                grad_bias = grad.sum((0, 2, 3), dtype=torch.float32).to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None


def same_padded_depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int
) -> torch.Tensor:
    """A stride-1, "same"-padded depthwise convolution of rate ``dilation`` with a fast backward."""
    return _SamePaddedDepthwise.apply(x, weight, bias, dilation)


class _Subsample(torch.autograd.Function):
    """Every ``stride``-th row and column, with a gradient in the input's memory format.

    Autograd's own slicing backward scatters the gradient into a new NCHW tensor, which the
    channels_last convolution before it then transposes: at MobileNetV2's first block
    (8x96x128x96, bf16) that copy alone was 17.5 of the block's 70 ms training step (measured).
    """

    @staticmethod
    def forward(ctx, full: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
        ctx.shape, ctx.stride, ctx.channels_last = full.shape, stride, is_channels_last(full)
        return _in_format(full[:, :, :: stride[0], :: stride[1]], ctx.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        grad_full = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=layout).zero_()
        grad_full[:, :, :: ctx.stride[0], :: ctx.stride[1]] = grad
        return grad_full, None


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
    return _Subsample.apply(full, tuple(stride))


class _StridedDepthwise(torch.autograd.Function):
    """A strided depthwise convolution: oneDNN's forward, the C kernels' backward (channels_last)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        with torch.autocast("cpu", enabled=False):
            x_used, weight_used = x.to(dtype), weight.to(dtype)
            out = F.conv2d(x_used, weight_used, None if bias is None else bias.to(dtype), stride, padding, 1, x.shape[1])
        ctx.save_for_backward(x_used, weight_used)
        ctx.stride, ctx.padding = stride, padding
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return _in_format(out, True)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _native_input_grad(grad, weight, x.shape, ctx.stride, 1, ctx.padding).to(x_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = _native_weight_grad(grad, x, weight, ctx.stride, 1, ctx.padding).to(weight_dtype)
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3), dtype=torch.float32).to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None


def strided_depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """A strided, undilated depthwise convolution whose backward runs in the C kernels."""
    return _StridedDepthwise.apply(x, weight, bias, stride, padding)


def _reduced_precision(x: torch.Tensor) -> bool:
    return x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")


class FastDepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose CPU training pass takes the faster depthwise gradients above."""

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if input.device.type != "cpu" or not torch.is_grad_enabled():
            return super()._conv_forward(input, weight, bias)
        if self.dilation[0] > 1:
            return same_padded_depthwise_conv2d(input, weight, bias, self.dilation[0])
        if self.stride[0] == 1:  # eligible: "same" padding; oneDNN's float32 backward is as fast
            if _reduced_precision(input) and _native_kernels_serve(input):
                return same_padded_depthwise_conv2d(input, weight, bias, 1)
            return super()._conv_forward(input, weight, bias)
        if self.stride[0] > 1 and _reduced_precision(input):
            if _native_kernels_serve(input) and self.padding[0] == self.padding[1]:
                return strided_depthwise_conv2d(input, weight, bias, self.stride[0], self.padding[0])
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
    if not strided:  # stride 1, dilated or not: "same" padding
        return module.padding == (module.dilation[0] * (kh - 1) // 2,) * 2
    return isinstance(module.padding, tuple)


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
        logger.debug("Fast CPU training path for %d depthwise convolutions", switched)
    return switched
