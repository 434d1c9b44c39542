"""COCO / MPII / detection readers, and every kind of bad input they must catch."""

import json

import numpy as np
import pytest

from pnfs_pipeline.config import DataParams, SampleParams
from pnfs_pipeline.data.coco import clip_box, image_is_readable, read_coco_split
from pnfs_pipeline.data.dataset import read_rgb_image
from pnfs_pipeline.data.detections import read_detection_records
from pnfs_pipeline.data.records import BadInputError, BadRecordLog
from pnfs_pipeline.data.sample_index import (
    build_sample_indexes,
    ground_truth_for_evaluation,
    locate_raw_data,
    validate_raw_data,
)
from pnfs_pipeline.evaluation.coco_eval import evaluate_coco
from pnfs_pipeline.keypoints import load_keypoint_spec
from tests.conftest import write_coco_split

COCO = load_keypoint_spec("coco")
SAMPLE = SampleParams(input_size=(96, 128), heatmap_size=(24, 32))


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _validate(root, on_bad_record="skip"):
    data = DataParams(source="coco", root=str(root), on_bad_record=on_bad_record)
    return validate_raw_data(locate_raw_data(data), COCO, data, SAMPLE)


def test_clean_dataset_gives_one_sample_per_person(coco_root):
    validated = _validate(coco_root)
    assert validated.log.records == []
    indexes = build_sample_indexes(validated, COCO, DataParams(source="coco", root=str(coco_root)))
    assert indexes["train"]["num_samples"] == 4 and indexes["val"]["num_samples"] == 2
    sample = indexes["train"]["samples"][0]
    # bbox [30, 20, 40, 80] clipped to [30, 20, 39, 79], then grown to 3:4 and padded x1.25.
    assert sample["center"] == pytest.approx([49.5, 59.5])
    assert sample["size"][0] / sample["size"][1] == pytest.approx(0.75)
    assert sample["size"][1] == pytest.approx(79 * 1.25)


def test_limited_validation_keeps_whole_images_and_scores_only_them(coco_root):
    path = write_coco_split(coco_root, "val2017", [11, 12, 13, 14])

    def two_people_on_image_11(data):
        second = dict(data["annotations"][0], id=111)
        second["keypoints"] = [v + 5.0 if i % 3 < 2 else v for i, v in enumerate(second["keypoints"])]
        data["annotations"].append(second)

    _edit(path, two_people_on_image_11)
    data = DataParams(source="coco", root=str(coco_root), max_val_samples=3)
    validated = validate_raw_data(locate_raw_data(data), COCO, data, SAMPLE)
    assert len(validated.records["val"]) == 5
    indexes = build_sample_indexes(validated, COCO, data)
    samples = indexes["val"]["samples"]
    images = {s["image_id"] for s in samples}
    # whole images only: every person of a kept image, and at most 3 people (the seeded image
    # order starts 11, 12: image 11's two people and image 12's one)
    assert images == {11, 12} and len(samples) == 3
    assert sorted(s["record_id"] for s in samples) == sorted(
        r["record_id"] for r in validated.records["val"] if r["image_id"] in images
    )
    truth = ground_truth_for_evaluation(validated, indexes["val"])
    assert {image["id"] for image in truth["images"]} == images
    assert {a["image_id"] for a in truth["annotations"]} == images
    # perfect predictions for the sampled people score AP 1 (a partly sampled image would not)
    results = [
        {"image_id": s["image_id"], "category_id": 1, "score": 1.0, "keypoints": np.ravel(s["keypoints"]).tolist()}
        for s in samples
    ]
    assert evaluate_coco(truth, results, np.asarray(COCO.sigmas))["AP"] == pytest.approx(1.0)
    # unlimited: the whole split
    full = ground_truth_for_evaluation(validated, build_sample_indexes(validated, COCO, DataParams(source="coco", root=str(coco_root)))["val"])
    assert len(full["images"]) == 4 and len(full["annotations"]) == 5
    # data.subset_seed draws other subsets, each the same every time
    drawn = {
        seed: {s["image_id"] for s in build_sample_indexes(validated, COCO, data.model_copy(update={"subset_seed": seed}))["val"]["samples"]}
        for seed in range(4)
    }
    assert drawn[0] == images and len(set(map(frozenset, drawn.values()))) > 1
    assert {s["image_id"] for s in build_sample_indexes(validated, COCO, data.model_copy(update={"subset_seed": 3}))["val"]["samples"]} == drawn[3]


def test_detections_on_images_without_people_are_scored(coco_root):
    path = write_coco_split(coco_root, "val2017", [11, 12, 13])

    def nobody_on_image_13(data):
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 13]

    _edit(path, nobody_on_image_13)
    folder = coco_root / "person_detection_results"
    folder.mkdir()
    boxes = [{"image_id": i, "category_id": 1, "bbox": [30, 20, 40, 80], "score": 0.9} for i in (11, 12, 13)]
    (folder / "COCO_val2017_detections.json").write_text(json.dumps(boxes))
    data = DataParams(source="coco", root=str(coco_root))
    validated = validate_raw_data(locate_raw_data(data), COCO, data, SAMPLE)
    indexes = build_sample_indexes(validated, COCO, data)
    truth = ground_truth_for_evaluation(validated, indexes["val"])
    # image 13 is scored (a ground-truth image without people) and so is the box found on it
    assert {image["id"] for image in truth["images"]} == {11, 12, 13}
    assert sorted(s["image_id"] for s in indexes["val_detections"]["samples"]) == [11, 12, 13]
    # a limited validation scores its own images, and the boxes on them only
    limited = data.model_copy(update={"max_val_samples": 1})
    indexes = build_sample_indexes(validated, COCO, limited)
    kept = {image["id"] for image in ground_truth_for_evaluation(validated, indexes["val"])["images"]}
    assert len(kept) == 1 and {s["image_id"] for s in indexes["val_detections"]["samples"]} == kept


def test_crowd_and_zero_keypoint_people_are_not_training_samples(coco_root):
    path = coco_root / "annotations" / "person_keypoints_train2017.json"

    def change(data):
        data["annotations"][0]["iscrowd"] = 1
        data["annotations"][1]["keypoints"] = [0] * 51

    _edit(path, change)
    validated = _validate(coco_root)
    assert validated.log.records == []  # valid records, just not training samples
    assert len(validated.records["train"]) == 2


BAD_CASES = {
    "wrong keypoint count": lambda d: d["annotations"][0].update(keypoints=[1, 1, 2] * 16),
    "zero or negative box size": lambda d: d["annotations"][0].update(bbox=[10, 10, 0, -5]),
    "NaN or non-numeric keypoint coordinates": lambda d: d["annotations"][0]["keypoints"].__setitem__(0, float("nan")),
    "image referenced twice": lambda d: d["images"].append(dict(d["images"][1], id=99)),
    "visibility flags must be 0, 1 or 2": lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 7),
    "'image_id' must be an integer": lambda d: d["annotations"][0].update(image_id=[1]),
    "negative area": lambda d: d["annotations"][0].update(area=-5.0),
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_bad_records_are_reported_and_skipped(coco_root, reason):
    path = coco_root / "annotations" / "person_keypoints_train2017.json"
    _edit(path, BAD_CASES[reason])
    validated = _validate(coco_root)
    assert len(validated.log.records) == 1
    bad = validated.log.records[0]
    assert reason in bad.reason and bad.file == str(path)
    assert len(validated.records["train"]) == 3 + (reason == "image referenced twice")
    report = validated.log.report()
    assert report["num_bad_records"] == 1 and report["records"][0]["file"] == str(path)


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_fail_mode_stops_on_the_first_bad_record(coco_root, reason):
    path = coco_root / "annotations" / "person_keypoints_train2017.json"
    _edit(path, BAD_CASES[reason])
    with pytest.raises(BadInputError) as error:
        _validate(coco_root, on_bad_record="fail")
    assert str(path) in str(error.value) and reason in str(error.value)


def test_missing_and_corrupt_images_are_bad_records(coco_root):
    image_dir = coco_root / "images" / "train2017"
    (image_dir / "000000000001.jpg").unlink()
    (image_dir / "000000000002.jpg").write_bytes(b"not a jpeg at all")
    validated = _validate(coco_root)
    reasons = sorted(b.reason.split(":")[0] for b in validated.log.records)
    # The image entries fail, then the annotations that point at them.
    assert reasons.count("missing image file") == 1
    assert reasons.count("corrupt image (cannot be decoded)") == 1
    assert sum("unknown or rejected image" in b.reason for b in validated.log.records) == 2
    assert len(validated.records["train"]) == 2
    # the report counts by kind, not by each rejected image's id
    assert validated.log.report()["by_reason"] == {
        "corrupt image (cannot be decoded)": 1, "missing image file": 1, "refers to unknown or rejected image": 2
    }


def test_truncated_images_and_wrong_sizes_are_bad_records(coco_root):
    image_dir = coco_root / "images" / "train2017"
    whole = (image_dir / "000000000003.jpg").read_bytes()
    # OpenCV decodes a truncated JPEG, greying the missing rows; the check must not pass it
    (image_dir / "000000000003.jpg").write_bytes(whole[: len(whole) // 3])
    _edit(coco_root / "annotations" / "person_keypoints_train2017.json", lambda d: d["images"][3].update(width=100))
    validated = _validate(coco_root)
    reasons = {b.record_id: b.reason for b in validated.log.records}
    assert reasons["image 3"].startswith("corrupt image (cannot be decoded)")
    assert reasons["image 4"].startswith("image size differs from the annotation file: 128x128 pixels, the file says 100x128")
    assert sorted(r["image_id"] for r in validated.records["train"]) == [1, 2]


def test_images_are_read_as_stored_without_exif_rotation(tmp_path):
    from PIL import Image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    Image.new("RGB", (80, 40), (200, 10, 10)).save(path, exif=exif)
    assert read_rgb_image(path).shape == (40, 80, 3)
    assert image_is_readable(path, "decode", (80, 40)) is None


def test_malformed_json_names_the_file_and_position(coco_root):
    path = coco_root / "annotations" / "person_keypoints_val2017.json"
    path.write_text('{"images": [ {"id": 1,, ] }')
    with pytest.raises(BadInputError, match=r"person_keypoints_val2017.json: malformed JSON at line 1, column"):
        read_coco_split(path, coco_root / "images" / "val2017", 17, BadRecordLog())


def test_missing_layout_names_what_is_expected(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(FileNotFoundError, match="person_keypoints_train2017.json: train annotations not found"):
        locate_raw_data(DataParams(source="coco", root=str(tmp_path)))


def test_detection_boxes_become_scored_crops(coco_root):
    split = read_coco_split(
        coco_root / "annotations" / "person_keypoints_val2017.json",
        coco_root / "images" / "val2017",
        17,
        BadRecordLog(),
    )
    detections = [
        {"image_id": 11, "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.9},
        {"image_id": 12, "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.1},
        {"image_id": 77, "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.9},
        {"image_id": 11, "category_id": 1, "bbox": [10, 10, float("nan"), 60], "score": 0.9},
        {"image_id": [11], "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.9},
    ]
    path = coco_root / "dets.json"
    path.write_text(json.dumps(detections))
    log = BadRecordLog()
    records = read_detection_records(path, split, 17, 0.75, 1.25, 0.5, log)
    assert [r["score"] for r in records] == [0.9]
    assert records[0]["keypoints"] == [[0.0, 0.0, 0.0]] * 17
    assert sorted(b.record_id for b in log.records) == ["2", "3", "4"]


def test_boxes_crossing_the_border_are_cut_not_shifted(coco_root):
    assert clip_box([-50.0, 10.0, 100.0, 80.0], 640, 480) == [0.0, 10.0, 49.0, 79.0]
    assert clip_box([600.0, -20.0, 100.0, 60.0], 640, 480) == [600.0, 0.0, 39.0, 39.0]
    assert clip_box([700.0, 10.0, 50.0, 50.0], 640, 480) is None
    split = read_coco_split(
        coco_root / "annotations" / "person_keypoints_val2017.json", coco_root / "images" / "val2017", 17, BadRecordLog()
    )
    path = coco_root / "dets.json"
    # a detection cut by the left border keeps its own centre, as in the reference code
    path.write_text(json.dumps([{"image_id": 11, "category_id": 1, "bbox": [-20.0, 10.0, 60.0, 80.0], "score": 0.9}]))
    records = read_detection_records(path, split, 17, 0.75, 1.25, 0.0, BadRecordLog())
    assert records[0]["center"] == pytest.approx([10.0, 50.0])


def test_detection_files_are_found_by_split_or_asked_for(coco_root):
    folder = coco_root / "person_detection_results"
    folder.mkdir()
    boxes = json.dumps([{"image_id": 11, "category_id": 1, "bbox": [10, 10, 30, 60], "score": 0.9}])
    (folder / "COCO_test-dev2017_detections.json").write_text("[]")
    data = DataParams(source="coco", root=str(coco_root))
    # one file: used whatever its name
    assert locate_raw_data(data)["detections"].endswith("COCO_test-dev2017_detections.json")
    (folder / "other_boxes.json").write_text(boxes)
    with pytest.raises(FileNotFoundError, match="none of .* names the split 'val2017'; set data.detections_file"):
        locate_raw_data(data)
    (folder / "COCO_val2017_detections.json").write_text(boxes)
    assert locate_raw_data(data)["detections"].endswith("COCO_val2017_detections.json")


MPII_JOINTS = [[float(10 + i), float(20 + i)] for i in range(16)]
MPII_ENTRY = {"image": "a.jpg", "center": [101.0, 81.0], "scale": 0.5, "joints": MPII_JOINTS, "joints_vis": [1] * 15 + [0]}


def _write_mpii(root, entries: list, ground_truth: dict) -> None:
    """One 200x200 image, ``entries`` as both splits' JSON, ``ground_truth`` as gt_valid.mat."""
    import cv2
    from scipy.io import savemat

    (root / "annot").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    cv2.imwrite(str(root / "images" / "a.jpg"), np.zeros((200, 200, 3), np.uint8))
    for name in ("train.json", "valid.json"):
        (root / "annot" / name).write_text(json.dumps(entries))
    savemat(str(root / "annot" / "gt_valid.mat"), ground_truth)


def test_mpii_reader_converts_matlab_coordinates(tmp_path):
    root = tmp_path / "mpii"
    bad = dict(MPII_ENTRY, joints=MPII_JOINTS[:15])
    bad_flags = dict(MPII_ENTRY, joints_vis=[None] * 16)
    heads = np.array([[[11, 11, 11], [21, 21, 21]], [[31, 31, 31], [41, 41, 41]]], float)
    _write_mpii(root, [MPII_ENTRY, bad, bad_flags], {"headboxes_src": heads})
    data = DataParams(source="mpii", root=str(root), keypoint_spec="mpii")
    validated = validate_raw_data(locate_raw_data(data), load_keypoint_spec("mpii"), data, SampleParams(input_size=(64, 64), heatmap_size=(16, 16)))
    assert len(validated.records["val"]) == 1
    assert [b.reason.split(":")[0] for b in validated.log.records] == ["wrong keypoint count", "joints_vis flags must be 0 or 1"] * 2
    record = validated.records["val"][0]
    assert record["keypoints"][0] == [9.0, 19.0, 2.0] and record["keypoints"][15] == [0.0, 0.0, 0.0]
    # Center goes 0-based and down by 15 * scale; the square box of side scale * 200 is padded x1.25.
    assert record["center"] == pytest.approx([100.0, 80.0 + 7.5])
    assert record["size"] == pytest.approx([125.0, 125.0])
    assert record["head_box"] == pytest.approx([10.0, 20.0, 30.0, 40.0])
    assert "scored_keypoints" not in record  # a ground-truth file without joints: the JSON's are scored
    # without gt_valid.mat there is nothing to score PCKh by: said before any training
    (root / "annot" / "gt_valid.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"annot/gt_valid.mat: not found under data.root=.*head boxes for PCKh"):
        locate_raw_data(data)


def test_mpii_scoring_ground_truth_comes_from_gt_valid_mat(tmp_path):
    """HRNet's evaluation reads pos_gt_src and jnt_missing, not valid.json's joints_vis."""
    from pnfs_pipeline.evaluation.report import score_mpii

    root = tmp_path / "mpii"
    positions = np.asarray(MPII_JOINTS, float)[:, :, None] + 3.0  # (16, 2, 1), 1-based, 3 px off the JSON's
    missing = np.zeros((16, 1))
    missing[0] = 1  # joint 0 unlabelled here, labelled in the JSON; joint 15 the other way round
    heads = np.array([[[11.0], [21.0]], [[31.0], [41.0]]])
    _write_mpii(root, [MPII_ENTRY], {"pos_gt_src": positions, "jnt_missing": missing, "headboxes_src": heads})
    data = DataParams(source="mpii", root=str(root), keypoint_spec="mpii")
    spec = load_keypoint_spec("mpii")
    validated = validate_raw_data(locate_raw_data(data), spec, data, SampleParams(input_size=(64, 64), heatmap_size=(16, 16)))
    record = validated.records["val"][0]
    assert record["scored_keypoints"][0] == [0.0, 0.0, 0.0]
    assert record["scored_keypoints"][15] == [float(10 + 15 + 2), float(20 + 15 + 2), 2.0]  # 1-based -> 0-based
    assert record["keypoints"][15] == [0.0, 0.0, 0.0]  # training targets keep the JSON's flags
    predicted = np.asarray(record["scored_keypoints"])[None].copy()
    predicted[..., 2] = 1.0
    table = score_mpii({"keypoints": predicted, "indices": np.array([0])}, [record], spec)
    assert table["overall"]["Mean"] == 100.0 and table["per_keypoint_PCKh"]["right_ankle"] == 0.0  # joint 0: unscored
    assert table["scored_against"] == "gt_valid.mat"
    old_index = {k: v for k, v in record.items() if k != "scored_keypoints"}  # prepared before this reader
    assert score_mpii({"keypoints": predicted, "indices": np.array([0])}, [old_index], spec)["scored_against"] == "valid.json"
    _write_mpii(root, [MPII_ENTRY], {"pos_gt_src": positions[:15], "jnt_missing": missing, "headboxes_src": heads})
    with pytest.raises(ValueError, match=r"gt_valid.mat: 'pos_gt_src' \(15, 2, 1\) and 'jnt_missing' \(16, 1\) must be"):
        validate_raw_data(locate_raw_data(data), spec, data, SampleParams(input_size=(64, 64), heatmap_size=(16, 16)))
