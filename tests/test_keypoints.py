import numpy as np
import pytest
import yaml

from pnfs_pipeline.keypoints import KeypointSpecError, keypoint_spec_from_dict, load_keypoint_spec


def test_coco_spec_matches_the_coco_task():
    spec = load_keypoint_spec("coco")
    assert spec.num_keypoints == 17
    assert [list(p) for p in spec.flip_pairs] == [
        [1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]
    ]
    assert spec.sigmas[0] == pytest.approx(0.026) and spec.sigmas[11] == pytest.approx(0.107)
    assert sorted(spec.parts) == [1, 3, 5, 8]
    assert spec.body_parts(3)["upper_limb"] == (5, 6, 7, 8, 9, 10)
    assert spec.body_parts(5)["hips"] == (11, 12)


def test_mpii_spec_matches_the_standard_order():
    spec = load_keypoint_spec("mpii")
    assert spec.num_keypoints == 16
    assert sorted(tuple(sorted(p)) for p in spec.flip_pairs) == [
        (0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)
    ]
    # The original's 5-part hips group is pelvis + both hips, by name.
    assert set(spec.body_parts(5)["hips"]) == {6, 2, 3}
    assert spec.pckh_groups["Head"] == (9,)


@pytest.mark.parametrize("name", ["coco", "mpii"])
def test_every_grouping_covers_every_keypoint(name):
    spec = load_keypoint_spec(name)
    for num_parts, groups in spec.parts.items():
        assert len(groups) == num_parts
        assert {i for idx in groups.values() for i in idx} == set(range(spec.num_keypoints))


def test_flip_permutation_is_an_involution():
    perm = load_keypoint_spec("coco").flip_permutation()
    assert perm[1] == 2 and perm[0] == 0
    np.testing.assert_array_equal(perm[perm], np.arange(17))


def _hand_spec() -> dict:
    return {
        "name": "hand",
        "keypoints": ["wrist", "thumb", "index", "pinky"],
        "flip_pairs": [],
        "sigmas": [0.03, 0.02, 0.02, 0.02],
        "skeleton": [["wrist", "thumb"], ["wrist", "index"], ["wrist", "pinky"]],
        "parts": {1: {"hand": ["wrist", "thumb", "index", "pinky"]},
                  2: {"palm": ["wrist"], "fingers": ["thumb", "index", "pinky"]}},
    }


def test_a_users_own_spec_loads_from_yaml(tmp_path):
    path = tmp_path / "hand.yml"
    path.write_text(yaml.safe_dump(_hand_spec()))
    spec = load_keypoint_spec(path)
    assert spec.num_keypoints == 4 and spec.body_parts(2)["fingers"] == (1, 2, 3)
    assert spec.joint_weights == (1.0,) * 4


@pytest.mark.parametrize("name", ["coco", "mpii", "hand"])
def test_to_dict_round_trips_every_field(name, tmp_path):
    """How sample indexes carry the spec along (flip pairs, PCKh groups and parts included)."""
    if name == "hand":
        (tmp_path / "hand.yml").write_text(yaml.safe_dump(_hand_spec()))
        name = tmp_path / "hand.yml"
    spec = load_keypoint_spec(name)
    again = keypoint_spec_from_dict(spec.to_dict(), source=spec.source)
    assert again == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["parts"][2].update(fingers=["thumb", "index"]), "['pinky'] belong to no part"),
        (lambda d: d["parts"][1].update(hand=["wrist", "ring"]), "unknown keypoint name(s) ['ring']"),
        (lambda d: d.update(sigmas=[0.1, 0.1]), "has 2 values but there are 4 keypoints"),
        (lambda d: d.update(flip_pairs=[["thumb", "nail"]]), "unknown keypoint name(s) ['nail']"),
        (lambda d: d.update(sigmas=[0.1, float("nan"), 0.1, 0.1]), "positive finite"),
        (lambda d: d.update(colour="red"), "unknown field(s) ['colour']"),
        (lambda d: d.pop("skeleton"), "missing field(s) ['skeleton']"),
        (lambda d: d.update(keypoints=["a", "a", "b", "c"]), "duplicate name(s) ['a']"),
    ],
)
def test_bad_specs_fail_naming_the_problem(change, message):
    data = _hand_spec()
    change(data)
    with pytest.raises(KeypointSpecError) as error:
        keypoint_spec_from_dict(data, source="hand.yml")
    assert message in str(error.value) and "hand.yml" in str(error.value)


def test_unknown_shipped_spec_lists_the_available_ones():
    with pytest.raises(KeypointSpecError, match=r"\['coco', 'mpii'\]"):
        load_keypoint_spec("horse")


def test_a_model_and_data_of_different_keypoints_are_named():
    from pnfs_pipeline.keypoints import check_same_keypoints

    coco, mpii = load_keypoint_spec("coco").to_dict(), load_keypoint_spec("mpii").to_dict()
    check_same_keypoints(coco, dict(coco, sigmas=[0.1] * 17), "model.pt", "val_samples")  # OKS sigmas may differ
    check_same_keypoints(None, coco, "old.pt", "val_samples")  # a checkpoint that records no spec
    with pytest.raises(KeypointSpecError, match=r"model.pt was trained on keypoint spec 'coco' \(17 keypoints\), val_samples holds spec 'mpii' \(16 keypoints\)"):
        check_same_keypoints(coco, mpii, "model.pt", "val_samples")
    unflipped = dict(coco, flip_pairs=coco["flip_pairs"][1:])
    with pytest.raises(KeypointSpecError, match="differ in flip_pairs"):
        check_same_keypoints(coco, unflipped, "model.pt", "val_samples")
