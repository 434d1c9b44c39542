import numpy as np
import pytest

from pnfs_pipeline.config import AugmentationParams
from pnfs_pipeline.data.records import box_to_center_size
from pnfs_pipeline.data.targets import gaussian_heatmaps, keypoint_sigmas
from pnfs_pipeline.data.transforms import (
    affine_points,
    crop_affine,
    flip_keypoints,
    half_body_crop,
    invert_affine,
    mirrored_affine,
    sample_augmentation,
    warp_image,
)
from pnfs_pipeline.keypoints import load_keypoint_spec


@pytest.mark.parametrize("rotation", [0.0, 30.0, -75.0, 180.0])
def test_warp_round_trip_of_keypoints_is_exact(rotation):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 400, size=(50, 2))
    matrix = crop_affine([210.5, 160.25], [150.0, 200.0], rotation, (96, 128))
    back = affine_points(affine_points(points, matrix), invert_affine(matrix))
    assert np.abs(back - points).max() < 1e-3


def test_crop_maps_center_to_output_center_and_box_to_width():
    matrix = crop_affine([100.0, 50.0], [60.0, 80.0], 0.0, (96, 128))
    np.testing.assert_allclose(affine_points(np.array([[100.0, 50.0]]), matrix), [[48.0, 64.0]])
    np.testing.assert_allclose(affine_points(np.array([[70.0, 10.0]]), matrix), [[0.0, 0.0]])


def test_warped_image_pixel_follows_its_keypoint():
    image = np.zeros((200, 300, 3), np.uint8)
    image[120, 170] = 255
    matrix = crop_affine([150.0, 100.0], [120.0, 160.0], 20.0, (96, 128))
    warped = warp_image(image, matrix, (96, 128))
    expected = affine_points(np.array([[170.0, 120.0]]), matrix)[0]
    brightest = np.unravel_index(warped[..., 0].argmax(), warped.shape[:2])
    assert abs(brightest[1] - expected[0]) <= 1 and abs(brightest[0] - expected[1]) <= 1


def test_flip_twice_is_identity_and_swaps_pairs():
    spec = load_keypoint_spec("coco")
    perm = spec.flip_permutation()
    rng = np.random.default_rng(1)
    keypoints = np.column_stack([rng.uniform(0, 300, (17, 2)), rng.integers(1, 3, 17)])
    once = flip_keypoints(keypoints, 320, perm)
    # The left eye's mirror image is where the right eye was.
    assert once[1, 0] == pytest.approx(320 - 1 - keypoints[2, 0])
    assert once[1, 1] == pytest.approx(keypoints[2, 1])
    np.testing.assert_allclose(flip_keypoints(once, 320, perm), keypoints)


@pytest.mark.parametrize("rotation", [0.0, 25.0])
def test_mirrored_warp_equals_warping_the_flipped_image(rotation):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    matrix = crop_affine([70.3, 40.7], [60.0, 80.0], rotation, (48, 64))
    flipped_then_warped = warp_image(np.ascontiguousarray(image[:, ::-1]), matrix, (48, 64))
    warped_mirrored = warp_image(image, mirrored_affine(matrix, image.shape[1]), (48, 64))
    # cv2 rounds sample positions to 1/32 pixel, so the two paths may differ by one level.
    assert np.abs(flipped_then_warped.astype(int) - warped_mirrored.astype(int)).max() <= 1
    # A point and its mirror land on the same output position.
    point = np.array([[33.0, 21.0]])
    mirrored_point = np.array([[image.shape[1] - 1 - 33.0, 21.0]])
    np.testing.assert_allclose(
        affine_points(point, mirrored_affine(matrix, image.shape[1])), affine_points(mirrored_point, matrix)
    )


def test_box_gets_input_aspect_and_padding():
    center, size = box_to_center_size([10, 20, 30, 100], aspect_ratio=0.75, padding=1.25)
    assert center == [25.0, 70.0]
    assert size == pytest.approx([75 * 1.25, 100 * 1.25])


def test_heatmap_argmax_lands_on_the_keypoint():
    keypoints = np.array([[5.3, 7.8, 2], [20.0, 1.0, 1], [3.0, 3.0, 0], [80.0, 80.0, 2]])
    maps, weight = gaussian_heatmaps(keypoints, (24, 32), sigma=2.0)
    assert maps.shape == (4, 32, 24)
    for k in (0, 1):
        y, x = np.unravel_index(maps[k].argmax(), maps[k].shape)
        assert (x, y) == (round(keypoints[k, 0]), round(keypoints[k, 1]))
    # Not labelled, or far outside the map: no target and no weight.
    np.testing.assert_array_equal(weight, [1, 1, 0, 0])
    assert maps[2].max() == 0 and maps[3].max() == 0


def test_joint_weights_scale_target_weight():
    keypoints = np.array([[5.0, 5.0, 2], [6.0, 6.0, 2]])
    _, weight = gaussian_heatmaps(keypoints, (24, 32), 2.0, joint_weights=np.array([1.0, 1.5]))
    np.testing.assert_allclose(weight, [1.0, 1.5])


def test_per_keypoint_sigmas_set_each_gaussians_width():
    keypoints = np.array([[8.0, 10.0, 2], [8.0, 10.0, 2]])
    maps, _ = gaussian_heatmaps(keypoints, (24, 32), np.array([1.0, 2.5]))
    for k, sigma in enumerate((1.0, 2.5)):
        # One pixel off the peak a unit Gaussian reads exp(-1 / (2 sigma^2)).
        assert maps[k, 10, 9] == pytest.approx(np.exp(-1.0 / (2.0 * sigma**2)), rel=1e-6)
    single, _ = gaussian_heatmaps(keypoints[:1], (24, 32), 1.0)
    np.testing.assert_array_equal(maps[0], single[0])


def test_keypoint_sigmas_resolve_parts_and_names():
    spec = load_keypoint_spec("coco")
    sigmas = keypoint_sigmas(spec, 1.5, {"head": 1.25, "nose": 1.0, "lower_limb": 1.75})
    assert sigmas[spec.index("nose")] == 1.0  # the keypoint's own name wins over its part
    assert sigmas[spec.index("left_eye")] == 1.25
    assert sigmas[spec.index("left_wrist")] == 1.5
    assert sigmas[spec.index("right_ankle")] == 1.75
    np.testing.assert_array_equal(keypoint_sigmas(spec, 2.0, {}), np.full(17, 2.0))


def test_keypoint_sigmas_reject_unknown_and_conflicting_names():
    spec = load_keypoint_spec("coco")
    with pytest.raises(ValueError, match="sample.keypoint_sigmas: 'hand'.*neither a keypoint nor a part"):
        keypoint_sigmas(spec, 1.5, {"hand": 1.0})
    # head_shoulder (5 and 8 parts) and upper_limb (3 parts) both hold the shoulders.
    with pytest.raises(ValueError, match="left_shoulder"):
        keypoint_sigmas(spec, 1.5, {"head_shoulder": 1.0, "upper_limb": 2.0})
    with pytest.raises(ValueError, match="must be > 0"):
        keypoint_sigmas(spec, 1.5, {"nose": 0.0})


def test_half_body_crop_covers_the_chosen_half():
    spec = load_keypoint_spec("coco")
    keypoints = np.zeros((17, 3))
    keypoints[:, 0] = np.linspace(100, 140, 17)
    keypoints[:, 1] = np.linspace(50, 250, 17)
    keypoints[:, 2] = 2
    # rng(0)'s normal draw is 0.126 (< 0.5: the upper body, joints 0-10), rng(3)'s 2.04 (the
    # lower, 11-16). Upper: x 100..125, y 50..175; lower: x 127.5..140, y 187.5..250. The crop
    # keeps the joints' height, widens to 3:4 and pads by 1.5.
    center, size = half_body_crop(keypoints, spec.upper_body, spec.lower_body, 0.75, np.random.default_rng(0))
    np.testing.assert_allclose(center, [112.5, 112.5])
    np.testing.assert_allclose(size, [125 * 0.75 * 1.5, 125 * 1.5])
    center, size = half_body_crop(keypoints, spec.upper_body, spec.lower_body, 0.75, np.random.default_rng(3))
    np.testing.assert_allclose(center, [133.75, 218.75])
    np.testing.assert_allclose(size, [62.5 * 0.75 * 1.5, 62.5 * 1.5])
    # HRNet's odds: the upper body in P(N(0, 1) < 0.5) = 69% of draws
    rng = np.random.default_rng(1)
    uppers = sum(half_body_crop(keypoints, spec.upper_body, spec.lower_body, 0.75, rng)[0][1] < 150 for _ in range(4000))
    assert abs(uppers / 4000 - 0.691) < 0.02
    # two visible joints in each half: HRNet falls back to the upper pair, whatever the draw
    two = keypoints.copy()
    two[:, 2] = 0
    two[[5, 6, 15, 16], 2] = 2
    for seed in (0, 3):
        center, _ = half_body_crop(two, spec.upper_body, spec.lower_body, 0.75, np.random.default_rng(seed))
        np.testing.assert_allclose(center, two[[5, 6], :2].mean(axis=0))
    # joints on one spot span nothing to crop
    same = keypoints.copy()
    same[:, :2] = 60.0
    assert half_body_crop(same, spec.upper_body, spec.lower_body, 0.75, np.random.default_rng(0)) is None


def test_augmentation_respects_its_bounds_and_is_seeded():
    params = AugmentationParams(scale_factor=0.3, rotation_factor=40, rotation_prob=1.0)
    keypoints = np.column_stack([np.full((17, 2), 50.0), np.full(17, 2.0)])
    draws = [
        sample_augmentation(keypoints, [50, 50], [90, 120], params, (0,), (1,), 0.75, np.random.default_rng(s))
        for s in range(200)
    ]
    ratios = np.array([d.size[1] / 120 for d in draws])
    assert ratios.min() >= 0.7 - 1e-9 and ratios.max() <= 1.3 + 1e-9
    assert max(abs(d.rotation) for d in draws) <= 80
    assert any(d.flipped for d in draws) and not all(d.flipped for d in draws)
    again = sample_augmentation(keypoints, [50, 50], [90, 120], params, (0,), (1,), 0.75, np.random.default_rng(7))
    np.testing.assert_array_equal(again.size, draws[7].size)
    assert (again.rotation, again.flipped) == (draws[7].rotation, draws[7].flipped)
