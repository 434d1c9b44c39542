"""The weighted sums at the heart of the supernet: ``scale * sum_k w_k * x_k``.

Every cell mixes its inputs with beta weights and every edge mixes its candidate ops with alpha
weights. Written as ``sum(w * x)``, autograd keeps K products, K-1 sums and a scaling pass, and
gets each weight's gradient by materialising ``grad * x_k`` before summing it. Here the forward
accumulates in place (one pass per term) and the backward takes each weight's gradient as a dot
product. Terms whose weight was folded into the op that made them (see ``cell.py``) are added as
they are, and their gradient is the output's gradient itself.
"""

from __future__ import annotations

import ctypes

import torch

from pnfs_pipeline.nas.native_kernels import DTYPE_SUFFIXES, kernel, load_kernels


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """1-D views of two same-shaped tensors with the same dense layout, or None."""
    if a.is_contiguous() and b.is_contiguous():
        return a.view(-1), b.view(-1)
    if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) and b.is_contiguous(
        memory_format=torch.channels_last
    ):
        return a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1)
    return None


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    b = b.to(a.dtype)
    # torch.dot is BLAS for float32/64 but a slow scalar loop for bfloat16 (14x slower than the
    # product-and-sum, measured on 2 cores), where the two passes are the faster choice.
    flat = _flat_pair(a, b) if a.dtype in (torch.float32, torch.float64) else None
    if flat is None:
        # At least float32: a low-precision sum would round the gradient to bfloat16's 8 bits.
        return (a * b).sum(dtype=torch.promote_types(a.dtype, torch.float32))
    return torch.dot(*flat)


def _scale_and_dot(
    grad: torch.Tensor, term: torch.Tensor, weight: torch.Tensor, scale: float, need_scaled: bool, need_dot: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """``(grad * weight * scale, sum(grad * term))`` in one pass of the C kernel
    (``csrc/weighted_sum.c``), or None where it does not serve (other devices, dtypes or layouts)."""
    if grad.device.type != "cpu" or grad.dtype != term.dtype or grad.dtype not in DTYPE_SUFFIXES:
        return None
    flat = _flat_pair(grad, term)
    library = load_kernels() if flat is not None else None
    if library is None:
        return None
    scaled = torch.empty_like(grad) if need_scaled else None
    dot = torch.zeros((), dtype=torch.float64) if need_dot else None
    status = kernel("pnfs_scale_and_dot", grad.dtype)(
        grad.data_ptr(), term.data_ptr(), grad.numel(), float(weight) * scale, torch.get_num_threads(),
        None if scaled is None else scaled.data_ptr(), None if dot is None else dot.data_ptr(),
    )
    if status:
        raise RuntimeError(f"weighted sum backward kernel failed (status {status}) on {tuple(grad.shape)}")
    return scaled, dot


def _weighted_sum_in_passes(weights, scale, weighted, prescaled, dtype) -> torch.Tensor:
    """PyTorch's kernels, one pass per term: the first addition makes the output."""
    scaled = (weights * scale).to(dtype)
    if prescaled:
        if weighted:
            out = torch.addcmul(prescaled[0].to(dtype), weighted[0].to(dtype), scaled[0])
            weighted_start = 1
        else:
            out = torch.add(prescaled[0].to(dtype), prescaled[1].to(dtype))
            prescaled = prescaled[1:]
            weighted_start = 0
        for p in prescaled[1:]:
            out.add_(p.to(dtype))
    else:
        out = weighted[0].to(dtype) * scaled[0]
        weighted_start = 1
    for k in range(weighted_start, len(weighted)):
        out.addcmul_(weighted[k].to(dtype), scaled[k])
    return out


def _native_weighted_sum(weights, scale, weighted, prescaled, relu: bool) -> torch.Tensor | None:
    """The sum (and ReLU) in one pass of the C kernel, or None where it does not serve: every term
    a CPU map of one dtype (float32 / bfloat16) and one dense layout."""
    terms = [*weighted, *prescaled]
    first = terms[0]
    if first.device.type != "cpu" or first.dtype not in DTYPE_SUFFIXES:
        return None
    if any(t.dtype != first.dtype or t.shape != first.shape or _flat_pair(first, t) is None for t in terms):
        return None
    library = load_kernels()
    if library is None:
        return None
    factors = [*(weights.detach().double() * scale).tolist(), *([1.0] * len(prescaled))]
    out = torch.empty_like(first)
    status = kernel("pnfs_weighted_sum", first.dtype)(
        (ctypes.c_void_p * len(terms))(*(t.data_ptr() for t in terms)),
        (ctypes.c_float * len(terms))(*factors),
        len(terms), first.numel(), int(relu), torch.get_num_threads(), out.data_ptr(),
    )
    if status:
        raise RuntimeError(f"weighted sum kernel failed (status {status}) on {tuple(first.shape)}")
    return out


class _WeightedSum(torch.autograd.Function):
    """``scale * sum_k w_k x_k + sum_j p_j``: weighted terms ``x_k``, then ``prescaled`` terms ``p_j``.

    Prescaled terms carry their weight already (folded into the op that made them); their
    gradient is the output's gradient itself, with no pass over the map.
    """

    @staticmethod
    def forward(
        ctx, weights: torch.Tensor, scale: float, prescaled_count: int, relu: bool, *tensors: torch.Tensor
    ) -> torch.Tensor:
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        weighted_count = len(tensors) - prescaled_count
        weighted, prescaled = tensors[:weighted_count], tensors[weighted_count:]
        out = _native_weighted_sum(weights, scale, weighted, prescaled, relu)
        if out is None:
            out = _weighted_sum_in_passes(weights, scale, weighted, prescaled, dtype)
            if relu:
                out.clamp_min_(0.0)
        ctx.scale = scale
        ctx.relu = relu
        ctx.prescaled_dtypes = [t.dtype for t in tensors[weighted_count:]]
        ctx.save_for_backward(weights, out if relu else None, *weighted)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weights, out, *weighted = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        need_weights = ctx.needs_input_grad[0] and bool(weighted)
        dots, grad_tensors = [], []
        for k, t in enumerate(weighted):
            need_tensor = ctx.needs_input_grad[4 + k]
            fused = _scale_and_dot(grad, t, weights[k], ctx.scale, need_tensor, need_weights)
            if fused is not None:
                scaled, dot = fused
            else:
                scaled = (grad * (weights[k] * ctx.scale).to(grad.dtype)).to(t.dtype) if need_tensor else None
                dot = _dot(grad, t) if need_weights else None
            grad_tensors.append(scaled)
            dots.append(dot)
        grad_weights = torch.stack([d.to(weights.dtype) for d in dots]) * ctx.scale if need_weights else None
        for j, dtype in enumerate(ctx.prescaled_dtypes):
            grad_tensors.append(grad.to(dtype) if ctx.needs_input_grad[4 + len(weighted) + j] else None)
        return (grad_weights, None, None, None, *grad_tensors)


def weighted_sum(
    weights: torch.Tensor | list[torch.Tensor],
    tensors: list[torch.Tensor],
    scale: float = 1.0,
    prescaled: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
    relu: bool = False,
) -> torch.Tensor:
    """``scale * sum_k weights[k] * tensors[k] + sum(prescaled)`` with a cheap backward, passed
    through a ReLU when ``relu`` (in the same pass where the C kernel serves).

    ``prescaled`` are terms whose weight is already applied (see the module docstring).
    """
    if isinstance(weights, (list, tuple)):
        weights = torch.stack(list(weights)) if weights else torch.zeros(0)
    if len(tensors) != weights.shape[0]:
        raise ValueError(f"{weights.shape[0]} weights for {len(tensors)} tensors")
    prescaled = list(prescaled)
    if not tensors and not prescaled:
        raise ValueError("weighted_sum needs at least one term")
    if len(tensors) + len(prescaled) == 1:
        out = tensors[0] * (weights[0] * scale) if tensors else prescaled[0]
        return torch.relu(out) if relu else out
    return _WeightedSum.apply(weights, float(scale), len(prescaled), relu, *tensors, *prescaled)
