"""The fused CPU BatchNorm + activation kernel against PyTorch's BatchNorm followed by the activation."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import nn

from pnfs_pipeline.nas import native_kernels
from pnfs_pipeline.nas.fused_batch_norm import (
    FusedBatchNorm2d,
    FusedBatchNormAct2d,
    fused_batch_norm_act,
    use_fused_batch_norm,
)
from pnfs_pipeline.nas.ops import build_connection, build_op, scaled_forward

needs_kernel = pytest.mark.skipif(
    native_kernels.load_kernels() is None, reason=f"kernels unavailable: {native_kernels.unavailable_reason()}"
)

ACTIVATION = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6}


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    reference, other = reference.detach().float(), other.detach().float()
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12))


def _run(fused_kernel: bool, x0, weight0, bias0, activation: str):
    """The fused kernel, or the reference: PyTorch's BatchNorm then activation in float64 (PyTorch's
    own float32 kernels are not a reference: with one thread, a channels_last map whose mean is 15
    standard deviations from zero gets an input gradient 15% off from its two-thread result). For
    bfloat16 the reference rounds BatchNorm's output to bfloat16 before the activation, as PyTorch's
    separate kernels do."""
    channels = x0.shape[1]
    dtype = torch.float32 if fused_kernel else torch.float64
    x = (x0 if fused_kernel else x0.double()).clone().requires_grad_()
    weight = None if weight0 is None else weight0.to(dtype).requires_grad_()
    bias = None if bias0 is None else bias0.to(dtype).requires_grad_()
    running_mean = torch.full((channels,), 0.5, dtype=dtype)
    running_var = torch.full((channels,), 2.0, dtype=dtype)
    if fused_kernel:
        y = fused_batch_norm_act(x, weight, bias, running_mean, running_var, 0.1, 1e-5, activation)
    else:
        normalised = F.batch_norm(x, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
        if x0.dtype == torch.bfloat16:
            normalised = normalised.to(torch.bfloat16).double()
        y = ACTIVATION[activation](normalised)
    grad = _channels_last(torch.randn(x0.shape, generator=torch.Generator().manual_seed(7)).to(x0.dtype))
    y.backward(grad.to(y.dtype))
    return {
        "y": y.detach().to(x0.dtype),
        "grad_x": x.grad,
        "grad_weight": None if weight is None else weight.grad,
        "grad_bias": None if bias is None else bias.grad,
        "running_mean": running_mean.float(),
        "running_var": running_var.float(),
    }


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 24, 16, 12), (3, 5, 7, 3), (2, 64, 9, 11)])
def test_matches_batch_norm_then_activation(dtype, activation, affine, shape):
    generator = torch.Generator().manual_seed(sum(shape))
    channels = shape[1]
    # A mean far from zero against the spread checks the statistics for cancellation.
    x0 = _channels_last((torch.randn(shape, generator=generator) * 2.0 + 30.0).to(dtype))
    weight0 = torch.rand(channels, generator=generator) + 0.5 if affine else None
    bias0 = torch.randn(channels, generator=generator) * 2.0 if affine else None
    reference = _run(False, x0, weight0, bias0, activation)
    result = _run(True, x0, weight0, bias0, activation)
    assert result["y"].is_contiguous(memory_format=torch.channels_last)
    assert result["y"].dtype == dtype and result["grad_x"].dtype == dtype
    # float32: rounding only. bfloat16: the output and the input gradient round to 8 bits.
    tolerance = {"y": 1e-5, "grad_x": 1e-4} if dtype == torch.float32 else {"y": 1e-2, "grad_x": 3e-2}
    assert _relative(reference["y"], result["y"]) < tolerance["y"]
    assert _relative(reference["grad_x"], result["grad_x"]) < tolerance["grad_x"]
    for name in ("running_mean", "running_var"):
        assert torch.allclose(reference[name], result[name], rtol=1e-4, atol=1e-5), name
    if affine:
        assert _relative(reference["grad_weight"], result["grad_weight"]) < 1e-3
        assert _relative(reference["grad_bias"], result["grad_bias"]) < 1e-3


@needs_kernel
def test_relu6_passes_no_gradient_where_the_bfloat16_output_rounds_to_six():
    # Normalised to -1 and +1, then 5.99 -+ 0.005: both below 6 in float32, both stored as 6.0 in
    # bfloat16, where PyTorch's ReLU6 (on the stored BatchNorm output) passes no gradient.
    x0 = _channels_last(torch.tensor([0.0, 1.0]).to(torch.bfloat16).view(1, 1, 1, 2))
    weight0, bias0 = torch.tensor([0.005]), torch.tensor([5.99])
    reference = _run(False, x0, weight0, bias0, "relu6")
    result = _run(True, x0, weight0, bias0, "relu6")
    assert torch.equal(reference["y"], torch.full_like(reference["y"], 6.0))
    assert torch.equal(result["y"], reference["y"])
    assert not reference["grad_x"].any() and not result["grad_x"].any()
    assert not result["grad_bias"].any()


@needs_kernel
@pytest.mark.parametrize(
    ("bound", "spread", "stored"),
    [
        (5.984375, 2e-5, (5.96875, 6.0)),  # from 6 - 1/64 up, bfloat16 rounds to 6
        (2.0**-134, 2.0**-140, (0.0, 2.0**-133)),  # up to 2^-134 (a float32 denormal) it rounds to 0
    ],
)
def test_relu6_gradient_mask_follows_bfloat16_rounding_at_both_bounds(bound, spread, stored):
    # Normalised to about -1 and +1, the two outputs land just below and just above the bound, on
    # either side of where bfloat16 rounding moves them onto the activation's edge.
    x0 = _channels_last(torch.tensor([0.0, 1.0]).to(torch.bfloat16).view(1, 1, 1, 2))
    weight0, bias0 = torch.tensor([spread]), torch.tensor([bound])
    reference = _run(False, x0, weight0, bias0, "relu6")
    result = _run(True, x0, weight0, bias0, "relu6")
    assert reference["y"].flatten().tolist() == list(stored)
    assert torch.equal(result["y"], reference["y"])
    # The bias's gradient sums the output gradient where the activation passes it.
    grad = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7)).to(torch.bfloat16).flatten()
    passed_sum = sum(float(g) for g, s in zip(grad, stored, strict=True) if 0 < s < 6)
    assert float(reference["grad_bias"]) == pytest.approx(passed_sum)
    assert float(result["grad_bias"]) == pytest.approx(passed_sum)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_nan_in_a_channel_comes_out_as_nan(dtype, activation):
    # A diverging run must show NaN, not a channel silently set to zero by the activation.
    x = torch.randn(2, 3, 4, 5)
    x[1, 1, 2, 3] = float("nan")
    x = _channels_last(x.to(dtype))
    y = fused_batch_norm_act(x, None, None, None, None, 0.1, 1e-5, activation)
    assert y[:, 1].isnan().all()
    assert not y[:, 0].isnan().any() and not y[:, 2].isnan().any()


def _small_network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 1),
        BatchNormAct2d(24, act_layer=nn.ReLU6),
        nn.Conv2d(24, 8, 1),
        BatchNormAct2d(8, apply_act=False),
    )


@needs_kernel
def test_switched_modules_train_like_the_originals_and_keep_their_state_dict():
    torch.manual_seed(0)
    native = _small_network().to(memory_format=torch.channels_last)
    switched = copy.deepcopy(native)
    assert use_fused_batch_norm(switched) == 3
    assert [type(m) for m in switched if isinstance(m, nn.BatchNorm2d)] == [
        FusedBatchNorm2d,
        FusedBatchNormAct2d,
        FusedBatchNormAct2d,
    ]
    assert list(native.state_dict()) == list(switched.state_dict())
    x = _channels_last(torch.randn(4, 3, 12, 10))
    out_native, out_switched = native(x), switched(x)
    assert _relative(out_native, out_switched) < 1e-5
    # A fixed random projection: a sum of squares of normalised maps is nearly constant.
    projection = torch.randn(out_native.shape, generator=torch.Generator().manual_seed(3))
    (out_native * projection).sum().backward()
    (out_switched * projection).sum().backward()
    for (name, a), b in zip(native.named_parameters(), switched.parameters(), strict=True):
        if name.endswith("bias") and name.split(".")[0] in ("0", "3", "5"):
            continue  # a convolution's bias before BatchNorm has a zero gradient: rounding noise only
        assert _relative(a.grad, b.grad) < 1e-4, name
    for (name, a), b in zip(native.state_dict().items(), switched.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6), name
    # Evaluation (running statistics) and NCHW maps take PyTorch's own kernels: identical results.
    switched.load_state_dict(native.state_dict())
    native.eval()
    switched.eval()
    with torch.no_grad():
        assert torch.equal(native(x), switched(x))
        plain = _small_network()  # NCHW weights and maps throughout
        plain_switched = copy.deepcopy(plain)
        use_fused_batch_norm(plain_switched)
        nchw = torch.randn(2, 3, 6, 5)
        assert torch.equal(plain(nchw), plain_switched(nchw))


def test_a_switched_timm_module_survives_pickling():
    """A spawned worker's payload is pickled: the fused subclass, made on first use and held by no
    module global, must be found by its name (pickle checks the name when it dumps)."""
    module = BatchNormAct2d(8, act_layer=nn.ReLU)
    module.__class__ = FusedBatchNormAct2d  # as use_fused_batch_norm switches it (which needs the kernel)
    restored = pickle.loads(pickle.dumps(module))
    assert type(restored) is FusedBatchNormAct2d
    assert (type(restored).__module__, type(restored).__qualname__) == ("pnfs_pipeline.nas.fused_batch_norm", "FusedBatchNormAct2d")


def test_the_pipelines_import_without_timm():
    """timm (with torchvision and torch._dynamo) takes seconds to import; every command and
    spawned worker would pay them for backbones that are not timm's."""
    code = (
        "import sys; import pnfs_pipeline.pipeline_registry, pnfs_pipeline.hooks, pnfs_pipeline.engine.trainer; "
        "import pnfs_pipeline.pipelines.search.nodes, pnfs_pipeline.pipelines.evaluate.nodes; "
        "from pnfs_pipeline.nas.supernet import PartSupernet; "
        "print(sorted(m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@needs_kernel
@pytest.mark.parametrize("name", ["sep_conv_3x3", "atr_conv_3x3", "reduce", "upsample"])
def test_folded_architecture_weight_through_the_fused_kernel(name):
    torch.manual_seed(1)
    if name == "reduce":
        op, shape = build_connection(0, 1, [16, 32]), (4, 16, 12, 10)
    elif name == "upsample":
        op, shape = build_connection(1, 0, [16, 32]), (4, 32, 6, 5)
    else:
        op, shape = build_op(name, 16), (4, 16, 12, 10)
    op = op.train().to(memory_format=torch.channels_last)
    switched = copy.deepcopy(op)
    assert use_fused_batch_norm(switched) > 0
    x0 = _channels_last(torch.randn(shape))
    results = []
    for module in (op, switched):
        x = x0.clone().requires_grad_()
        factor = torch.tensor(0.3, requires_grad=True)
        out = module(x, (12, 10), factor=factor) if name == "upsample" else scaled_forward(module, x, factor)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
        results.append((out.detach(), x.grad, factor.grad))
    (out_a, grad_a, factor_a), (out_b, grad_b, factor_b) = results
    assert _relative(out_a, out_b) < 1e-5
    assert _relative(grad_a, grad_b) < 1e-4
    assert float(abs(factor_a - factor_b) / abs(factor_a)) < 1e-4


@needs_kernel
def test_bad_inputs_are_refused_with_the_reason():
    x = torch.randn(2, 4, 3, 3)  # NCHW
    with pytest.raises(ValueError, match="does not serve this input"):
        fused_batch_norm_act(x, None, None, None, None, 0.1, 1e-5, "relu")
    x = _channels_last(x)
    with pytest.raises(ValueError, match="weight must be a contiguous float32 CPU vector of 4"):
        fused_batch_norm_act(x, torch.ones(4, dtype=torch.float64), None, None, None, 0.1, 1e-5)
    with pytest.raises(ValueError, match="activation must be one of"):
        fused_batch_norm_act(x, None, None, None, None, 0.1, 1e-5, "gelu")
    with pytest.raises(ValueError, match="come together"):
        fused_batch_norm_act(x, None, None, torch.zeros(4), None, 0.1, 1e-5)


def test_without_a_compiler_everything_stays_on_pytorch(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("PNFS_KERNEL_CACHE", str(tmp_path))
    model = _small_network()
    with caplog.at_level("WARNING"):
        assert use_fused_batch_norm(model) == 0
    assert "CPU training kernels unavailable" in caplog.text
    assert native_kernels.unavailable_reason() and "false" in native_kernels.unavailable_reason()
    assert all(type(m) in (nn.BatchNorm2d, BatchNormAct2d) for m in model if isinstance(m, nn.BatchNorm2d))
    assert not list(tmp_path.glob("*.so"))


def test_a_cc_that_is_no_command_falls_back_saying_so(monkeypatch):
    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    monkeypatch.setenv("CC", 'gcc "')  # unbalanced quote
    assert native_kernels.load_kernels() is None
    assert "is not a command" in native_kernels.unavailable_reason()


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    monkeypatch.setenv("PNFS_NATIVE_KERNELS", "0")
    assert native_kernels.load_kernels() is None
    assert "PNFS_NATIVE_KERNELS=0" in native_kernels.unavailable_reason()


@needs_kernel
def test_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    monkeypatch.setenv("PNFS_KERNEL_CACHE", str(tmp_path))
    assert native_kernels.load_kernels() is not None
    built = list(tmp_path.glob("pnfs_kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    assert native_kernels.load_kernels() is not None
    assert built[0].stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p != built[0]]  # no temporary files left
    assert built[0].stat().st_mode & 0o777 == 0o755  # a cache shared by users can load it


@needs_kernel
def test_a_compiler_command_with_arguments_builds(monkeypatch, tmp_path):
    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    monkeypatch.setenv("PNFS_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "env cc")  # as CC="ccache gcc" would be written
    assert native_kernels.load_kernels() is not None, native_kernels.unavailable_reason()


@needs_kernel
def test_a_build_that_times_out_falls_back_saying_so(monkeypatch, tmp_path):
    import subprocess

    monkeypatch.setattr(native_kernels, "_state", {"loaded": False, "library": None, "error": None})
    monkeypatch.setenv("PNFS_KERNEL_CACHE", str(tmp_path))
    real_run = subprocess.run

    def hanging_build(command, *args, **kwargs):
        if "--version" in command:
            return real_run(command, *args, **kwargs)
        raise subprocess.TimeoutExpired(command, 300)

    monkeypatch.setattr(native_kernels.subprocess, "run", hanging_build)
    assert native_kernels.load_kernels() is None
    assert "timed out" in native_kernels.unavailable_reason()
    assert not list(tmp_path.iterdir())  # no temporary file left
