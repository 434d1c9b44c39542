import itertools
import re

import numpy as np
import pytest
import torch
import yaml

from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.derived import DerivedNetwork, inherit_supernet_weights
from pnfs_pipeline.nas.fabric import fabric_layer_sizes
from pnfs_pipeline.nas.genotype import (
    GenotypeError,
    GridShape,
    derive_genotype,
    most_probable_path,
    source_weights,
    validate_genotype,
)
from pnfs_pipeline.nas.profile import count_macs, count_parameters
from pnfs_pipeline.nas.supernet import ArchitectureWeights, FabricConfig, HeadConfig, PartSupernet

PARTS = {"upper": (0, 1), "lower": (2, 3)}
OPERATORS = ("zero", "skip_connect", "sep_conv_3x3", "atr_conv_3x3")


def supernet(share_alpha=False, depth=5, cut=2, size_types=(4, 8, 16, 32)) -> PartSupernet:
    torch.manual_seed(0)
    model = PartSupernet(
        build_backbone("tiny", width=4),
        PARTS,
        4,
        FabricConfig(
            operators=OPERATORS, depth=depth, cut_layers_num=cut, factor=1, share_alpha=share_alpha, size_types=size_types
        ),
        HeadConfig(vector_in_pixel=True, vector_dim=2),
    )
    model.backbone_name, model.backbone_kwargs = "tiny", {"width": 4}
    return model


def brute_force_best_path_probability(grid: GridShape, betas) -> float:
    """Enumerate every path from a backbone map to the output cell."""
    best = 0.0
    layers = list(range(grid.cut_layers, grid.depth))
    scales_per_layer = [range(grid.layer_sizes[j]) for j in layers[:-1]]
    for scales in itertools.product(*scales_per_layer):
        cells = [*zip(layers[:-1], scales, strict=True), grid.output]
        probability = 1.0
        for index, (layer, scale) in enumerate(cells):
            weights = source_weights(betas[(layer, scale)], grid.sources(layer, scale))
            if index == 0:
                probability *= max(weights.values())
                continue
            previous_scale = cells[index - 1][1]
            probability *= weights.get(previous_scale, 0.0)
        best = max(best, probability)
    return best


@pytest.mark.parametrize(("depth", "cut", "seed"), [(4, 1, 0), (5, 2, 1), (6, 3, 2), (7, 1, 3), (8, 2, 4)])
def test_path_rule_equals_brute_force(depth, cut, seed):
    grid = GridShape(depth, 4, cut, input_count=fabric_layer_sizes(depth, 4)[cut - 1])
    rng = np.random.default_rng(seed)
    betas = {p: rng.dirichlet(np.ones(3)) for p in grid.positions()}
    path = most_probable_path(grid, betas)
    assert path[-1] == grid.output and [p[0] for p in path] == list(range(cut, depth))
    probability = max(source_weights(betas[path[0]], grid.sources(*path[0])).values())
    for earlier, later in zip(path[:-1], path[1:], strict=True):
        probability *= source_weights(betas[later], grid.sources(*later))[earlier[1]]
    assert probability == pytest.approx(brute_force_best_path_probability(grid, betas), rel=1e-12)


def one_hot_architecture(model: PartSupernet, seed: int = 0):
    """Exactly one-hot alphas (never Zero) and betas, as summary dict and as supernet weights."""
    rng = np.random.default_rng(seed)
    summary = model.architecture_summary("sync")
    alphas, betas = [], []
    for i, part in enumerate(model.part_names):
        cells = model.parts[i].fabric.num_cells
        alpha = np.zeros((cells, 1, len(OPERATORS)))
        alpha[np.arange(cells), 0, rng.integers(1, len(OPERATORS), cells)] = 1.0
        beta = np.zeros((cells, 3))
        beta[np.arange(cells), rng.integers(0, 3, cells)] = 1.0
        summary["parts"][part]["alpha"], summary["parts"][part]["beta"] = alpha.tolist(), beta.tolist()
        alphas.append(torch.tensor(alpha, dtype=torch.float32))
        betas.append(torch.tensor(beta, dtype=torch.float32))
    return summary, ArchitectureWeights(alphas, betas, [None] * len(alphas))


@pytest.mark.parametrize(
    "rule, size_types",
    [("top1", (4, 8, 16, 32)), ("path", (4, 8, 16, 32)), ("threshold", (4, 8, 16, 32)), ("path", (4, 8, 16)), ("path", (4, 8))],
)
def test_one_hot_derived_network_with_inherited_weights_equals_the_supernet(rule, size_types):
    """Also for fabrics of fewer scales than the backbone has maps (they read the finest)."""
    model = supernet(size_types=size_types).eval()
    summary, weights = one_hot_architecture(model)
    genotype = derive_genotype(summary, model.network_description(), rule=rule, threshold=0.5)
    derived = DerivedNetwork(genotype).eval()
    operators = list(summary["operators"])
    assert inherit_supernet_weights(derived, model.state_dict(), supernet_operators=operators) == len(derived.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(derived(x), model(x, weights), rtol=1e-5, atol=1e-6)
    # a supernet searched over another operator list would hand its ops to the wrong ones
    with pytest.raises(ValueError, match=r"searched over operators .* the supernet has .*derive it from this supernet"):
        inherit_supernet_weights(derived, model.state_dict(), supernet_operators=operators[::-1])


def test_each_parts_keypoint_index_moves_with_the_network_and_stays_out_of_checkpoints():
    """Built in every forward, the index was a blocking host-to-device copy per part on a GPU."""
    model = supernet()
    summary, _ = one_hot_architecture(model)
    derived = DerivedNetwork(derive_genotype(summary, model.network_description(), rule="path", threshold=0.5))
    for network in (model, derived):
        assert [part.keypoint_index.tolist() for part in network.parts] == [list(keys) for keys in PARTS.values()]
        assert not any("keypoint_index" in key for key in network.state_dict())
        assert network.to(torch.float64).parts[0].keypoint_index.dtype == torch.long


def test_a_fabric_without_cut_layers_derives_and_equals_its_supernet():
    """cut_layers_num 0: the fabric starts from the backbone's finest map alone."""
    model = supernet(cut=0).eval()
    summary, weights = one_hot_architecture(model)
    genotype = derive_genotype(summary, model.network_description(), rule="path")
    derived = DerivedNetwork(genotype).eval()
    assert inherit_supernet_weights(derived, model.state_dict()) == len(derived.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(derived(x), model(x, weights), rtol=1e-5, atol=1e-6)


def test_cells_reading_only_the_coarser_scale_keep_odd_map_sizes():
    # 72x56 input: stride-4 maps 18x14 -> 9x7 -> 5x4 -> 3x2; doubling 5x4 would give 10x8.
    model = supernet().eval()
    summary, weights = one_hot_architecture(model)
    for index, part in enumerate(model.part_names):
        betas = np.zeros_like(np.asarray(summary["parts"][part]["beta"]))
        betas[:, 2] = 1.0  # every cell reads the coarser (below) slot only
        summary["parts"][part]["beta"] = betas.tolist()
        weights.betas[index] = torch.tensor(betas, dtype=torch.float32)
    genotype = derive_genotype(summary, model.network_description(), rule="top1")
    upsample_only = [
        (part, cell)
        for part, info in genotype["parts"].items()
        for cell, spec in info["cells"].items()
        if set(spec["inputs"]) == {"below"}
    ]
    assert upsample_only, "the genotype should hold cells fed by the coarser scale alone"
    derived = DerivedNetwork(genotype).eval()
    inherit_supernet_weights(derived, model.state_dict())
    x = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        torch.testing.assert_close(derived(x), model(x, weights), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "sources",
    [{0: 0.6, 1: 0.4}, {1: 0.25, 0: 0.45, 2: 0.3}, {0: 1.0}, {1: 0.7, 2: 0.3}],
    ids=["same+coarser", "all-three", "same-only", "no-same-scale"],
)
@pytest.mark.parametrize("training", [False, True])
def test_derived_cell_mixes_its_inputs_as_the_plain_weighted_sum(sources, training):
    """The cell fuses its identity input's scale into the addition; the result must equal
    relu(sum_s 3 w_s connection_s(x_s)) computed term by term."""
    import copy

    from pnfs_pipeline.nas.derived import DerivedCell

    torch.manual_seed(0)
    channels = [4, 6, 8]
    # scale 1's cell reads scale 1 (identity), 0 (finer: reduction) and 2 (coarser: upsample)
    remapped = {1 if s == 0 else (0 if s == 1 else 2): w for s, w in sources.items()}
    cell = DerivedCell(1, remapped, channels, ["sep_conv_3x3"], 1, 1, 4)
    for module in cell.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    reference = copy.deepcopy(cell)
    cell.train(training), reference.train(training)
    previous = {0: torch.randn(2, 4, 10, 8), 1: torch.randn(2, 6, 5, 4), 2: torch.randn(2, 8, 3, 2)}
    out = cell(previous, (5, 4))
    terms = []
    assert sorted(reference.source_scales) == sorted(remapped)
    for s, beta in remapped.items():
        w = 3 * beta  # NUM_SLOTS x the genotype's weight: the supernet's scale, kept constant
        module = reference.connections[str(s)]
        if isinstance(module, torch.nn.Identity):
            terms.append(w * previous[s])
        elif s > 1:
            mapped = module.bn(module.conv(previous[s]))
            terms.append(w * torch.nn.functional.interpolate(mapped, size=(5, 4), mode="bilinear", align_corners=True))
        else:
            terms.append(w * module(previous[s]))
    node = torch.relu(torch.stack(terms).sum(0))
    edge = reference.edges[0]
    expected = reference.channel_keep(edge.ops[0](node) * edge.scale)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    if training:
        for mine, theirs in zip(cell.buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(mine, theirs)


def test_derived_network_is_smaller_than_the_supernet():
    model = supernet(share_alpha=True)
    summary = model.architecture_summary("sync")
    genotype = derive_genotype(summary, model.network_description(), rule="path")
    derived = DerivedNetwork(genotype)
    assert count_parameters(derived) < count_parameters(model)
    assert count_macs(derived, (48, 64)) < count_macs(model, (48, 64))
    assert derived(torch.randn(1, 3, 64, 48)).shape == (1, 4, 16, 12)


def test_original_prune_keeps_everything_a_softmax_does_not_zero():
    model = supernet(share_alpha=True)
    summary = model.architecture_summary("sync")
    genotype = derive_genotype(summary, model.network_description(), rule="original")
    cells = genotype["parts"]["upper"]["cells"]
    assert len(cells) == model.parts[0].fabric.num_cells  # nothing removed at uniform weights
    assert set(next(iter(cells.values()))["ops"][0]) == {"skip_connect", "sep_conv_3x3", "atr_conv_3x3"}
    derived = DerivedNetwork(genotype).eval()
    inherit_supernet_weights(derived, model.state_dict())
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():  # uniform weights, all kept: the same function as the supernet
        torch.testing.assert_close(derived(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_original_prune_keeps_tiny_weights_as_positive_numbers():
    # a long search: one slot and one op far ahead, the rest at softmax weights around 1e-7
    model = supernet(share_alpha=True)
    with torch.no_grad():
        model.arch_betas[0][:, 0] = 16.0
        model.arch_alphas[0][..., 1] = 16.0
    genotype = derive_genotype(model.architecture_summary("sync"), model.network_description(), rule="original")
    cell = next(iter(genotype["parts"]["upper"]["cells"].values()))
    small = [w for w in cell["inputs"].values() if w < 1e-3] + [w for w in cell["ops"][0].values() if w < 1e-3]
    assert small and all(0 < w < 1e-6 for w in small)


def test_genotype_yaml_round_trips(tmp_path):
    model = supernet()
    genotype = derive_genotype(model.architecture_summary("darts1"), model.network_description(), rule="top1")
    path = tmp_path / "genotype.yml"
    path.write_text(yaml.safe_dump(genotype, sort_keys=False))
    again = validate_genotype(yaml.safe_load(path.read_text()))
    assert again == genotype
    torch.manual_seed(1)
    first = DerivedNetwork(genotype)
    torch.manual_seed(1)
    second = DerivedNetwork(again)
    assert count_parameters(first) == count_parameters(second)


def _genotype():
    model = supernet()
    return derive_genotype(model.architecture_summary("sync"), model.network_description(), rule="top1")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda g: g.update(format="darts"), "format"),
        (lambda g: g["network"].pop("depth"), "network.depth"),
        (lambda g: g["parts"]["upper"].update(keypoints=[0, 9]), "parts.upper.keypoints"),
        (lambda g: g["parts"]["upper"]["cells"].pop("cell_4_0"), "must contain the output cell cell_4_0"),
        (lambda g: next(iter(g["parts"]["upper"]["cells"].values())).update(ops=["conv_9x9"]), "unknown operator 'conv_9x9'"),
        (lambda g: next(iter(g["parts"]["upper"]["cells"].values())).update(inputs={"sideways": 1.0}), "unknown slot 'sideways'"),
        (lambda g: g["parts"]["upper"]["cells"].update(cell_9_9={"inputs": {"parallel": 1.0}, "ops": ["skip_connect"]}), "cells.cell_9_9': no such cell"),
        (lambda g: g["parts"].pop("lower"), "keypoint(s) [2, 3] belong to no part"),
    ],
)
def test_malformed_genotypes_are_rejected_naming_the_field(change, field):
    genotype = _genotype()
    change(genotype)
    with pytest.raises(GenotypeError, match=re.escape(field)):
        validate_genotype(genotype)


def test_a_cell_reading_a_removed_cell_is_rejected():
    genotype = _genotype()
    cells = genotype["parts"]["upper"]["cells"]
    output = cells.pop("cell_4_0")
    for name in [n for n in cells if n.startswith("cell_3_")]:
        cells.pop(name)
    cells["cell_4_0"] = output
    with pytest.raises(GenotypeError, match="which is not a kept cell listed before it"):
        validate_genotype(genotype)


def test_a_cell_no_path_to_the_output_reads_is_rejected():
    genotype = _genotype()
    cells = genotype["parts"]["upper"]["cells"]
    grid = GridShape(5, 4, 2, 4)
    spare = next(f"cell_2_{s}" for s in range(grid.layer_sizes[2]) if f"cell_2_{s}" not in cells)
    output = cells.pop("cell_4_0")
    cells[spare] = {"inputs": {"parallel": 1.0}, "ops": ["skip_connect"]}  # reads the backbone, read by none
    cells["cell_4_0"] = output
    with pytest.raises(GenotypeError, match=re.escape(f"cells.{spare}': no kept cell on a path to the output cell cell_4_0")):
        validate_genotype(genotype)


def test_a_hand_edited_op_outside_the_search_space_starts_fresh(caplog):
    model = supernet().eval()
    genotype = _genotype()
    name, cell = next(iter(genotype["parts"]["upper"]["cells"].items()))
    cell["ops"] = ["max_pool_3x3"]
    derived = DerivedNetwork(genotype).eval()
    with caplog.at_level("WARNING"):
        copied = inherit_supernet_weights(derived, model.state_dict())
    assert 0 < copied < len(derived.state_dict())
    assert f"upper {name} edge 0: max_pool_3x3" in caplog.text
    assert derived(torch.randn(1, 3, 64, 48)).shape == (1, 4, 16, 12)


def test_a_searched_fabric_backbone_keeps_its_architecture_in_the_genotype(tmp_path):
    torch.manual_seed(0)
    model = PartSupernet(
        build_backbone("fabric", factor=1),
        PARTS,
        4,
        FabricConfig(operators=OPERATORS, depth=5, cut_layers_num=2, factor=1),
        HeadConfig(vector_in_pixel=True, vector_dim=2),
    )
    model.backbone_name, model.backbone_kwargs = "fabric", {"factor": 1}
    with torch.no_grad():
        model.backbone.alphas.normal_()
        model.backbone.betas.normal_()
    genotype = derive_genotype(model.architecture_summary("sync"), model.network_description(), rule="top1")
    path = tmp_path / "genotype.yml"
    path.write_text(yaml.safe_dump(genotype, sort_keys=False))
    derived = DerivedNetwork(validate_genotype(yaml.safe_load(path.read_text())))  # from the genotype alone
    for name in ("alphas", "betas"):
        torch.testing.assert_close(getattr(derived.backbone, name), getattr(model.backbone, name))
        assert not getattr(derived.backbone, name).requires_grad  # fixed while retraining
