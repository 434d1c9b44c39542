"""Connections reading a backbone map through its 1x1 adapter with composed weights.

Everything runs in float64 so that the composed and the written-out computations agree to
rounding: any difference larger than ~1e-12 is a wrong formula, not arithmetic.
"""

import pytest
import torch
from torch import nn

import pnfs_pipeline.nas.ops as ops_module
from pnfs_pipeline.keypoints import load_keypoint_spec
from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.derived import DerivedNetwork
from pnfs_pipeline.nas.genotype import derive_genotype
from pnfs_pipeline.nas.ops import (
    AdaptedInput,
    ReduceConnect,
    UpsampleConnect,
    composes_with_adapter,
    connect_through_adapter,
    scaled_forward,
    set_adapter_composition,
)
from pnfs_pipeline.nas.supernet import FabricConfig, HeadConfig, PartSupernet

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _randomised(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module.double().train()


def _connection(kind: str) -> tuple[nn.Module, nn.Conv2d, torch.Tensor]:
    adapter = _randomised(nn.Conv2d(5, 12, 1), 1)
    if kind == "reduce":
        connection, size = _randomised(ReduceConnect(12, 16), 2), (15, 11)
    else:
        connection, size = _randomised(UpsampleConnect(12, 8), 3), (8, 6)
    raw = torch.randn(4, 5, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return connection, adapter, raw


def _run(connection, adapter, raw, factor, composed: bool, size=None):
    """The connection's output and every gradient of a fixed loss, plus the BN running stats."""
    modules = (connection, adapter)
    for module in modules:
        module.zero_grad(set_to_none=True)
    raw = raw.clone().requires_grad_()
    factor_tensor = None if factor is None else torch.tensor(factor, dtype=torch.float64, requires_grad=True)
    source = AdaptedInput(raw, adapter)
    if composed:
        out = connect_through_adapter(connection, source, size, factor_tensor)
    elif isinstance(connection, UpsampleConnect):
        out = connection(source.tensor, size, factor=1.0 if factor_tensor is None else factor_tensor)
    elif factor_tensor is None:
        out = connection(source.tensor)
    else:
        out = scaled_forward(connection, source.tensor, factor_tensor)
    weights = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for m in modules for name, p in m.named_parameters() if p.grad is not None}
    grads["raw"] = raw.grad.clone()
    if factor_tensor is not None:
        grads["factor"] = factor_tensor.grad.clone()
    bn = connection.bn if isinstance(connection, UpsampleConnect) else connection[1]
    return out.detach(), grads, (bn.running_mean.clone(), bn.running_var.clone())


@pytest.mark.parametrize("kind", ["reduce", "upsample"])
@pytest.mark.parametrize("factor", [None, 0.7])
def test_composed_connection_equals_the_adapter_then_the_connection(kind, factor):
    connection, adapter, raw = _connection(kind)
    assert composes_with_adapter(connection, AdaptedInput(raw, adapter))
    size = (16, 11) if kind == "upsample" else None
    bn = connection.bn if kind == "upsample" else connection[1]
    start = {k: v.clone() for k, v in bn.state_dict().items()}
    expected, expected_grads, expected_stats = _run(connection, adapter, raw, factor, composed=False, size=size)
    bn.load_state_dict(start)
    got, grads, stats = _run(connection, adapter, raw, factor, composed=True, size=size)
    torch.testing.assert_close(got, expected, **TIGHT)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        # A bias right before BatchNorm has a gradient of zero up to rounding: compare absolutely.
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-10, atol=1e-10, msg=name)
    torch.testing.assert_close(stats, expected_stats, **TIGHT)


def test_zero_padding_sees_the_adapter_bias_only_inside_the_map():
    """The 3x3 stride-2 convolution's border outputs read padding, where the adapted map is zero
    and not the adapter's bias: with a zero backbone map the adapted map is the bias inside, zero
    outside, and the composed result must show that border pattern."""
    connection, adapter, raw = _connection("reduce")
    raw = torch.zeros_like(raw)
    connection.eval()
    with torch.enable_grad():
        composed = connect_through_adapter(connection, AdaptedInput(raw, adapter))
    plain = connection(adapter(raw))
    torch.testing.assert_close(composed, plain, **TIGHT)
    assert not torch.allclose(plain[..., 0, 0], plain[..., 1, 1])  # the border differs from the inside


def test_only_narrowing_plain_convolutions_compose():
    def composes(connection, adapter, shape=(8, 5, 32, 24)):
        return composes_with_adapter(connection, AdaptedInput(torch.empty(shape), adapter))

    adapter = nn.Conv2d(5, 12, 1)
    assert composes(ReduceConnect(12, 16), adapter)
    assert composes(UpsampleConnect(12, 8), adapter)
    assert not composes(nn.Identity(), adapter)
    # No fewer multiply-adds: 11 inputs + the ones channel against 12 adapted channels.
    assert not composes(ReduceConnect(12, 16), nn.Conv2d(11, 12, 1, bias=True), (8, 11, 32, 24))
    assert composes(UpsampleConnect(12, 8), nn.Conv2d(11, 12, 1), (8, 11, 32, 24))
    assert not composes(UpsampleConnect(12, 8), nn.Conv2d(12, 12, 1), (8, 12, 32, 24))
    assert not composes(ReduceConnect(12, 16), nn.Conv2d(5, 12, 3, padding=1))
    dilated = ReduceConnect(12, 16)
    dilated[0] = nn.Conv2d(12, 16, 3, 2, 2, dilation=2)
    assert not composes(dilated, adapter)
    with pytest.raises(ValueError, match="does not compose"):
        connect_through_adapter(dilated, AdaptedInput(torch.zeros(8, 5, 32, 24), adapter))


def test_composition_is_skipped_where_the_weights_product_costs_more_than_it_saves():
    """The seed's MobileNetV2 setting at 256x192, batch 8: the stride-8 and stride-16 maps
    compose; the stride-32 one (320 -> 512 -> 256 channels on 8x6 pixels) does not, and neither
    does anything at batch 1 on a 64x48 input."""

    def composes(connection, in_channels, shape):
        adapter = nn.Conv2d(in_channels, connection_in(connection), 1)
        return composes_with_adapter(connection, AdaptedInput(torch.empty(shape), adapter))

    def connection_in(connection):
        return connection.conv.in_channels if isinstance(connection, UpsampleConnect) else connection[0].in_channels

    assert composes(ReduceConnect(64, 128), 24, (8, 24, 64, 48))
    assert composes(ReduceConnect(128, 256), 32, (8, 32, 32, 24))
    assert composes(UpsampleConnect(128, 64), 32, (8, 32, 32, 24))
    assert composes(UpsampleConnect(256, 128), 96, (8, 96, 16, 12))
    assert not composes(UpsampleConnect(512, 256), 320, (8, 320, 8, 6))
    assert not composes(ReduceConnect(64, 128), 24, (1, 24, 16, 12))


@pytest.mark.parametrize("kind", ["reduce", "upsample"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_composed_path_keeps_the_memory_format(kind, channels_last):
    """Like the plain path: a channels_last weight would make oneDNN answer an NCHW map in
    channels_last, and every later op would pay for the mixed layouts."""
    connection, adapter, raw = _connection(kind)
    if channels_last:
        raw = raw.contiguous(memory_format=torch.channels_last)
    size = (16, 11) if kind == "upsample" else None
    composed = connect_through_adapter(connection, AdaptedInput(raw, adapter), size)
    plain = connection(adapter(raw), size) if kind == "upsample" else connection(adapter(raw))
    for out in (composed, plain):
        assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert out.is_contiguous() != channels_last


@pytest.mark.parametrize("kind", ["reduce", "upsample"])
def test_composed_gradients_keep_the_parameters_strides(kind):
    """DistributedDataParallel copies its buckets from gradients laid out as their parameters
    (strictly, size-1 dimensions too: a 1x1 weight's channels_last strides included)."""
    connection, adapter, raw = _connection(kind)
    connection = connection.to(memory_format=torch.channels_last)
    adapter = adapter.to(memory_format=torch.channels_last)
    raw = raw.contiguous(memory_format=torch.channels_last)
    size = (16, 11) if kind == "upsample" else None
    connect_through_adapter(connection, AdaptedInput(raw, adapter), size).sum().backward()
    for module in (connection, adapter):
        for name, parameter in module.named_parameters():
            assert parameter.grad is not None, name
            assert parameter.grad.stride() == parameter.stride(), name


@pytest.mark.parametrize("kind", ["reduce", "upsample"])
def test_bf16_autocast_composed_path_stays_within_bf16_rounding(kind):
    """Under autocast the product of the weights is taken in float32 and the convolution in
    bfloat16: the composed and the plain path then differ by bfloat16 rounding only."""
    connection, adapter, raw = _connection(kind)
    connection, adapter = connection.float(), adapter.float()
    raw = raw.float().contiguous(memory_format=torch.channels_last)
    size = (16, 11) if kind == "upsample" else None
    with torch.autocast("cpu", torch.bfloat16):
        composed = connect_through_adapter(connection, AdaptedInput(raw, adapter), size).float()
        plain = (connection(adapter(raw), size) if kind == "upsample" else connection(adapter(raw))).float()
    reference = (connection(adapter(raw), size) if kind == "upsample" else connection(adapter(raw))).detach()
    scale = reference.abs().max()
    assert (composed - reference).abs().max() <= 0.05 * scale
    assert (composed - reference).abs().max() <= 2 * (plain - reference).abs().max() + 1e-3 * scale


def _small_supernet() -> PartSupernet:
    spec = load_keypoint_spec("coco")
    torch.manual_seed(0)
    return PartSupernet(
        build_backbone("mobilenet_v2"),
        spec.body_parts(3),
        spec.num_keypoints,
        FabricConfig(operators=("skip_connect", "sep_conv_3x3", "atr_conv_3x3"), depth=6, cut_layers_num=3, factor=16),
        HeadConfig(vector_in_pixel=True),
    ).double()


def _record_composed_calls(monkeypatch) -> list:
    """The connections composed from now on (every one goes through ``connect_through_adapter``)."""
    calls = []
    original = ops_module.connect_through_adapter

    def recording(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(ops_module, "connect_through_adapter", recording)
    return calls


def test_supernet_training_pass_is_unchanged_by_composition(monkeypatch):
    """Same heatmaps and the same gradient for every parameter, composed or not."""
    monkeypatch.setattr(ops_module, "COMPOSITION_MIN_GAIN", 0.0)  # small maps: compose them all
    model = _small_supernet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def training_pass():
        return _training_pass(model, state, x)

    composed_calls = _record_composed_calls(monkeypatch)
    out, grads = training_pass()
    # Per part, layer 3 reads four adapted maps: two 3x3 reductions and three upsamplings compose.
    assert len(composed_calls) == 3 * 5
    assert set_adapter_composition(model, False) == 3 * 6  # every cell of the three parts
    expected, expected_grads = training_pass()
    assert len(composed_calls) == 3 * 5
    torch.testing.assert_close(out, expected, **TIGHT)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def test_without_gradients_the_connections_read_the_adapted_maps(monkeypatch):
    """Inference and size profiling run the architecture as written (MACs as the paper counts)."""
    monkeypatch.setattr(ops_module, "COMPOSITION_MIN_GAIN", 0.0)  # every connection worth composing
    model = _small_supernet().eval()
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    composed_calls = _record_composed_calls(monkeypatch)
    model(x)
    assert composed_calls  # with gradients they compose ...
    composed_calls.clear()
    with torch.no_grad():
        model(x)
    assert composed_calls == []  # ... without, none does


def _training_pass(model: nn.Module, state: dict, x: torch.Tensor):
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_derived_network_training_pass_is_unchanged_by_composition(monkeypatch):
    """A derived network whose first cells read narrow backbone maps (tiny width 2 under a fabric
    of 4, 8, 16, 32 channels) trains the same composed or not."""
    monkeypatch.setattr(ops_module, "COMPOSITION_MIN_GAIN", 0.0)
    torch.manual_seed(0)
    supernet = PartSupernet(
        build_backbone("tiny", width=2),
        {"upper": (0, 1), "lower": (2, 3)},
        4,
        FabricConfig(operators=("zero", "skip_connect", "sep_conv_3x3", "atr_conv_3x3"), depth=5, cut_layers_num=2, factor=1),
        HeadConfig(vector_in_pixel=True, vector_dim=2),
    )
    supernet.backbone_name, supernet.backbone_kwargs = "tiny", {"width": 2}
    genotype = derive_genotype(supernet.architecture_summary("sync"), supernet.network_description(), rule="original")
    model = _randomised(DerivedNetwork(genotype), 6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    composed_calls = _record_composed_calls(monkeypatch)
    out, grads = _training_pass(model, state, x)
    assert {type(c) for c in composed_calls} == {ReduceConnect, UpsampleConnect}
    calls = len(composed_calls)
    with torch.no_grad():
        model(x)
    assert len(composed_calls) == calls  # inference reads the adapted maps
    assert set_adapter_composition(model, False) == len(list(model.parts[0].cells)) * 2
    expected, expected_grads = _training_pass(model, state, x)
    assert len(composed_calls) == calls
    torch.testing.assert_close(out, expected, **TIGHT)
    assert grads.keys() == expected_grads.keys()
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-9, atol=1e-12, msg=name)
