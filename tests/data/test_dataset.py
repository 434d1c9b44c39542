import numpy as np
import pytest
import torch

from pnfs_pipeline.config import AugmentationParams, SampleParams
from pnfs_pipeline.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageReadError,
    PackedRecords,
    TopDownDataset,
    denormalize_image,
    make_data_loader,
    normalize_image,
)
from pnfs_pipeline.keypoints import load_keypoint_spec
from tests.conftest import coco_sample_indexes

SAMPLE = SampleParams(input_size=(48, 64), heatmap_size=(12, 16))


@pytest.fixture
def train_index(coco_root):
    return coco_sample_indexes(coco_root, SAMPLE)["train"]


def test_sample_shapes_and_targets_follow_the_keypoints(train_index):
    dataset = TopDownDataset(train_index, SAMPLE)
    item = dataset[0]
    assert item["image"].shape == (3, 64, 48) and item["heatmaps"].shape == (17, 16, 12)
    visible = item["target_weight"] > 0
    assert visible.any()
    for k in torch.nonzero(visible).flatten().tolist():
        y, x = np.unravel_index(item["heatmaps"][k].argmax().item(), (16, 12))
        expected = item["input_keypoints"][k, :2] / 4.0
        assert abs(x - expected[0]) <= 0.5 + 1e-6 and abs(y - expected[1]) <= 0.5 + 1e-6


def test_part_sigmas_widen_only_that_parts_targets(train_index):
    wide = SAMPLE.model_copy(update={"keypoint_sigmas": {"lower_limb": 3.0}})
    plain, widened = TopDownDataset(train_index, SAMPLE)[0], TopDownDataset(train_index, wide)[0]
    spec = load_keypoint_spec("coco")
    lower = set(spec.body_parts(3)["lower_limb"])
    labelled = plain["target_weight"] > 0
    assert any(labelled[k] for k in lower)
    for k in range(17):
        if not labelled[k]:
            continue
        if k in lower:
            assert widened["heatmaps"][k].sum() > plain["heatmaps"][k].sum()
        else:
            torch.testing.assert_close(widened["heatmaps"][k], plain["heatmaps"][k])
    with pytest.raises(ValueError, match="keypoint_sigmas"):
        TopDownDataset(train_index, SAMPLE.model_copy(update={"keypoint_sigmas": {"tail": 1.0}}))


def test_augmentation_is_reproducible_and_changes_with_epoch(train_index):
    aug = AugmentationParams(rotation_prob=1.0)
    first = TopDownDataset(train_index, SAMPLE, aug, seed=3)[1]
    second = TopDownDataset(train_index, SAMPLE, aug, seed=3)[1]
    torch.testing.assert_close(first["image"], second["image"])
    later = TopDownDataset(train_index, SAMPLE, aug, seed=3)
    later.set_epoch(1)
    assert not torch.equal(later[1]["image"], first["image"])


def test_flipped_sample_swaps_left_and_right_targets(train_index):
    aug = AugmentationParams(scale_factor=0.0, rotation_prob=0.0, half_body_prob=0.0, flip=True)
    dataset = TopDownDataset(train_index, SAMPLE, aug, seed=0)
    plain = TopDownDataset(train_index, SAMPLE, None)
    for idx in range(len(dataset)):
        item = dataset[idx]
        if item["flipped"]:
            reference = plain[idx]
            # The crop maps its center to x = width / 2 (the top-down convention), so mirroring
            # about the crop's center line is x -> width - x, for pixels and keypoints alike.
            torch.testing.assert_close(item["image"][..., 1:], reference["image"][..., 1:].flip(-1))
            # The flipped crop's left eye (1) sits at the mirror image of the plain crop's right eye (2).
            mirrored_x = 48 - reference["input_keypoints"][2, 0]
            assert item["input_keypoints"][1, 0] == pytest.approx(mirrored_x.item(), abs=1e-3)
            assert item["input_keypoints"][1, 1] == pytest.approx(reference["input_keypoints"][2, 1].item(), abs=1e-3)
            return
    pytest.fail("no sample was flipped")


def test_loader_batches_and_a_missing_image_names_the_file(train_index, coco_root):
    loader = make_data_loader(TopDownDataset(train_index, SAMPLE), batch_size=2, shuffle=True, seed=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 64, 48)
    (coco_root / "images" / "train2017" / "000000000001.jpg").unlink()
    with pytest.raises(ImageReadError, match="000000000001.jpg"):
        TopDownDataset(train_index, SAMPLE)[0]


def test_cached_images_give_the_same_samples_and_are_decoded_once(train_index, monkeypatch):
    import pnfs_pipeline.data.dataset as dataset_module

    aug = AugmentationParams(flip=True, rotation_prob=1.0)
    plain = TopDownDataset(train_index, SAMPLE, aug, seed=1)
    cached = TopDownDataset(train_index, SAMPLE.model_copy(update={"cache_images": True}), aug, seed=1)
    expected = []
    for epoch in range(2):
        plain.set_epoch(epoch)
        expected.append([plain[i] for i in range(len(plain))])
    reads = []
    original_read = dataset_module.read_rgb_image
    monkeypatch.setattr(dataset_module, "read_rgb_image", lambda path: reads.append(path) or original_read(path))
    for epoch in range(2):
        cached.set_epoch(epoch)
        for i in range(len(cached)):
            got, want = cached[i], expected[epoch][i]
            torch.testing.assert_close(got["image"], want["image"])
            torch.testing.assert_close(got["heatmaps"], want["heatmaps"])
    assert len(reads) == len({record["image"] for record in train_index["samples"]})


def test_records_are_packed_and_read_back_equal(train_index):
    records = train_index["samples"]
    packed = PackedRecords(records)
    assert len(packed) == len(records) and list(packed) == records
    assert packed[-1] == records[-1] and packed[np.int64(1)] == records[1] and packed[np.int8(-1)] == records[-1]
    packed[0]["keypoints"][0][0] = -5.0  # a copy: the packed bytes do not change
    assert packed[0] == records[0]
    with pytest.raises(IndexError, match=f"record {len(records)} of {len(records)}"):
        packed[len(records)]
    with pytest.raises(IndexError, match=f"record {-len(records) - 1} of {len(records)}"):
        packed[-len(records) - 1]
    with pytest.raises(TypeError, match="one at a time"):
        packed[0:2]
    assert len(PackedRecords([])) == 0 and list(PackedRecords([])) == []
    assert isinstance(TopDownDataset(train_index, SAMPLE).samples, PackedRecords)


def test_images_in_order_groups_each_images_crops_and_recent_images_are_not_read_again(train_index, monkeypatch):
    import pnfs_pipeline.data.dataset as dataset_module

    by_image = {}
    for record in train_index["samples"]:
        by_image.setdefault(record["image"], []).append(record)
    for group in by_image.values():  # three crops an image, as detection boxes give
        group += [{**group[0], "record_id": f"{group[0]['record_id']}-{k}"} for k in range(3 - len(group))]
    # Interleave the images' crops: A1 B1 C1 A2 B2 ... (the order an index need not keep).
    groups = list(by_image.values())
    interleaved = [g[k] for k in range(max(map(len, groups))) for g in groups if k < len(g)]
    dataset = TopDownDataset({**train_index, "samples": interleaved}, SAMPLE)
    order = dataset.images_in_order()
    assert sorted(order) == list(range(len(interleaved)))
    names = [interleaved[i]["image"] for i in order]
    for name in by_image:  # each image's crops in one run
        positions = [k for k, n in enumerate(names) if n == name]
        assert positions == list(range(positions[0], positions[-1] + 1))
    assert [interleaved[i]["image"] for i in order if i < len(groups)] == [g[0]["image"] for g in groups]
    grouped = TopDownDataset({**train_index, "samples": [interleaved[i] for i in order]}, SAMPLE)
    assert grouped.images_in_order() == list(range(len(interleaved)))  # already grouped: the identity

    reads = []
    original_read = dataset_module.read_rgb_image
    monkeypatch.setattr(dataset_module, "read_rgb_image", lambda path: reads.append(path) or original_read(path))
    for i in order:
        dataset[i]
    assert len(reads) == len(by_image)


def test_image_normalisation_and_batch_field_types(train_index):

    image = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    expected = ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    normalized = normalize_image(image)
    assert normalized.dtype == torch.float32 and normalized.is_contiguous()
    np.testing.assert_allclose(normalized.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(denormalize_image(normalized), image)

    batch = next(iter(make_data_loader(TopDownDataset(train_index, SAMPLE), 2, False, 0)))
    types = {name: (value.dtype, tuple(value.shape)) for name, value in batch.items()}
    assert types["center"] == (torch.float32, (2, 2)) and types["size"] == (torch.float32, (2, 2))
    for name in ("rotation", "score", "area"):
        assert types[name] == (torch.float32, (2,)), name
    assert types["flipped"] == (torch.bool, (2,))
    assert types["image_id"] == (torch.int64, (2,)) and types["index"] == (torch.int64, (2,))
    assert batch["index"].tolist() == [0, 1]


def test_crops_prepared_for_another_input_shape_are_refused(train_index):
    # prepared at 48x64 (3:4); a square network would see every person cut at head and feet
    square = SampleParams(input_size=(64, 64), heatmap_size=(16, 16))
    with pytest.raises(ValueError, match=r"coco-train: 4 of 4 crops were prepared for another input shape .* not this network's 64x64 .* run the prepare pipeline again"):
        TopDownDataset(train_index, square)
    TopDownDataset(train_index, SampleParams(input_size=(96, 128), heatmap_size=(24, 32)))  # same shape, other size


def test_caching_every_image_of_a_big_dataset_is_warned_about(train_index, monkeypatch, caplog):
    import pnfs_pipeline.data.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "CACHE_WARNING_IMAGES", 1)
    cached = SAMPLE.model_copy(update={"cache_images": True})
    with caplog.at_level("WARNING"):
        TopDownDataset(train_index, SAMPLE)
        assert "cache_images" not in caplog.text
        TopDownDataset(train_index, cached)
    images = len({record["image"] for record in train_index["samples"]})
    assert f"sample.cache_images keeps every decoded image in memory, in each loader process: {images} images" in caplog.text
