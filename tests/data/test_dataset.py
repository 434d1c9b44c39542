import numpy as np
import pytest
import torch

from pnfs_pipeline.config import AugmentationParams, SampleParams
from pnfs_pipeline.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageReadError,
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
    reads = []
    original_read = dataset_module.read_rgb_image
    monkeypatch.setattr(dataset_module, "read_rgb_image", lambda path: reads.append(path) or original_read(path))
    for epoch in range(2):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            got, want = cached[i], plain[i]
            torch.testing.assert_close(got["image"], want["image"])
            torch.testing.assert_close(got["heatmaps"], want["heatmaps"])
    images = {record["image"] for record in train_index["samples"]}
    cached_reads = len(reads) - 2 * len(plain)  # the plain dataset reads on every access
    assert cached_reads == len(images)


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
