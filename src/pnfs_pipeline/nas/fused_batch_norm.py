"""Training-mode BatchNorm fused with the ReLU / ReLU6 after it, for channels_last maps on the CPU.

PyTorch runs BatchNorm and the activation as separate kernels: the forward pass reads the map
three times and writes it twice, the backward pass reads the activation's output again for its
mask. ``csrc/batch_norm_act.c`` does the forward in two reads and one write and recomputes the
mask from BatchNorm's input in the backward pass. On 2 cores (bf16, 8x64x64x48) BatchNorm + ReLU
forward and backward take ~1.1 ms fused against ~1.5 ms in PyTorch; at 8x96x128x96 (MobileNetV2's
first block) ~6 ms against ~13-17 ms.

The kernel is C with OpenMP (built and loaded by :mod:`pnfs_pipeline.nas.native_kernels`; without
a C compiler everything runs PyTorch's own kernels). It serves only what it was written for: CPU
tensors, float32 or bfloat16, channels_last, batch statistics (training mode), float32 parameters
and running statistics.
"""

from __future__ import annotations

import functools
import logging
import sys

import torch
from torch import nn

from pnfs_pipeline.nas.native_kernels import (
    DTYPE_SUFFIXES,
    kernel,
    load_kernels,
    unavailable_reason,
)

logger = logging.getLogger(__name__)

ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2}


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _BatchNormActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, activation: int):
        channels = x.shape[1]
        rows = x.numel() // channels
        y = torch.empty_like(x, memory_format=torch.channels_last)
        statistics = torch.empty(2, channels, dtype=torch.float32)  # mean, 1 / std: one allocation
        mean, invstd = statistics[0], statistics[1]
        status = kernel("pnfs_bn_act_forward", x.dtype)(
            x.data_ptr(), rows, channels, _address(weight), _address(bias), eps,
            _address(running_mean), _address(running_var), momentum, activation, torch.get_num_threads(),
            y.data_ptr(), mean.data_ptr(), invstd.data_ptr(),
        )
        if status:
            raise RuntimeError(f"fused batch norm forward failed (status {status}) on input {tuple(x.shape)}")
        ctx.save_for_backward(x, weight, bias, statistics)
        ctx.activation = activation
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, statistics = ctx.saved_tensors
        mean, invstd = statistics[0], statistics[1]
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        channels = x.shape[1]
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_x = torch.empty_like(x, memory_format=torch.channels_last) if needs_x else None
        grad_weight = torch.empty(channels, dtype=torch.float32) if needs_weight else None
        grad_bias = torch.empty(channels, dtype=torch.float32) if needs_bias else None
        status = kernel("pnfs_bn_act_backward", x.dtype)(
            grad.data_ptr(), x.data_ptr(), x.numel() // channels, channels, _address(weight), _address(bias),
            mean.data_ptr(), invstd.data_ptr(), ctx.activation, torch.get_num_threads(),
            _address(grad_x), _address(grad_weight), _address(grad_bias),
        )
        if status:
            raise RuntimeError(f"fused batch norm backward failed (status {status}) on input {tuple(x.shape)}")
        return grad_x, grad_weight, grad_bias, None, None, None, None, None


def _fits(tensor: torch.Tensor | None, channels: int) -> bool:
    return tensor is None or (
        tensor.dtype == torch.float32
        and tensor.device.type == "cpu"
        and tensor.shape == (channels,)
        and tensor.is_contiguous()
    )


def _tensors(bn: nn.BatchNorm2d) -> tuple[torch.Tensor | None, ...]:
    return bn.weight, bn.bias, bn.running_mean, bn.running_var


def can_fuse(x: torch.Tensor, use_batch_statistics: bool, *parameters: torch.Tensor | None) -> bool:
    """Whether the fused kernel serves this input (training statistics, a channels_last float32 or
    bfloat16 CPU map) with these per-channel ``parameters`` (float32 vectors or None)."""
    return (
        use_batch_statistics
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in DTYPE_SUFFIXES
        and x.numel() > 0
        and x.numel() // x.shape[1] > 1  # PyTorch refuses one value per channel; let it say so
        and x.is_contiguous(memory_format=torch.channels_last)
        and all(_fits(p, x.shape[1]) for p in parameters)
        and load_kernels() is not None
    )


def fused_batch_norm_act(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
    activation: str = "none",
) -> torch.Tensor:
    """``activation(F.batch_norm(x, ..., training=True))`` in the fused kernel (see :func:`can_fuse`)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if not can_fuse(x, True):
        raise ValueError(f"the fused batch norm kernel does not serve this input: {tuple(x.shape)} {x.dtype} "
                         f"on {x.device} ({unavailable_reason() or 'needs a channels_last float32/bfloat16 CPU map'})")
    channels = x.shape[1]
    for name, tensor in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if not _fits(tensor, channels):
            raise ValueError(
                f"fused batch norm: {name} must be a contiguous float32 CPU vector of {channels}, got "
                f"{tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("fused batch norm: running_mean and running_var come together or not at all")
    return fused_unchecked(x, weight, bias, running_mean, running_var, momentum, eps, activation)


def fused_unchecked(x, weight, bias, running_mean, running_var, momentum, eps, activation: str = "none"):
    """:func:`fused_batch_norm_act` for callers that asked :func:`can_fuse` with these tensors
    already (the training hot path: no second round of checks)."""
    return _BatchNormActivation.apply(
        x, weight, bias, running_mean, running_var, float(momentum), float(eps), ACTIVATIONS[activation]
    )


# ---- which modules use it ---------------------------------------------------------------------


def running_statistics(bn: nn.BatchNorm2d) -> tuple[torch.Tensor | None, torch.Tensor | None, bool, float]:
    """(running mean, running var, use batch statistics, momentum) for one call of ``bn``, counting
    the batch as ``nn.BatchNorm2d.forward`` does."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    use_batch_statistics = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return (bn.running_mean if keep else None), (bn.running_var if keep else None), use_batch_statistics, momentum


class FusedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that trains through the fused kernel where it can (same parameters,
    buffers and state-dict keys; everything else goes to ``nn.BatchNorm2d.forward``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not ((self.training or self.running_mean is None) and can_fuse(x, True, *_tensors(self))):
            return super().forward(x)
        running_mean, running_var, _, momentum = running_statistics(self)
        return fused_unchecked(x, self.weight, self.bias, running_mean, running_var, momentum, self.eps)


def _activation_of(module: nn.Module) -> str | None:
    if type(module) is nn.Identity:
        return "none"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.ReLU6:
        return "relu6"
    return None


@functools.cache
def _fused_batch_norm_act_class() -> type[nn.Module]:
    """The fused subclass of timm's ``BatchNormAct2d``, made when first needed: importing timm
    (torchvision and torch._dynamo behind it) takes ~2-3 s, which every command and every spawned
    worker would otherwise pay for backbones that hold no timm module."""
    from timm.layers import BatchNormAct2d

    class FusedBatchNormAct2d(BatchNormAct2d):
        """timm's BatchNorm + activation module, trained through the fused kernel where it can."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            activation = _activation_of(self.act)
            usable = activation is not None and type(self.drop) is nn.Identity
            if not (usable and (self.training or self.running_mean is None) and can_fuse(x, True, *_tensors(self))):
                return super().forward(x)
            running_mean, running_var, _, momentum = running_statistics(self)
            return fused_unchecked(x, self.weight, self.bias, running_mean, running_var, momentum, self.eps, activation)

    # Found by pickle (a module of a spawned worker's payload) through the module's __getattr__.
    FusedBatchNormAct2d.__module__, FusedBatchNormAct2d.__qualname__ = __name__, "FusedBatchNormAct2d"
    return FusedBatchNormAct2d


def __getattr__(name: str) -> type[nn.Module]:
    if name == "FusedBatchNormAct2d":
        return _fused_batch_norm_act_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _timm_batch_norm_act() -> type[nn.Module] | None:
    """timm's ``BatchNormAct2d`` where timm is imported; where it is not, no module is one."""
    layers = sys.modules.get("timm.layers")
    return getattr(layers, "BatchNormAct2d", None)


def uses_fused_kernel(module: nn.Module) -> bool:
    if isinstance(module, FusedBatchNorm2d):
        return True
    return _timm_batch_norm_act() is not None and isinstance(module, _fused_batch_norm_act_class())


def use_fused_batch_norm(model: nn.Module) -> int:
    """Switch every ``nn.BatchNorm2d`` (and timm's ``BatchNormAct2d``) of ``model`` to the fused
    kernel's classes; returns how many. Nothing is switched where the kernel is unavailable.
    Parameters, buffers and state-dict keys are untouched; call it again after building a new model.
    """
    if load_kernels() is None:
        return 0
    batch_norm_act = _timm_batch_norm_act()
    switched = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = FusedBatchNorm2d
            switched += 1
        elif batch_norm_act is not None and type(module) is batch_norm_act:
            module.__class__ = _fused_batch_norm_act_class()
            switched += 1
    if switched:
        logger.debug("Fused CPU BatchNorm for %d modules", switched)
    return switched
