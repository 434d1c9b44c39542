"""The CPU training rewrites (phase-split dilated / subsampled strided depthwise convolutions and
the fused weighted sum) give the results of the plain PyTorch formulation."""

import copy

import pytest
import torch
from torch import nn

from pnfs_pipeline.nas.fast_depthwise import (
    FastDepthwiseConv2d,
    _native_same_padded_backward,
    _Subsample,
    strided_by_subsampling,
    strided_depthwise_conv2d,
    use_fast_depthwise,
)
from pnfs_pipeline.nas.mixing import weighted_sum
from pnfs_pipeline.nas.native_kernels import load_kernels, unavailable_reason
from pnfs_pipeline.nas.ops import build_op


def _forward_backward(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool = False):
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    out.backward(grad.to(out.dtype))
    return out.detach().double(), x.grad.double(), conv.weight.grad.double()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("dilation", "stride", "size"),
    [(2, 1, (16, 12)), (2, 1, (15, 11)), (3, 1, (13, 17)), (1, 2, (16, 12)), (1, 2, (15, 9))],
)
def test_rewrite_matches_native_fp32(dilation, stride, size, channels_last):
    torch.manual_seed(0)
    native = nn.Conv2d(6, 6, 3, stride, dilation, dilation=dilation, groups=6, bias=True)
    fast = copy.deepcopy(native)
    assert use_fast_depthwise(fast) == 1 and isinstance(fast, FastDepthwiseConv2d)
    x = torch.randn(3, 6, *size)
    if channels_last:
        native, fast = native.to(memory_format=torch.channels_last), fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(native(x).shape)
    reference = _forward_backward(native, x, grad)
    if stride > 1:  # the module takes this route under reduced precision only; call it directly
        xg = x.detach().clone().requires_grad_()
        out = strided_by_subsampling(xg, fast.weight, fast.bias, fast.stride, fast.padding, fast.dilation, 6)
        out.backward(grad)
        result = (out.detach().double(), xg.grad.double(), fast.weight.grad.double())
    else:
        result = _forward_backward(fast, x, grad)
    assert result[0].shape == reference[0].shape
    for got, want in zip(result, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert fast(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_subsampling_returns_its_gradient_in_the_input_layout(channels_last):
    # Slicing's own backward scatters into an NCHW tensor, which a channels_last convolution
    # before it would transpose back (a full-size copy per strided depthwise conv).
    # (A leaf's .grad is restrided to the leaf's layout, so the gradient is caught in flight.)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    leaf = torch.randn(2, 4, 9, 7).contiguous(memory_format=layout).requires_grad_()
    full = leaf * 1.0
    seen = []
    full.register_hook(seen.append)
    out = _Subsample.apply(full, (2, 2))
    assert out.shape == (2, 4, 5, 4) and out.is_contiguous(memory_format=layout)
    grad = torch.randn(out.shape)
    out.backward(grad)
    assert seen[0].is_contiguous(memory_format=layout)
    expected = torch.zeros(full.shape)
    expected[:, :, ::2, ::2] = grad
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


def test_bf16_channels_last_dilated_weight_gradient_is_right():
    """Against a float64 reference. At this size PyTorch 2.14's own bf16 channels_last kernel returns
    a weight gradient off by orders of magnitude (uninitialised memory), the rewrite does not."""
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, 1, 2, dilation=2, groups=64, bias=False)
    x = torch.randn(2, 64, 64, 48)
    grad = torch.randn(conv(x).shape, dtype=torch.float64)
    reference = _forward_backward(copy.deepcopy(conv).double(), x.double(), grad)
    fast = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    use_fast_depthwise(fast)
    got = _forward_backward(fast, x.contiguous(memory_format=torch.channels_last), grad.float(), bf16=True)
    for name, a, b in zip(("output", "input grad", "weight grad"), got, reference, strict=True):
        error = ((a - b).abs().max() / b.abs().max()).item()
        assert error < 2e-2, f"{name}: relative error {error:.3f}"


needs_kernels = pytest.mark.skipif(load_kernels() is None, reason=f"C kernels unavailable: {unavailable_reason()}")


@needs_kernels
@pytest.mark.parametrize(("kernel", "padding", "size"), [(3, 1, (16, 12)), (3, 1, (15, 9)), (5, 2, (13, 10))])
def test_strided_depthwise_c_kernels_match_native_fp32(kernel, padding, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 24, kernel, 2, padding, groups=24, bias=True).to(memory_format=torch.channels_last)
    x = torch.randn(3, 24, *size).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(conv(x).shape).contiguous(memory_format=torch.channels_last)
    reference = _forward_backward(conv, x, grad)
    xg = x.detach().clone().requires_grad_()
    weight, bias = conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()
    out = strided_depthwise_conv2d(xg, weight, bias, 2, padding)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.backward(grad)
    for got, want in zip((out.detach(), xg.grad, weight.grad), reference, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, grad.sum((0, 2, 3)), rtol=1e-5, atol=1e-5)


def _bf16_case(conv, shape):
    """A channels_last copy of ``conv`` on the fast path, a channels_last input of ``shape``, an
    output gradient and the float64 reference (output, input and weight gradients)."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    grad = torch.randn(conv(x).shape, dtype=torch.float64)
    reference = _forward_backward(copy.deepcopy(conv).double(), x.double(), grad)
    fast = copy.deepcopy(conv).to(memory_format=torch.channels_last)
    assert use_fast_depthwise(fast) == 1
    return fast, x.contiguous(memory_format=torch.channels_last), grad, reference


def _assert_bf16_training_matches(fast, x, grad, reference, backward_name):
    """``fast``'s bf16-autocast output and gradients on channels_last ``x`` against ``reference``
    (output, input and weight gradients in float64), through the backward named."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert type(out.grad_fn).__name__ == backward_name
    out.backward(grad.to(out.dtype).contiguous(memory_format=torch.channels_last))
    got = (out.detach().double(), x.grad.double(), fast.weight.grad.double())
    for name, a, b in zip(("output", "input grad", "weight grad"), got, reference, strict=True):
        error = ((a - b).abs().max() / b.abs().max()).item()
        assert error < 2e-2, f"{name}: relative error {error:.3f}"


def _float64_depthwise_backward(grad, x, weight, dilation):
    padding = dilation * (weight.shape[-1] - 1) // 2
    return torch.ops.aten.convolution_backward(
        grad.double(), x.double(), weight.double(), None, [1, 1], [padding] * 2, [dilation] * 2,
        False, [0, 0], x.shape[1], [True, True, False],
    )[:2]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("channels", "kernel_size", "dilation", "size"),
    [
        (32, 3, 1, (9, 7)),  # the vector path only
        (37, 3, 2, (11, 6)),  # vectors and a remainder of 5 channels
        (21, 5, 1, (8, 9)),
        (16, 5, 2, (7, 10)),
        (6, 7, 1, (9, 8)),  # any other kernel size: the scalar path
        (16, 3, 3, (2, 5)),  # the padding (3) larger than the map's height
    ],
)
def test_same_padded_depthwise_c_kernel_matches_float64(dtype, channels, kernel_size, dilation, size):
    torch.manual_seed(0)
    x = torch.randn(3, channels, *size).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel_size, kernel_size).to(dtype)
    want_x, want_w = _float64_depthwise_backward(grad, x, weight, dilation)
    got_x, got_w = _native_same_padded_backward(grad, x, weight, dilation, True, True)
    assert got_x.dtype == dtype and got_x.is_contiguous(memory_format=torch.channels_last)
    assert got_w.dtype == torch.float32 and got_w.shape == weight.shape
    # bfloat16: the float sums rounded once on the way out (8 significant bits)
    tolerance = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got_x.double(), want_x, rtol=tolerance, atol=tolerance * want_x.abs().max().item())
    torch.testing.assert_close(got_w.double(), want_w, rtol=1e-5, atol=1e-5 * want_w.abs().max().item())


@needs_kernels
def test_same_padded_depthwise_c_kernel_computes_only_the_gradients_asked_for():
    torch.manual_seed(0)
    x = torch.randn(2, 24, 6, 5).bfloat16().contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape).bfloat16().contiguous(memory_format=torch.channels_last)
    weight = torch.randn(24, 1, 3, 3).bfloat16()
    both = _native_same_padded_backward(grad, x, weight, 2, True, True)
    input_only = _native_same_padded_backward(grad, x, weight, 2, True, False)
    weight_only = _native_same_padded_backward(grad, x, weight, 2, False, True)
    assert input_only[1] is None and weight_only[0] is None
    torch.testing.assert_close(input_only[0], both[0], rtol=0, atol=0)
    torch.testing.assert_close(weight_only[1], both[1], rtol=0, atol=0)


@needs_kernels
def test_undilated_depthwise_module_takes_the_c_kernel_in_bf16_only():
    """bfloat16 channels_last training: the C kernel's backward, against a float64 reference;
    float32 keeps oneDNN's (as fast there)."""
    fast, x_cl, grad, reference = _bf16_case(nn.Conv2d(48, 48, 3, 1, 1, groups=48, bias=True), (2, 48, 16, 12))
    assert type(fast(x_cl).grad_fn).__name__ == "ConvolutionBackward0"
    _assert_bf16_training_matches(fast, x_cl, grad, reference, "_SamePaddedDepthwiseBackward")
    torch.testing.assert_close(fast.bias.grad.double(), grad.sum((0, 2, 3)), rtol=2e-2, atol=2e-2)


@needs_kernels
def test_strided_depthwise_module_trains_through_the_c_kernels_in_bf16():
    """MobileNetV2's down-sampling depthwise convolution, against a float64 reference."""
    fast, x, grad, reference = _bf16_case(nn.Conv2d(96, 96, 3, 2, 1, groups=96, bias=False), (2, 96, 32, 24))
    _assert_bf16_training_matches(fast, x, grad, reference, "_StridedDepthwiseBackward")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weighted_sum_backward_kernel_matches_the_products(dtype):
    torch.manual_seed(0)
    terms = [torch.randn(2, 16, 9, 7).to(dtype).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    weights = torch.tensor([0.2, 0.5, 0.3], requires_grad=True)
    leaves = [t.clone().requires_grad_() for t in terms]
    out = weighted_sum(weights, leaves, 3.0)
    grad = torch.randn(out.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    out.backward(grad)
    for k, (leaf, term) in enumerate(zip(leaves, terms, strict=True)):
        factor = torch.tensor(float(weights[k].detach()) * 3.0, dtype=torch.float32)
        torch.testing.assert_close(leaf.grad, (grad.float() * factor).to(dtype), rtol=0, atol=0)
        dot = 3.0 * (grad.double() * term.double()).sum()
        assert abs(float(weights.grad[k]) - float(dot)) < 1e-5 * float(3.0 * (grad.double() * term.double()).abs().sum())


def test_only_eligible_convolutions_switch_and_state_dicts_stay():
    model = nn.Sequential(
        build_op("atr_conv_3x3", 8),  # one dilated depthwise conv
        build_op("sep_conv_3x3", 8),  # two undilated, stride-1 "same" depthwise convs
        nn.Conv2d(8, 8, 3, 2, 1, groups=8),  # strided depthwise
        nn.Conv2d(8, 16, 3, 2, 1),  # dense
        nn.Conv2d(16, 16, 3, 1, 1, dilation=2, groups=16),  # dilated but not "same" padding
        nn.Conv2d(16, 16, 3, 1, 0, groups=16),  # undilated, not "same" padding
    )
    keys = list(model.state_dict())
    assert use_fast_depthwise(model) == 4
    assert list(model.state_dict()) == keys
    assert all(type(model[i]) is nn.Conv2d for i in (3, 4, 5))


def test_inference_uses_the_native_kernel():
    conv = nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=4)
    use_fast_depthwise(conv)
    x = torch.randn(1, 4, 9, 7)
    with torch.no_grad():
        out = conv(x)
    torch.testing.assert_close(out, nn.functional.conv2d(x, conv.weight, conv.bias, 1, 2, 2, 4))


@pytest.mark.parametrize("channels_last", [False, True])
def test_weighted_sum_matches_the_plain_sum(channels_last):
    torch.manual_seed(0)
    weights = torch.rand(3, dtype=torch.float64, requires_grad=True)
    tensors = [torch.randn(2, 4, 5, 3, dtype=torch.float64) for _ in range(3)]
    if channels_last:
        tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
    tensors = [t.requires_grad_() for t in tensors]
    assert torch.autograd.gradcheck(lambda w, *ts: weighted_sum(w, list(ts), 3.0), (weights, *tensors))
    plain = 3.0 * sum(w * t for w, t in zip(weights, tensors, strict=True))
    torch.testing.assert_close(weighted_sum(weights, tensors, 3.0), plain)


@pytest.mark.parametrize("weighted", [0, 1, 2])
def test_weighted_sum_adds_prescaled_terms_as_they_are(weighted):
    torch.manual_seed(0)
    weights = torch.rand(weighted, dtype=torch.float64, requires_grad=True)
    tensors = [torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(weighted + 2)]

    def mix(w, *ts):
        return weighted_sum(w, list(ts[:weighted]), 3.0, prescaled=list(ts[weighted:]))

    assert torch.autograd.gradcheck(mix, (weights, *tensors))
    plain = 3.0 * sum(w * t for w, t in zip(weights, tensors, strict=False)) + tensors[-2] + tensors[-1]
    torch.testing.assert_close(mix(weights, *tensors), plain)


def test_weighted_sum_mixed_precision_inputs():
    weights = torch.tensor([0.25, 0.75], requires_grad=True)
    low = torch.randn(2, 3, 4, 4).to(torch.bfloat16).requires_grad_()
    full = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = weighted_sum(weights, [low, full], 2.0)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert low.grad.dtype == torch.bfloat16 and full.grad.dtype == torch.float32
    torch.testing.assert_close(weights.grad, 2.0 * torch.stack([low.float().sum(), full.sum()]).detach(), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="2 weights for 1 tensors"):
        weighted_sum(weights, [full])


def test_every_benchmark_training_mode_runs_and_reports_its_figures():
    """In this process (the suite spawns a measuring process for each row, as the tests of its
    peak memory and allocator do)."""
    from pnfs_pipeline.benchmarks import TRAINING_MODES, _training_row

    threads = torch.get_num_threads()
    try:
        for mode in TRAINING_MODES:
            row = _training_row("mobilenet_v2_CNFx3", (32, 32), 2, 1, "cpu", mode, 1)
            assert row["images_per_second"] > 0 and row["peak_memory_mb"] > 0
    finally:
        torch.set_num_threads(threads)


def test_benchmark_distributed_row_splits_the_batch_over_two_workers():
    from pnfs_pipeline.benchmarks import DISTRIBUTED_MODE, measure_distributed_training

    row = measure_distributed_training("mobilenet_v2_CNFx3", (32, 32), 4, 1, DISTRIBUTED_MODE, 2, 1)
    assert row["images_per_second"] > 0 and row["peak_memory_mb"] > 0
    with pytest.raises(ValueError, match="batch 5 must divide by the 2 processes"):
        measure_distributed_training("mobilenet_v2_CNFx3", (32, 32), 5, 1, DISTRIBUTED_MODE, 2, 1)


@needs_kernels
@pytest.mark.parametrize(("dilation", "stride"), [(2, 1), (1, 2)])
def test_c_kernel_weight_gradient_keeps_the_weight_strides(dilation, stride):
    """DistributedDataParallel copies a gradient whose strides differ from its parameter's through
    a slow path, with a warning; the C kernels' gradient is laid out as the weight."""
    conv = nn.Conv2d(16, 16, 3, stride, dilation, dilation=dilation, groups=16, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    assert conv.weight.stride() == (9, 1, 3, 1)  # not the plain (9, 9, 3, 1)
    use_fast_depthwise(conv)
    x = torch.randn(2, 16, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert type(out.grad_fn).__name__ in ("_StridedDepthwiseBackward", "_SamePaddedDepthwiseBackward")
    out.float().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
    x_used = x.bfloat16().float()  # what autocast gave the convolution
    reference = torch.nn.grad.conv2d_weight(x_used, conv.weight.shape, torch.ones(out.shape), stride, dilation, dilation, 16)
    torch.testing.assert_close(conv.weight.grad, reference, rtol=1e-4, atol=1e-4)


def test_vector_head_gives_the_same_heatmaps_and_gradients_in_both_memory_formats():
    from pnfs_pipeline.nas.supernet import HeadConfig, PartHead

    torch.manual_seed(0)
    head = PartHead(8, 5, HeadConfig(vector_in_pixel=True, vector_dim=4, convolution_mode="2D"))
    fast = copy.deepcopy(head).to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 6, 5)
    grad = torch.randn(2, 5, 6, 5)
    results = []
    for module, inp in ((head, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        inp = inp.clone().requires_grad_()
        out = module(inp)
        out.backward(grad)
        results.append((out.detach(), inp.grad, module.conv.weight.grad))
    assert results[1][0].shape == (2, 5, 6, 5)
    for plain, channels_last in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(channels_last, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("kind", ["atr_conv_3x3", "sep_conv_3x3", "reduce", "upsample", "skip_connect"])
def test_scale_folded_into_batch_norm_equals_scaling_the_output(kind, training):
    from pnfs_pipeline.nas.ops import ReduceConnect, UpsampleConnect, scaled_forward

    torch.manual_seed(0)
    connections = {"reduce": ReduceConnect, "upsample": UpsampleConnect}
    plain = connections[kind](4, 4) if kind in connections else build_op(kind, 4)
    for module in plain.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            if module.affine:
                nn.init.uniform_(module.weight, 0.5, 2)
                nn.init.uniform_(module.bias, -1, 1)
    folded = copy.deepcopy(plain)
    plain.train(training)
    folded.train(training)
    x = torch.randn(3, 4, 8, 6)
    grad = torch.randn(3, 4, *{"reduce": (4, 3), "upsample": (16, 12)}.get(kind, (8, 6)))
    fold = (lambda m, t: m(t, factor=2.7)) if kind == "upsample" else (lambda m, t: scaled_forward(m, t, 2.7))
    outputs = []
    for module, run in ((plain, lambda m, t: m(t) * 2.7), (folded, fold)):
        inp = x.clone().requires_grad_()
        out = run(module, inp)
        out.backward(grad)
        outputs.append((out.detach(), inp.grad, [p.grad for p in module.parameters()], list(module.buffers())))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-5, atol=1e-5)
    for folded_grad, plain_grad in zip(outputs[1][2], outputs[0][2], strict=True):
        # A conv bias before a training-mode BatchNorm has a gradient of rounding size only.
        torch.testing.assert_close(folded_grad, plain_grad, rtol=1e-4, atol=1e-4)
    for folded_buffer, plain_buffer in zip(outputs[1][3], outputs[0][3], strict=True):
        torch.testing.assert_close(folded_buffer, plain_buffer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mixed_dtypes", [False, True])
def test_weighted_sum_with_relu_matches_relu_of_the_plain_sum(dtype, mixed_dtypes):
    """One pass in the C kernel where it serves (one dtype), PyTorch's passes otherwise."""
    torch.manual_seed(0)
    shape = (2, 16, 9, 7)
    terms = [torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    prescaled = [torch.randn(shape).contiguous(memory_format=torch.channels_last)]
    prescaled[0] = prescaled[0].to(torch.float32 if mixed_dtypes else dtype)
    weights = torch.tensor([0.2, 0.7])
    results = []
    for fused in (True, False):
        leaves = [t.double().requires_grad_() if not fused else t.clone().requires_grad_() for t in terms + prescaled]
        w = weights.clone().double().requires_grad_() if not fused else weights.clone().requires_grad_()
        if fused:
            out = weighted_sum(w, leaves[:2], 3.0, prescaled=leaves[2:], relu=True)
        else:
            out = torch.relu(3.0 * (w[0] * leaves[0] + w[1] * leaves[1]) + leaves[2])
        grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        out.backward(grad.to(out.dtype))
        results.append((out.detach().double(), [leaf.grad.double() for leaf in leaves], w.grad.double()))
    (out, grads, w_grad), (ref_out, ref_grads, ref_w_grad) = results
    tolerance = 1e-5 if dtype == torch.float32 and not mixed_dtypes else 2e-2
    assert ((out - ref_out).abs().max() / ref_out.abs().max()).item() < tolerance
    for got, want in zip(grads, ref_grads, strict=True):
        assert ((got - want).abs().max() / want.abs().max()).item() < tolerance
    assert ((w_grad - ref_w_grad).abs().max() / ref_w_grad.abs().max()).item() < tolerance
    assert (out >= 0).all()


def test_weighted_sum_relu_lets_nan_through():
    terms = [torch.ones(1, 4, 3, 3).contiguous(memory_format=torch.channels_last) for _ in range(2)]
    terms[1][0, 2, 1, 1] = float("nan")
    out = weighted_sum(torch.tensor([0.5, 0.5]), terms, 3.0, relu=True)
    assert out.isnan().sum() == 1 and out[0, 2, 1, 1].isnan()


def test_every_kernel_source_file_ships_with_the_package():
    """A wheel without common.h would build no kernels (and fall back with a warning)."""
    import fnmatch
    from pathlib import Path

    from pnfs_pipeline.nas.native_kernels import SOURCE_DIR

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pnfs_pipeline"]
    package = root / "src" / "pnfs_pipeline"
    files = [p.relative_to(package).as_posix() for p in SOURCE_DIR.iterdir() if p.suffix in (".c", ".h")]
    assert any(name.endswith(".h") for name in files)
    missing = [name for name in files if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert not missing, f"not in pyproject's package-data: {missing}"


def test_benchmark_row_peak_memory_is_the_measuring_process_own():
    from pnfs_pipeline.benchmarks import TRAINING_MODES, measure_training, peak_memory_mb

    # Resident here, in the suite's process: a child forked from it must not report it as its own.
    ballast = torch.ones(2 * 2**30 // 4)
    suite_peak = peak_memory_mb(torch.device("cpu"))
    assert suite_peak > 2048
    row = measure_training("mobilenet_v2_CNFx3", (32, 32), 2, 1, torch.device("cpu"), next(iter(TRAINING_MODES)), 1)
    del ballast
    assert 0 < row["peak_memory_mb"] < suite_peak - 1024
    assert row["allocator"] == "system"  # nothing preloaded unless asked (tests/engine/test_allocator.py)


@needs_kernels
def test_weight_gradient_sum_does_not_depend_on_which_thread_finishes_first():
    """sum(g * x) over 8 threads: the threads' shares are added in a fixed order, so the
    architecture gradients (and the searched genotype) repeat exactly on many-core machines."""
    from pnfs_pipeline.nas.native_kernels import kernel

    # Eight equal shares: 2^54 in the first, -2^54 in the third, 1 in the others. In double
    # 2^54 + 1 rounds to 2^54, so the total depends on the order the shares are added in.
    x = torch.zeros(8, 8192)
    x[0], x[2], x[[1, 3, 4, 5, 6, 7], 0] = 2.0**41, -(2.0**41), 1.0
    x, g = x.flatten(), torch.ones(8 * 8192)
    dot = torch.zeros((), dtype=torch.float64)
    results = set()
    for _ in range(1000):
        assert kernel("pnfs_scale_and_dot", torch.float32)(g.data_ptr(), x.data_ptr(), x.numel(), 1.0, 8, None, dot.data_ptr()) == 0
        results.add(dot.item())
    assert results == {5.0}  # thread order: (2^54 + 1) - 2^54 + 5 x 1
