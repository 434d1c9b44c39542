"""Tests of the synthetic keypoint dataset generator (COCO + MPII layouts).

Small configurations keep each test well under a few seconds; the module-scoped fixtures
generate each dataset once and share it between the read-only checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pnfs_pipeline.data.synthetic import (
    COCO_KEYPOINT_NAMES,
    COCO_SKELETON,
    IN_PROGRESS_MARKER,
    MANIFEST_NAME,
    BodyPose,
    LimbAngles,
    ScenePerson,
    SyntheticConfig,
    build_person,
    draw_person,
    generate_synthetic_dataset,
    image_file_name,
    sample_body_shape,
    synthetic_dataset_exists,
    synthetic_paths,
    visible_keypoints,
)

SMALL = {"num_train_images": 6, "num_val_images": 4}
# Everything forced on, and a non-square image so width/height mix-ups show up.
FORCED = SyntheticConfig(
    seed=3,
    image_width=192,
    image_height=160,
    crowd_prob=1.0,
    tiny_person_prob=1.0,
    occluder_prob=1.0,
    detection_false_positives=2.0,
    **SMALL,
)
PLAIN = SyntheticConfig(seed=0, **SMALL)


@pytest.fixture(scope="module")
def forced_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("forced")
    generate_synthetic_dataset(root, FORCED)
    return root


@pytest.fixture(scope="module")
def plain_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plain")
    generate_synthetic_dataset(root, PLAIN)
    return root


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2, not ours
@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_json_is_valid_keypoint_annotation(forced_root: Path, split: str) -> None:
    paths = synthetic_paths(forced_root)
    coco = COCO(str(paths[f"{split}_annotations"]))
    data = coco.dataset
    assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
    (category,) = data["categories"]
    assert category["id"] == 1 and category["name"] == "person"
    assert category["keypoints"] == list(COCO_KEYPOINT_NAMES)
    assert category["skeleton"] == [list(p) for p in COCO_SKELETON]

    images = {img["id"]: img for img in data["images"]}
    assert len(images) == len(data["images"]) == (6 if split == "train" else 4)
    for img in images.values():
        assert img["file_name"] == image_file_name(img["id"]) and len(img["file_name"]) == 16
        assert (img["width"], img["height"]) == (192, 160)
        assert (paths[f"{split}_images"] / img["file_name"]).is_file()

    ann_ids = [a["id"] for a in data["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for ann in data["annotations"]:
        assert ann["image_id"] in images and ann["category_id"] == 1
        kps = np.asarray(ann["keypoints"], dtype=float).reshape(-1, 3)
        assert kps.shape == (17, 3)
        assert set(kps[:, 2]) <= {0.0, 1.0, 2.0}
        assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
        assert np.all(kps[kps[:, 2] == 0, :2] == 0)
        labelled = kps[kps[:, 2] > 0]
        assert np.all((labelled[:, 0] >= 0) & (labelled[:, 0] <= 191))
        assert np.all((labelled[:, 1] >= 0) & (labelled[:, 1] <= 159))
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 192 and y + h <= 160
        assert 0 < ann["area"] <= w * h
        if ann["iscrowd"]:
            assert ann["num_keypoints"] == 0 and not kps.any()
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["segmentation"]["size"] == [160, 192]
        else:
            assert ann["iscrowd"] == 0
            assert all(len(poly) >= 6 and len(poly) % 2 == 0 for poly in ann["segmentation"])
        assert coco.annToMask(ann).sum() > 0  # both polygon and RLE decode with pycocotools
    assert any(a["iscrowd"] == 1 for a in data["annotations"])
    assert any(a["iscrowd"] == 0 and a["num_keypoints"] == 0 for a in data["annotations"])
    assert any(a["num_keypoints"] > 0 for a in data["annotations"])


def test_image_ids_unique_across_splits(forced_root: Path) -> None:
    paths = synthetic_paths(forced_root)
    train = {img["id"] for img in _load(paths["train_annotations"])["images"]}
    val = {img["id"] for img in _load(paths["val_annotations"])["images"]}
    assert train.isdisjoint(val)


@pytest.mark.parametrize("root_fixture", ["forced_root", "plain_root"])
def test_ground_truth_as_predictions_scores_ap_one(root_fixture: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(root_fixture)
    gt = COCO(str(synthetic_paths(root)["val_annotations"]))
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt.dataset["annotations"]
        if not a["iscrowd"] and a["num_keypoints"] > 0
    ]
    assert results
    evaluator = COCOeval(gt, gt.loadRes(results), iouType="keypoints")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_detections_results_format(forced_root: Path) -> None:
    paths = synthetic_paths(forced_root)
    val = _load(paths["val_annotations"])
    val_ids = {img["id"] for img in val["images"]}
    persons = [a for a in val["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    dets = _load(paths["detections"])
    assert all(d["image_id"] in val_ids and d["category_id"] == 1 for d in dets)
    assert all(d["bbox"][2] > 0 and d["bbox"][3] > 0 and 0 < d["score"] < 1 for d in dets)
    confident = [d for d in dets if d["score"] > 0.5]
    assert len(confident) == len(persons)
    assert len(dets) > len(confident)  # false positives, all scored lower


def test_generation_is_deterministic_in_one_or_several_processes(tmp_path: Path, plain_root: Path) -> None:
    generate_synthetic_dataset(tmp_path / "again", PLAIN, workers=2)  # plain_root: one process
    for key in ("train_annotations", "val_annotations", "detections", "mpii_train", "mpii_valid", "mpii_gt_valid"):
        a = synthetic_paths(plain_root)[key].read_bytes()
        assert synthetic_paths(tmp_path / "again")[key].read_bytes() == a, key
    images = sorted((plain_root / "images/train2017").iterdir())
    assert images and images[0].name == image_file_name(1)
    for image in images:
        assert (tmp_path / "again/images/train2017" / image.name).read_bytes() == image.read_bytes(), image.name
    other = SyntheticConfig(seed=1, num_train_images=2, num_val_images=1, mpii=False)
    generate_synthetic_dataset(tmp_path / "other", other)
    assert (
        synthetic_paths(tmp_path / "other")["train_annotations"].read_bytes()
        != synthetic_paths(plain_root)["train_annotations"].read_bytes()
    )


def test_dataset_exists_tracks_config_and_completeness(tmp_path: Path) -> None:
    config = SyntheticConfig(seed=5, num_train_images=2, num_val_images=1, mpii=False)
    assert not synthetic_dataset_exists(tmp_path, config)
    summary = generate_synthetic_dataset(tmp_path, config)
    assert synthetic_dataset_exists(tmp_path, config)
    assert not synthetic_dataset_exists(tmp_path, SyntheticConfig(seed=6, num_train_images=2, num_val_images=1, mpii=False))
    assert not synthetic_dataset_exists(tmp_path, SyntheticConfig(seed=5, num_train_images=2, num_val_images=1))
    assert (tmp_path / MANIFEST_NAME).is_file() and not (tmp_path / IN_PROGRESS_MARKER).exists()
    assert summary["splits"]["train"]["images"] == 2 and summary["splits"]["val"]["images"] == 1
    assert summary["seconds"] > 0
    # A missing image (e.g. an interrupted copy) means the dataset is incomplete.
    (tmp_path / "images/val2017" / image_file_name(1_000_001)).unlink()
    assert not synthetic_dataset_exists(tmp_path, config)


@pytest.mark.parametrize("existing", ["train_annotations", "detections", "mpii_valid", "mpii_gt_valid", "val_images"])
def test_refuses_to_overwrite_foreign_data(tmp_path: Path, existing: str) -> None:
    """A real dataset at data.root by mistake: annotations, detections, MPII files or images."""
    config = SyntheticConfig(num_train_images=1, num_val_images=1)
    named = path = synthetic_paths(tmp_path)[existing]
    if existing.endswith("images"):
        path.mkdir(parents=True)
        path = path / "000000000001.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(FileExistsError, match=rf"already holds data that was not generated here \({named}\)"):
        generate_synthetic_dataset(tmp_path, config)
    assert path.read_text(encoding="utf-8") == "{}"
    generate_synthetic_dataset(tmp_path, config, overwrite_foreign=True)
    assert synthetic_dataset_exists(tmp_path, config)


def test_real_mpii_files_do_not_stop_a_coco_only_generation(tmp_path: Path) -> None:
    config = SyntheticConfig(num_train_images=1, num_val_images=1, mpii=False)
    mine = synthetic_paths(tmp_path)["mpii_valid"]
    mine.parent.mkdir(parents=True)
    mine.write_text("[]", encoding="utf-8")
    generate_synthetic_dataset(tmp_path, config)
    assert synthetic_dataset_exists(tmp_path, config) and mine.read_text(encoding="utf-8") == "[]"
    # ... nor are they overwritten later by a generation with MPII files: that run's manifest
    # says it wrote none, so they are still someone else's
    with pytest.raises(FileExistsError, match="mpii/annot/valid.json"):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(num_train_images=1, num_val_images=1, mpii=True))
    assert mine.read_text(encoding="utf-8") == "[]"
    # ... nor after a generation without them was interrupted (no manifest, its marker left)
    import pnfs_pipeline.data.synthetic as synthetic

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(synthetic, "_write_split", killed)
        with pytest.raises(KeyboardInterrupt):
            generate_synthetic_dataset(tmp_path, config)
    assert (tmp_path / IN_PROGRESS_MARKER).exists() and not (tmp_path / MANIFEST_NAME).exists()
    with pytest.raises(FileExistsError, match="mpii/annot/valid.json"):
        generate_synthetic_dataset(tmp_path, SyntheticConfig(num_train_images=1, num_val_images=1, mpii=True))
    assert mine.read_text(encoding="utf-8") == "[]"


def test_mpii_variant(forced_root: Path) -> None:
    paths = synthetic_paths(forced_root)
    valid = _load(paths["mpii_valid"])
    train = _load(paths["mpii_train"])
    assert valid and train
    for entry in valid + train:
        joints = np.asarray(entry["joints"], dtype=float)
        vis = np.asarray(entry["joints_vis"])
        assert joints.shape == (16, 2) and vis.shape == (16,) and set(vis) <= {0, 1}
        inside = joints[vis == 1]
        assert np.all((inside[:, 0] >= 1) & (inside[:, 0] <= 192))
        assert np.all((inside[:, 1] >= 1) & (inside[:, 1] <= 160))
        assert entry["scale"] > 0 and len(entry["center"]) == 2
        assert (paths["mpii_images"] / entry["image"]).is_file()
    mat = scipy.io.loadmat(str(paths["mpii_gt_valid"]))
    n = len(valid)
    assert mat["pos_gt_src"].shape == (16, 2, n)
    assert mat["jnt_missing"].shape == (16, n)
    assert mat["headboxes_src"].shape == (2, 2, n)
    for i, entry in enumerate(valid):
        np.testing.assert_allclose(mat["pos_gt_src"][:, :, i], entry["joints"])
        np.testing.assert_array_equal(mat["jnt_missing"][:, i], 1 - np.asarray(entry["joints_vis"]))
        (x1, y1), (x2, y2) = mat["headboxes_src"][:, :, i]
        assert x2 > x1 and y2 > y1


def test_mpii_and_coco_agree(forced_root: Path) -> None:
    """The MPII joints come from the same skeleton as the COCO keypoints."""
    paths = synthetic_paths(forced_root)
    coco = _load(paths["val_annotations"])
    file_of = {img["id"]: img["file_name"] for img in coco["images"]}
    persons = [a for a in coco["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    valid = _load(paths["mpii_valid"])
    assert len(valid) == len(persons)
    # MPII r_ankle (0) is COCO right_ankle (16); MPII l_wrist (15) is COCO left_wrist (9).
    for ann, entry in zip(persons, valid, strict=True):
        assert entry["image"] == file_of[ann["image_id"]]
        kps = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        for mpii_j, coco_k in ((0, 16), (15, 9), (12, 6)):
            if kps[coco_k, 2] > 0:
                assert entry["joints_vis"][mpii_j] == 1
                np.testing.assert_allclose(entry["joints"][mpii_j], kps[coco_k, :2] + 1.0, atol=0.011)


def _render_single(pose: BodyPose, seed: int = 0) -> tuple[np.ndarray, ScenePerson]:
    shape = sample_body_shape(np.random.default_rng(seed))
    person = build_person(shape, pose, 200.0, (128.0, 120.0))
    image = np.full((256, 256, 3), 127, np.uint8)
    label = np.zeros((256, 256), np.uint16)
    mask = np.zeros((256, 256), np.uint8)
    draw_person(image, label, mask, person, 16)
    scene_person = ScenePerson(person, "person", 16, mask.astype(bool))
    scene_person.keypoints = visible_keypoints(scene_person, label)
    return image, scene_person


def test_left_and_right_are_not_colour_coded() -> None:
    shape = sample_body_shape(np.random.default_rng(1))
    colours = shape.part_colours()
    for part in ("upper_arm", "forearm", "hand", "thigh", "shin", "foot"):
        assert colours[f"l_{part}"] == colours[f"r_{part}"]
    arm = LimbAngles(flexion=0.0, abduction=40.0, rotation=0.0, bend=0.0)
    image, person = _render_single(BodyPose(yaw=0.0, l_arm=arm, r_arm=arm), seed=1)
    p = person.model.points2d
    # Facing the camera, the person's left side is on the image's right.
    assert p["l_shoulder"][0] > p["r_shoulder"][0]
    left = np.round(0.5 * (p["l_shoulder"] + p["l_elbow"])).astype(int)
    right = np.round(0.5 * (p["r_shoulder"] + p["r_elbow"])).astype(int)
    np.testing.assert_array_equal(image[left[1], left[0]], image[right[1], right[0]])
    # ... and it is the shirt colour (up to the slight depth shading of limbs).
    np.testing.assert_allclose(image[left[1], left[0]], shape.shirt, atol=0.06 * 255)


def test_face_keypoints_are_visible_exactly_where_their_marks_are_drawn() -> None:
    """A nose or eye labelled visible has its mark drawn (its normal faces the camera enough);
    and a nose in near profile, drawn, is labelled visible when nothing covers it."""
    from pnfs_pipeline.data.synthetic import _FACE_DRAWN_ABOVE, sample_pose

    profile_noses_seen = 0
    for seed in range(120):
        rng = np.random.default_rng(seed)
        pose = sample_pose(rng)
        _, person = _render_single(pose, seed=seed)
        for name in ("nose", "l_eye", "r_eye"):
            v = person.keypoints[COCO_KEYPOINT_NAMES.index(name.replace("l_", "left_").replace("r_", "right_")), 2]
            nz = person.model.normal_z[name]
            if v == 2:
                assert nz > _FACE_DRAWN_ABOVE[name], (seed, name, nz)
            profile_noses_seen += name == "nose" and v == 2 and nz < 0.05
    assert profile_noses_seen > 0  # labelled occluded before (face threshold 0.05), though drawn on top


def test_visibility_follows_head_and_body_orientation() -> None:
    _, front = _render_single(BodyPose(yaw=0.0))
    assert np.all(front.keypoints[:5, 2] == 2)  # face and both ears seen
    _, back = _render_single(BodyPose(yaw=180.0))
    assert np.all(back.keypoints[:3, 2] == 0)  # no face from behind: unlabelled, as in COCO
    _, profile = _render_single(BodyPose(yaw=90.0))  # facing image right: left side is far
    v = profile.keypoints[:, 2]
    assert v[COCO_KEYPOINT_NAMES.index("right_eye")] == 2
    assert v[COCO_KEYPOINT_NAMES.index("left_eye")] == 1
    assert v[COCO_KEYPOINT_NAMES.index("left_ear")] == 1
    assert v[COCO_KEYPOINT_NAMES.index("left_shoulder")] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_train_images", 0),
        ("num_val_images", -1),
        ("image_width", 32),
        ("image_height", 63),
        ("max_people", 0),
        ("crowd_prob", 1.5),
        ("occluder_prob", -0.1),
        ("tiny_person_prob", 2.0),
        ("jpeg_quality", 0),
        ("detection_false_positives", -1.0),
        ("seed", -1),
        ("num_train_images", 2.5),
    ],
)
def test_bad_config_raises_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**{field: value})


def test_gt_valid_mat_does_not_record_when_it_was_written(tmp_path: Path, monkeypatch) -> None:
    import time

    from pnfs_pipeline.data.synthetic import _write_gt_valid

    entry = {"joints": [[10.0, 20.0]] * 16, "joints_vis": [1] * 16, "headbox": [[1.0, 2.0], [3.0, 4.0]]}
    written = []
    for moment in ("Tue Dec  1 00:00:00 2026", "Wed Dec  2 12:34:56 2026"):
        monkeypatch.setattr(time, "asctime", lambda *args, moment=moment: moment)  # scipy's header clock
        _write_gt_valid(tmp_path / "gt_valid.mat", [entry])
        written.append((tmp_path / "gt_valid.mat").read_bytes())
    assert written[0] == written[1]
    assert scipy.io.loadmat(str(tmp_path / "gt_valid.mat"))["pos_gt_src"].shape == (16, 2, 1)


def test_ears_under_the_persons_own_long_hair_are_labelled_occluded() -> None:
    """Long hair falls over the back of the head and the ears in profile and from behind: an ear
    whose pixel the hair covers is occluded (v=1), though the hair belongs to the head."""
    import dataclasses

    from pnfs_pipeline.data.synthetic import PART_IDS, sample_pose

    covered = seen = 0
    for seed in range(150):
        rng = np.random.default_rng(seed)
        shape = dataclasses.replace(sample_body_shape(rng), long_hair=True)
        person = build_person(shape, sample_pose(rng), 200.0, (128.0, 110.0))
        label = np.zeros((256, 256), np.uint16)
        draw_person(None, label, None, person, 16)
        keypoints = visible_keypoints(ScenePerson(person, "person", 16, label > 0), label)
        for name in ("left_ear", "right_ear"):
            x, y, v = keypoints[COCO_KEYPOINT_NAMES.index(name)]
            if v == 0:
                continue
            if label[int(round(y)), int(round(x))] == 16 + PART_IDS["long_hair"]:
                covered += 1
                assert v == 1, (seed, name)
            else:
                seen += v == 2
    assert covered >= 5 and seen >= 5  # both cases met
