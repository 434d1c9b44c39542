import pytest
import torch

from pnfs_pipeline.keypoints import load_keypoint_spec
from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.cell import Cell, MixedOp
from pnfs_pipeline.nas.fabric import CellFabric, fabric_layer_sizes, slot_sources
from pnfs_pipeline.nas.ops import OPS, UpsampleConnect, build_op, canonical_op_name
from pnfs_pipeline.nas.profile import count_macs, count_parameters
from pnfs_pipeline.nas.supernet import FabricConfig, HeadConfig, PartSupernet

COCO = load_keypoint_spec("coco")


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_keeps_the_shape(name):
    op = build_op(name, 8)
    assert op(torch.randn(2, 8, 12, 10)).shape == (2, 8, 12, 10)


def test_original_op_names_are_aliases_and_unknown_names_list_the_valid_ones():
    assert canonical_op_name("Sep_Conv_3x3") == "sep_conv_3x3"
    assert canonical_op_name("Zero") == "zero"
    assert canonical_op_name("Bottle_Conv_3x3") == "bottleneck_block"
    with pytest.raises(ValueError, match=r"unknown operator 'conv_7x7'; valid operators: \['atr_conv_3x3'"):
        canonical_op_name("conv_7x7")


def test_fabric_has_the_original_trapezoid_shape():
    assert fabric_layer_sizes(6, 4) == [2, 3, 4, 3, 2, 1]
    assert fabric_layer_sizes(12, 4) == [2, 3, 4, 4, 4, 4, 4, 4, 4, 3, 2, 1]
    # Boundary rules: the top cell repeats its parallel input; a new bottom cell reads the last scale.
    assert slot_sources(0, 3) == (0, 0, 1)
    assert slot_sources(3, 3) == (2, 2, 2)
    assert slot_sources(2, 3) == (2, 1, 2)


@pytest.mark.parametrize(("depth", "cut"), [(6, 3), (7, 4), (6, 1), (5, 0)])
def test_every_cell_position_outputs_its_scale(depth, cut):
    channels = [4, 8, 16, 32]
    ops = ("zero", "skip_connect", "sep_conv_3x3")
    sizes = fabric_layer_sizes(depth, 4)
    count = sizes[cut - 1] if cut > 0 else 1
    fabric = CellFabric(channels, depth, cut, ops, input_count=count)
    inputs = [torch.randn(2, channels[s], 32 // 2**s, 24 // 2**s) for s in range(count)]
    alphas = torch.softmax(torch.randn(fabric.num_cells, fabric.num_edges, 3), -1)
    betas = torch.softmax(torch.randn(fabric.num_cells, 3), -1)
    previous, current, layer = inputs, [], cut
    for index, position in enumerate(fabric.positions):
        if position.layer != layer:
            previous, current, layer = current, [], position.layer
        out = fabric.cells[position.name](previous, betas[index], alphas[index])
        s = position.scale
        assert out.shape == (2, channels[s], 32 // 2**s, 24 // 2**s), position
        current.append(out)
    assert fabric(inputs, alphas, betas).shape == (2, 4, 32, 24)
    layers = fabric(inputs, alphas, betas, last_layer=True)
    assert len(layers) == 1


def test_repeated_sources_are_transformed_once():
    cell = Cell(scale=3, slot_sources=(2, 2, 2), channels=[4, 8, 16, 32], op_names=("skip_connect",))
    assert len(cell.connections) == 1
    top = Cell(scale=0, slot_sources=(0, 0, 1), channels=[4, 8, 16, 32], op_names=("skip_connect",))
    assert len(top.connections) == 2


def test_skipping_zero_ops_matches_computing_them():
    torch.manual_seed(0)
    mixed = MixedOp(6, ("zero", "skip_connect", "sep_conv_3x3", "max_pool_3x3")).eval()
    x = torch.randn(2, 6, 8, 8)
    weights = torch.softmax(torch.randn(4), -1)
    computed_all = sum(w * op(x) for w, op in zip(weights, mixed.ops, strict=True)) * 4
    torch.testing.assert_close(mixed(x, weights), computed_all)
    # Only the active op runs, scaled like the mixture.
    torch.testing.assert_close(mixed(x, weights, active=1), x * weights[1] * 4)
    assert torch.count_nonzero(mixed(x, weights, active=0)) == 0


@pytest.mark.parametrize("mode", [(True, "2D"), (True, "3D"), (False, "2D")])
@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_supernet_heads_give_one_heatmap_per_keypoint(mode, combine):
    vector, conv_mode = mode
    model = PartSupernet(
        build_backbone("tiny", width=4),
        COCO.body_parts(8),
        17,
        FabricConfig(operators=("zero", "skip_connect", "atr_conv_3x3"), factor=2),
        HeadConfig(vector_in_pixel=vector, vector_dim=4, convolution_mode=conv_mode, combine=combine),
    )
    out = model(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 17, 16, 12)
    if vector and combine == "mean":
        assert out.min() >= 0 and out.max() < 1  # squashed lengths, averaged over sharing parts


def test_shared_keypoints_are_summed_over_parts():
    model = PartSupernet(
        build_backbone("tiny", width=4), COCO.body_parts(8), 17, FabricConfig(factor=2), HeadConfig(combine="sum")
    ).eval()
    x = torch.randn(1, 3, 64, 48)
    features = model.backbone(x)
    arch = model.softmax_weights()
    per_part = [b(features, arch.alphas[i], arch.betas[i]) for i, b in enumerate(model.parts)]
    elbow = COCO.index("left_elbow")  # in left_upper_arm and left_lower_arm
    expected = sum(
        out[:, branch.keypoints.index(elbow)] for branch, out in zip(model.parts, per_part, strict=True)
        if elbow in branch.keypoints
    )
    torch.testing.assert_close(model(x)[:, elbow], expected)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50", "hrnet_w32", "fabric", "tiny"])
def test_backbones_give_four_scales(backbone):
    net = build_backbone(backbone)
    # building (which probes the widths) leaves BatchNorm untouched: no statistics, training mode
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert net.training and all(int(m.num_batches_tracked) == 0 for m in norms)
    features = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    assert [f.shape[1] for f in features] == net.channels


def test_seed_mobilenet_cnf3_matches_the_original_size():
    """The seed's mobilenet_v2_CNFx3_coco_384x288 settings: 5.68 M parameters, 4.33 G MACs."""
    model = PartSupernet(
        build_backbone("mobilenet_v2"),
        COCO.body_parts(3),
        17,
        FabricConfig(operators=("skip_connect", "Sep_Conv_3x3", "Atr_Conv_3x3"), depth=6, cut_layers_num=3, factor=16),
        HeadConfig(vector_in_pixel=True, vector_dim=8),
    )
    parameters, macs = count_parameters(model), count_macs(model, (288, 384))
    assert abs(parameters / 5.68e6 - 1) < 0.03, parameters
    assert abs(macs / 4.33e9 - 1) < 0.05, macs


def test_pretrained_weights_load_from_a_local_file_only(tmp_path):
    source = build_backbone("tiny", width=4)
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    loaded = build_backbone("tiny", width=4, pretrained_path=str(path))
    torch.testing.assert_close(loaded.stem[0][0].weight, source.stem[0][0].weight)
    with pytest.raises(FileNotFoundError, match="no downloads"):
        build_backbone("tiny", pretrained_path=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="pretrained backbone weights .*junk.pt: not a readable torch file"):
        build_backbone("tiny", pretrained_path=str(tmp_path / "junk.pt"))
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="wrong.pt: 0 of the backbone's .* tensors match by name"):
        build_backbone("tiny", pretrained_path=str(tmp_path / "wrong.pt"))
    # a file that matches only in part is refused, not loaded in part
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("stem")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="first missing: stem"):
        build_backbone("tiny", width=4, pretrained_path=str(tmp_path / "partial.pt"))


def test_torchvision_mobilenet_v2_weights_load_by_order(tmp_path):
    """The ImageNet MobileNetV2 of torchvision (and of the original code) names its tensors
    features.N...; timm's are conv_stem, blocks... The same network: its maps must come out."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mix-up would show
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("mobilenet_v2", pretrained_path=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = backbone(x)
        maps, h = [], x
        for index, layer in enumerate(reference.features[:18]):
            h = layer(h)
            if index in (3, 6, 13, 17):  # the last block at strides 4, 8, 16, 32
                maps.append(h)
    for got, want in zip(ours, maps, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("slot_sources", "input_nodes", "hidden_states"),
    [((1, 0, 2), 1, 1), ((1, 0, 2), 2, 2), ((1, 1, 2), 1, 1), ((0, 0, 0), 2, 1), ((1, 0, 1), 1, 2)],
    ids=["all-three", "all-three-two-inputs", "top", "reduced-parallel-two-inputs", "bottom"],
)
def test_supernet_cell_equals_its_term_by_term_weighted_sum(slot_sources, input_nodes, hidden_states):
    """Cells fold weights into BatchNorms and sum without multiplying; outputs, gradients of inputs,
    alphas, betas and weights, and BatchNorm statistics must equal the plain formula's."""
    import copy

    torch.manual_seed(0)
    ops = ("zero", "skip_connect", "sep_conv_3x3", "atr_conv_3x3", "avg_pool_3x3", "conv_3x3", "basic_block")
    cell = Cell(1, slot_sources, [4, 6, 8], ops, hidden_states, input_nodes).double().train()
    for module in cell.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and module.affine:
            torch.nn.init.uniform_(module.weight, 0.5, 2)
            torch.nn.init.uniform_(module.bias, -1, 1)
    reference = copy.deepcopy(cell)
    previous = [torch.randn(2, 4, 10, 8), torch.randn(2, 6, 5, 4), torch.randn(2, 8, 3, 2)]
    beta_logits, alpha_logits = torch.randn(3), torch.randn(len(cell.edges), len(ops))
    grad = torch.randn(2, 6, 5, 4, dtype=torch.float64)

    def leaves():
        inputs = [p.double().requires_grad_() for p in previous]
        return inputs, beta_logits.double().requires_grad_(), alpha_logits.double().requires_grad_()

    inputs, beta, alpha = leaves()
    cell(inputs, torch.softmax(beta, -1), torch.softmax(alpha, -1)).backward(grad)

    ref_inputs, ref_beta, ref_alpha = leaves()
    betas, alphas = torch.softmax(ref_beta, -1), torch.softmax(ref_alpha, -1)
    transformed = {}
    for source, connection in zip(reference.sources, reference.connections, strict=True):
        if isinstance(connection, UpsampleConnect):
            mapped = connection.bn(connection.conv(ref_inputs[source]))
            transformed[source] = torch.nn.functional.interpolate(mapped, size=(5, 4), mode="bilinear", align_corners=True)
        else:
            transformed[source] = connection(ref_inputs[source])
    node = torch.relu(3 * sum(betas[slot] * transformed[s] for slot, s in enumerate(reference.slot_sources)))
    states = [node] + ([transformed[reference.slot_sources[0]]] if input_nodes == 2 else [])
    edge = 0
    for _ in range(hidden_states):
        hidden = 0
        for state in list(states):
            mixed = reference.edges[edge]
            hidden = hidden + len(ops) * sum(w * op(state) for w, op in zip(alphas[edge], mixed.ops, strict=True))
            edge += 1
        states.append(hidden)
    expected = reference.channel_keep(torch.cat(states[-hidden_states:], dim=1))
    expected.backward(grad)

    pairs = [(beta.grad, ref_beta.grad), (alpha.grad, ref_alpha.grad)]
    pairs += [(a.grad, b.grad) for a, b in zip(inputs, ref_inputs, strict=True) if b.grad is not None]
    pairs += [(a.grad, b.grad) for a, b in zip(cell.parameters(), reference.parameters(), strict=True)]
    pairs += list(zip(cell.buffers(), reference.buffers(), strict=True))
    for mine, theirs in pairs:
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-10)


def test_negative_architecture_weights_are_refused():
    model = PartSupernet(
        build_backbone("tiny", width=4), COCO.body_parts(3), 17, FabricConfig(factor=2), HeadConfig()
    )
    weights = model.softmax_weights()
    weights.alphas[0] = weights.alphas[0] - 0.5
    with pytest.raises(ValueError, match="non-negative"):
        model(torch.randn(1, 3, 64, 48), weights)
