import numpy as np
import pytest
import torch

from pnfs_pipeline.config import EvaluateParams, ParameterError, SampleParams, parse_params
from pnfs_pipeline.data.dataset import IMAGENET_MEAN, IMAGENET_STD, TopDownDataset
from pnfs_pipeline.data.records import BadInputError
from pnfs_pipeline.data.targets import gaussian_heatmaps
from pnfs_pipeline.data.transforms import affine_points, crop_affine
from pnfs_pipeline.evaluation.coco_eval import (
    coco_results,
    evaluate_coco,
    oks_matrix,
    oks_nms,
    soft_oks_nms,
)
from pnfs_pipeline.evaluation.decode import (
    argmax_coordinates,
    crop_scale_to_reference,
    dark_refine,
    decode_heatmaps,
    exact_flip_shift,
    flip_back,
    heatmap_to_image,
    quarter_offset,
)
from pnfs_pipeline.evaluation.images import image_samples
from pnfs_pipeline.evaluation.pckh import pckh, pckh_table
from pnfs_pipeline.evaluation.predict import flip_shift_pixels, predict_dataset, predict_heatmaps
from pnfs_pipeline.keypoints import load_keypoint_spec

COCO = load_keypoint_spec("coco")
MPII = load_keypoint_spec("mpii")


@pytest.mark.parametrize("method", ["argmax", "dark"])
def test_decoding_recovers_sub_pixel_keypoints(method):
    rng = np.random.default_rng(0)
    truth = np.column_stack([rng.uniform(4, 20, 17), rng.uniform(4, 28, 17), np.full(17, 2.0)])
    maps, _ = gaussian_heatmaps(truth, (24, 32), sigma=2.0)
    coords, confidence = decode_heatmaps(maps[None], method)
    error = np.abs(coords[0] - truth[:, :2]).max()
    assert error <= (0.25 if method == "argmax" else 0.05) + 1e-9, error
    assert np.all(confidence > 0.9)


@pytest.mark.parametrize("kernel", [1, 3, 5, 11])
def test_dark_recovers_sub_pixel_keypoints_with_any_smoothing_window(kernel):
    rng = np.random.default_rng(1)
    truth = np.column_stack([rng.uniform(5, 13, 17), rng.uniform(5, 19, 17), np.full(17, 2.0)])
    maps, _ = gaussian_heatmaps(truth, (18, 24), sigma=2.25)
    coords, _ = decode_heatmaps(maps[None], "dark", dark_kernel=kernel)
    assert np.abs(coords[0] - truth[:, :2]).max() <= 0.05


def test_the_quarter_pixel_shift_follows_the_reference_code_at_the_border():
    # HRNet's / the original's get_final_preds: only 1 < x < W-1 and 1 < y < H-1 move, both axes.
    maps = np.zeros((1, 3, 18, 24))
    for joint, (x, y) in enumerate([(1, 10), (8, 0), (8, 5)]):
        maps[0, joint, y, x] = 1.0
        maps[0, joint, y, x + 1] = maps[0, joint, y + 1, x] = 0.5  # right and lower neighbours higher
    coords, _ = decode_heatmaps(maps, "argmax")
    np.testing.assert_array_equal(coords[0], [[1.0, 10.0], [8.0, 0.0], [8.25, 5.25]])


def test_dark_falls_back_to_the_quarter_pixel_rule_where_its_step_cannot_be_taken():
    # Peaks on the first / second column: too close to the border for the 5-point derivatives.
    truth = np.array([[0.2, 10.2, 2.0], [1.2, 6.6, 2.0]])
    maps, _ = gaussian_heatmaps(truth, (18, 24), sigma=2.25)
    dark, _ = decode_heatmaps(maps[None], "dark")
    argmax, _ = decode_heatmaps(maps[None], "argmax")
    np.testing.assert_array_equal(dark[0], argmax[0])
    np.testing.assert_array_equal(dark[0], [[0.0, 10.0], [1.0, 7.0]])  # on the peak's pixel, as the reference


def _dark_one_keypoint_at_a_time(heatmaps, coords, kernel):
    """DARK as written for one heatmap at a time (cv2's blur, numpy's solve): the reference the
    batched decoder must match."""
    import cv2

    n, k, h, w = heatmaps.shape
    refined = quarter_offset(heatmaps, coords)
    for b in range(n):
        for j in range(k):
            peak = heatmaps[b, j].max()
            x, y = int(coords[b, j, 0]), int(coords[b, j, 1])
            if peak <= 0 or not (1 < x < w - 2 and 1 < y < h - 2):
                continue
            smoothed = heatmaps[b, j].astype(np.float64)
            if kernel > 1:
                smoothed = cv2.GaussianBlur(smoothed, (kernel, kernel), 0, borderType=cv2.BORDER_CONSTANT)
                smoothed *= peak / max(smoothed.max(), 1e-12)
            log = np.log(np.maximum(smoothed, 1e-10))
            dx, dy = 0.5 * (log[y, x + 1] - log[y, x - 1]), 0.5 * (log[y + 1, x] - log[y - 1, x])
            dxx = 0.25 * (log[y, x + 2] - 2 * log[y, x] + log[y, x - 2])
            dyy = 0.25 * (log[y + 2, x] - 2 * log[y, x] + log[y - 2, x])
            dxy = 0.25 * (log[y + 1, x + 1] - log[y - 1, x + 1] - log[y + 1, x - 1] + log[y - 1, x - 1])
            hessian = np.array([[dxx, dxy], [dxy, dyy]])
            if abs(np.linalg.det(hessian)) < 1e-12:
                continue
            step = -np.linalg.solve(hessian, np.array([dx, dy]))
            if np.all(np.abs(step) <= 1.0):
                refined[b, j] = coords[b, j] + step
    return refined


@pytest.mark.parametrize("kernel", [1, 3, 5, 11])
@pytest.mark.parametrize("size", [(18, 24), (48, 64)])
def test_batched_dark_equals_dark_one_keypoint_at_a_time(kernel, size):
    rng = np.random.default_rng(kernel)
    width, height = size
    maps = []
    for _ in range(6):
        truth = np.column_stack([rng.uniform(-1, width, 17), rng.uniform(-1, height, 17), np.full(17, 2.0)])
        person, _ = gaussian_heatmaps(truth, (width, height), sigma=rng.uniform(1.0, 2.5))
        maps.append(person + rng.normal(0, 0.02, person.shape))  # a network's heatmaps are not clean
    maps = np.stack(maps)
    maps[0, 3] = 0.0  # nothing found
    coords, _ = argmax_coordinates(maps)
    expected = _dark_one_keypoint_at_a_time(maps, coords, kernel)
    got = dark_refine(maps, coords, kernel)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    # the maps of a channels_last network (predict_dataset runs CPU networks so), as numpy sees them
    channels_last = torch.from_numpy(maps).contiguous(memory_format=torch.channels_last).numpy()
    assert not channels_last.flags.c_contiguous
    np.testing.assert_allclose(dark_refine(channels_last, coords, kernel), expected, rtol=0, atol=1e-9)
    moved = np.abs(got - quarter_offset(maps, coords)).max(axis=-1) > 1e-6
    assert 0 < moved.sum() < moved.size  # DARK steps taken, and fallbacks to the quarter pixel


def test_dark_rejects_an_even_smoothing_window():
    with pytest.raises(ValueError, match="odd"):
        decode_heatmaps(np.zeros((1, 1, 8, 8)), "dark", dark_kernel=4)


def test_heatmap_coordinates_map_back_through_the_crop():
    center, size = np.array([140.0, 90.0]), np.array([96.0, 128.0])
    matrix = crop_affine(center, size, 0.0, (48, 64))
    image_points = np.array([[130.0, 70.0], [150.5, 120.25]])
    heatmap_points = affine_points(image_points, matrix) / 4.0
    back = heatmap_to_image(heatmap_points[None], center[None], size[None], (48, 64), (12, 16))
    np.testing.assert_allclose(back[0], image_points, atol=1e-9)


def test_flip_back_swaps_mirrors_and_shifts():
    permutation = COCO.flip_permutation()
    heatmaps = torch.zeros(1, 17, 8, 6)
    heatmaps[0, 1, 3, 1] = 1.0  # left eye, at x = 1
    back = flip_back(heatmaps, permutation)
    # Mirrored to x = 6 - 1 - 1 = 4, moved to the right eye's channel, shifted one pixel to x = 5.
    assert back[0, 2, 3, 5] == 1.0 and back[0, 1].sum() == 0


@pytest.mark.parametrize("input_width, heatmap_width", [(72, 18), (192, 48), (96, 48)])
def test_exact_flip_shift_puts_the_flipped_prediction_where_the_keypoint_is(input_width, heatmap_width):
    """A net that predicts each keypoint exactly, run on the mirrored input, flipped back: the
    heatmap's centre of mass returns to the keypoint; the reference one-pixel shift overshoots."""
    stride = input_width / heatmap_width
    x_input = 31.3  # a keypoint in input pixels
    mirrored_x = input_width - 1 - x_input
    keypoints = np.zeros((17, 3))
    keypoints[:, 1] = 5.0
    keypoints[2] = [mirrored_x / stride, 5.0, 2]  # the left eye appears as the right eye when mirrored
    heatmaps, _ = gaussian_heatmaps(keypoints, (heatmap_width, 12), sigma=1.0)
    permutation = COCO.flip_permutation()
    columns = torch.arange(heatmap_width, dtype=torch.float64)

    def centre_of_mass(shift: float) -> float:
        back = flip_back(torch.from_numpy(heatmaps)[None].double(), permutation, shift)[0, 1]
        return float((back.sum(0) * columns).sum() / back.sum())

    exact = exact_flip_shift(input_width, heatmap_width)
    assert exact == pytest.approx(1 - 1 / stride)
    assert centre_of_mass(exact) == pytest.approx(x_input / stride, abs=1e-6)
    assert centre_of_mass(1.0) - x_input / stride == pytest.approx(1 / stride, abs=1e-6)
    with pytest.raises(ValueError, match="flip shift"):
        flip_back(torch.from_numpy(heatmaps)[None], permutation, 1.5)
    # the parameter's three choices: exact, HRNet's pixel, the original PNFS code's plain mirror
    chosen = {name: flip_shift_pixels(name, input_width, heatmap_width) for name in ("exact", "reference", "none")}
    assert chosen == {"exact": exact, "reference": 1.0, "none": 0.0}
    assert x_input / stride - centre_of_mass(chosen["none"]) == pytest.approx(1 - 1 / stride, abs=1e-6)
    with pytest.raises(ValueError, match=r"flip_shift must be one of \['exact', 'reference', 'none'\], got 'half'"):
        flip_shift_pixels("half", input_width, heatmap_width)


def test_flip_test_of_a_symmetric_input_is_symmetric():
    """A mirror-equivariant model on a mirror-symmetric input: the flip-test output is symmetric."""
    permutation = COCO.flip_permutation()
    torch.manual_seed(0)
    kernel = torch.randn(17, 3, 3, 3)
    kernel = kernel + kernel.flip(-1)  # symmetric in x: convolution commutes with mirroring
    kernel = 0.5 * (kernel + kernel[torch.as_tensor(permutation)])  # left/right channels alike
    conv = torch.nn.Conv2d(3, 17, 3, padding=1, bias=False)
    conv.weight.data = kernel
    image = torch.rand(1, 3, 16, 12)
    image = image + image.flip(-1)
    averaged = predict_heatmaps(conv.eval(), image, permutation)
    # Without the one-pixel shift the average is exactly symmetric under mirror + pair swap.
    plain = 0.5 * (conv(image) + flip_back(conv(image.flip(-1)), permutation, shift=0.0))
    torch.testing.assert_close(plain, flip_back(plain, permutation, shift=0.0))
    # With the reference code's shift, columns 1.. of the flipped branch are the mirror, shifted.
    flipped_branch = 2 * averaged - conv(image)
    torch.testing.assert_close(flipped_branch[..., 1:], plain[..., :-1] * 2 - conv(image)[..., :-1])


class _BrightnessAtStride(torch.nn.Module):
    """A "pose network" whose every heatmap is the input's red channel sampled at stride 4, with
    black at 0: a bright blob in the image is a keypoint where the blob is, in any crop."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        black = -float(IMAGENET_MEAN[0] / IMAGENET_STD[0])
        return (images[:, :1, ::4, ::4] - black).clamp_min(0.0).expand(-1, 17, -1, -1).contiguous()


@pytest.mark.parametrize("crop_scales", [(1.0,), (0.8,), (1.25,), (1.0, 0.9, 0.8), (0.9, 1.1)])
def test_multi_scale_test_puts_a_keypoint_where_it_is_in_the_image(crop_scales):
    """Crops at several multiples of the box see the same blob at different places of their
    heatmaps; resampled into the box's frame they agree, and it decodes to the blob's image point.
    A blob 25 px off the box centre: mapping the scales the wrong way round would miss it by ~9 px."""
    blob = np.array([104.3, 57.6])
    ys, xs = np.mgrid[0:160, 0:180]
    brightness = np.exp(-((xs - blob[0]) ** 2 + (ys - blob[1]) ** 2) / (2 * 6.0**2))
    image = np.repeat((brightness * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    sample = SampleParams(input_size=(48, 64), heatmap_size=(12, 16), sigma=1.0)
    boxes = [{"file_name": "a.png", "bbox": [50.0, 20.0, 70.0, 100.0], "score": 1.0}]
    index = image_samples({"a.png": image}, boxes, COCO, sample.aspect_ratio, sample.box_padding)
    dataset = TopDownDataset(index, sample, None, images={"a.png": image})
    predictions = predict_dataset(_BrightnessAtStride(), dataset, decode="dark", crop_scales=crop_scales)
    keypoints = predictions["keypoints"][0]
    np.testing.assert_allclose(keypoints[:, :2], np.broadcast_to(blob, (17, 2)), atol=0.6)
    assert np.all(keypoints[:, 2] > 0.9)
    box_area = np.prod(index["samples"][0]["size"])
    np.testing.assert_allclose(predictions["areas"], [box_area], rtol=1e-6)


def test_prediction_decodes_each_image_once_and_returns_index_order(tmp_path, monkeypatch):
    """Crops of two images interleaved in the index (a b a b a): read grouped by image, each image
    decoded once for all its crops and scales, and the outputs come back in the index's order."""
    import cv2

    import pnfs_pipeline.data.dataset as dataset_module

    ys, xs = np.mgrid[0:160, 0:180]
    blobs = {"a.png": np.array([104.3, 57.6]), "b.png": np.array([70.2, 90.4])}
    for name, blob in blobs.items():
        brightness = np.exp(-((xs - blob[0]) ** 2 + (ys - blob[1]) ** 2) / (2 * 6.0**2))
        cv2.imwrite(str(tmp_path / name), np.repeat((brightness * 255).round().astype(np.uint8)[..., None], 3, axis=-1))
    sample = SampleParams(input_size=(48, 64), heatmap_size=(12, 16), sigma=1.0)
    centred = {name: [blob[0] - 35.0, blob[1] - 50.0, 70.0, 100.0] for name, blob in blobs.items()}
    names = ["a.png", "b.png", "a.png", "b.png", "a.png"]
    boxes = [{"file_name": name, "bbox": centred[name], "score": 0.5 + 0.1 * k} for k, name in enumerate(names)]
    images = {name: np.zeros((160, 180, 3), np.uint8) for name in blobs}
    index = image_samples(images, boxes, COCO, sample.aspect_ratio, sample.box_padding)
    assert [record["image"] for record in index["samples"]] == [box["file_name"] for box in boxes]
    dataset = TopDownDataset(index, sample, None, image_root=tmp_path)
    reads = []
    original_read = dataset_module.read_rgb_image
    monkeypatch.setattr(dataset_module, "read_rgb_image", lambda path: reads.append(path.name) or original_read(path))
    predictions = predict_dataset(_BrightnessAtStride(), dataset, batch_size=2, decode="dark", crop_scales=(1.0, 0.9))
    assert sorted(reads) == ["a.png", "b.png"]
    np.testing.assert_array_equal(predictions["indices"], np.arange(5))
    np.testing.assert_allclose(predictions["scores"], [0.5, 0.6, 0.7, 0.8, 0.9], rtol=1e-6)
    for keypoints, box in zip(predictions["keypoints"], boxes, strict=True):
        np.testing.assert_allclose(keypoints[:, :2], np.broadcast_to(blobs[box["file_name"]], (17, 2)), atol=0.6)


def test_decoded_images_decode_on_demand_and_keep_only_the_last_few():
    from pnfs_pipeline.evaluation.images import DecodedImages

    decoded = []

    def loader(name):
        return lambda: decoded.append(name) or np.full((4, 3, 3), len(decoded), np.uint8)

    images = DecodedImages({name: loader(name) for name in "abcde"}, keep=2)
    assert len(images) == 5 and list(images) == list("abcde") and "c" in images and "z" not in images
    assert decoded == []  # membership and listing decode nothing
    images["a"], images["b"], images["a"], images["c"]  # a is recent again: b is dropped, not a
    assert decoded == ["a", "b", "c"]
    images["a"], images["b"]
    assert decoded == ["a", "b", "c", "b"]


def test_no_people_to_predict_gives_empty_results_not_a_crash(caplog):
    """A boxes file of ``[]`` (a detector that found nobody): empty, correctly shaped outputs."""
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    sample = SampleParams(input_size=(48, 64), heatmap_size=(12, 16), sigma=1.0)
    with caplog.at_level("WARNING"):
        index = image_samples({"a.png": image}, [], COCO, sample.aspect_ratio, sample.box_padding)
    assert "no box for 1 image(s), which get no keypoints: a.png" in caplog.text
    dataset = TopDownDataset(index, sample, None, images={"a.png": image})
    predictions = predict_dataset(_BrightnessAtStride(), dataset)
    assert predictions["keypoints"].shape == (0, 17, 3) and predictions["scores"].shape == (0,)
    results = coco_results(
        predictions["keypoints"], predictions["scores"], predictions["areas"], predictions["image_ids"], np.asarray(COCO.sigmas)
    )
    assert results == []


@pytest.mark.parametrize(
    "box, message",
    [
        ({"file_name": ["a.png"], "bbox": [0, 0, 5, 5]}, "file_name .* is not among the images"),
        ({"file_name": "b.png", "bbox": [0, 0, 5, 5]}, "file_name .* is not among the images"),
        ({"file_name": "a.png", "bbox": [0, 0, 0, 5]}, "bbox must be .* with positive size"),
    ],
)
def test_bad_boxes_name_the_file_and_record(box, message):
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    with pytest.raises(BadInputError, match=rf"boxes.json \[record 1\]: {message}"):
        image_samples({"a.png": image}, [{"file_name": "a.png", "bbox": [1, 1, 9, 9]}, box], COCO, 0.75, 1.25, "boxes.json")


def test_a_boxes_file_that_is_not_a_list_says_so():
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    boxes = {"a.png": [{"bbox": [1, 1, 9, 9]}]}  # keyed by image: a plausible slip
    with pytest.raises(BadInputError, match="boxes.json: the top level must be a list of boxes, found a dict"):
        image_samples({"a.png": image}, boxes, COCO, 0.75, 1.25, "boxes.json")


def test_crop_scale_resampling_reports_where_a_zoomed_crop_covers_the_box():
    heatmaps = torch.rand(2, 3, 24, 18)
    same, full = crop_scale_to_reference(heatmaps, 1.0)
    assert same is heatmaps and torch.all(full == 1)
    _, zoomed_in = crop_scale_to_reference(heatmaps, 0.8)  # sees only the middle 80% of the box
    assert zoomed_in.shape == (2, 1, 24, 18)
    assert torch.all(zoomed_in[:, :, 10:14, 7:11] == 1) and torch.all(zoomed_in[:, :, 0, 0] == 0)
    _, zoomed_out = crop_scale_to_reference(heatmaps, 1.25)
    assert torch.allclose(zoomed_out, torch.ones_like(zoomed_out))
    with pytest.raises(ValueError, match="positive"):
        crop_scale_to_reference(heatmaps, 0.0)


@pytest.mark.parametrize("crop_scales, message", [([], "at least one"), ([1.0, 0.1], r"\[0.25, 4\]"), ([1.0, 1.0], "repeat")])
def test_bad_crop_scales_are_refused_by_name(crop_scales, message):
    with pytest.raises(ParameterError, match=f"crop_scales.*{message}|{message}.*crop_scales"):
        parse_params(EvaluateParams, {"crop_scales": crop_scales}, "evaluate")


def _brute_force_oks_nms(keypoints, scores, areas, sigmas, threshold):
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        survivors = []
        for j in order:
            d2 = ((keypoints[i, :, :2] - keypoints[j, :, :2]) ** 2).sum(-1)
            e = d2 / (2 * np.asarray(sigmas)) ** 2 / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            if np.mean(np.exp(-e)) <= threshold:
                survivors.append(j)
        order = survivors
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_oks_nms_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 100, (6, 17, 2))
    keypoints = np.concatenate([base[rng.integers(0, 6, 40)] + rng.normal(0, 2, (40, 17, 2)), rng.uniform(0, 1, (40, 17, 1))], -1)
    # Areas large enough that repeated detections of a person overlap beyond the threshold.
    scores, areas = rng.uniform(0, 1, 40), rng.uniform(5000, 30000, 40)
    sigmas = np.asarray(COCO.sigmas)
    kept = oks_nms(keypoints, scores, areas, sigmas, 0.9)
    assert kept == _brute_force_oks_nms(keypoints, scores, areas, sigmas, 0.9)
    assert 6 <= len(kept) < 40  # some suppressed, at least one per person
    oks = oks_matrix(keypoints, areas, sigmas)
    np.testing.assert_allclose(np.diag(oks), 1.0)
    _, decayed = soft_oks_nms(keypoints, scores, areas, sigmas, 0.9)
    best = int(np.argmax(scores))
    assert decayed[best] == scores[best]
    overlapping = [j for j in range(40) if j != best and oks[best, j] > 0.9]
    assert overlapping  # the top detection's first round decays at least these, by its Gaussian
    for j in overlapping:
        assert decayed[j] <= scores[j] * np.exp(-(oks[best, j] ** 2) / 0.3) + 1e-12
    np.fill_diagonal(oks, 0.0)
    alone = oks.max(axis=0) <= 0.9
    np.testing.assert_array_equal(decayed[alone], scores[alone])  # overlapping nothing: untouched


def test_oks_matrix_equals_the_reference_formula_bit_for_bit_in_blocks(monkeypatch):
    import pnfs_pipeline.evaluation.coco_eval as coco_eval

    rng = np.random.default_rng(7)
    keypoints = rng.uniform(0, 300, (23, 17, 3))
    areas, sigmas = rng.uniform(500, 20000, 23), np.asarray(COCO.sigmas)
    expected = np.empty((23, 23))
    for i in range(23):
        for j in range(23):
            d2 = ((keypoints[i, :, :2] - keypoints[j, :, :2]) ** 2).sum(-1)
            e = d2 / (2 * sigmas) ** 2 / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            expected[i, j] = np.mean(np.exp(-e))
    np.testing.assert_array_equal(oks_matrix(keypoints, areas, sigmas), expected)
    monkeypatch.setattr(coco_eval, "_OKS_BLOCK_TERMS", 17 * 23 * 4)  # blocks of 4 rows, the last of 3
    np.testing.assert_array_equal(oks_matrix(keypoints, areas, sigmas), expected)
    assert oks_matrix(keypoints[:0], areas[:0], sigmas).shape == (0, 0)


def _coco_ground_truth():
    rng = np.random.default_rng(3)
    images, annotations = [], []
    for image_id in range(1, 6):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 200, "height": 200})
        for person in range(2):
            points = np.column_stack([rng.uniform(20, 180, 17), rng.uniform(20, 180, 17), rng.integers(1, 3, 17)])
            annotations.append({
                "id": image_id * 10 + person, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "keypoints": points.reshape(-1).tolist(), "num_keypoints": 17, "area": 4000.0,
                "bbox": [10.0, 10.0, 100.0, 100.0],
            })
    return {"format": "coco", "images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}


def test_ground_truth_as_predictions_scores_ap_one():
    gt = _coco_ground_truth()
    keypoints = np.array([np.asarray(a["keypoints"], float).reshape(17, 3) for a in gt["annotations"]])
    keypoints[..., 2] = 0.9  # confidences
    results = coco_results(
        keypoints, np.ones(len(keypoints)), np.full(len(keypoints), 4000.0),
        np.array([a["image_id"] for a in gt["annotations"]]), np.asarray(COCO.sigmas),
    )
    stats = evaluate_coco(gt, results, np.asarray(COCO.sigmas))
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert evaluate_coco(gt, results, np.asarray(COCO.sigmas), keypoint_subset=[9, 10])["AP"] == pytest.approx(1.0)
    # the results (saved as val_keypoint_results.json) keep the COCO results format: pycocotools
    # adds bbox, area and id to the records it is given
    assert {frozenset(r) for r in results} == {frozenset({"image_id", "category_id", "keypoints", "score"})}
    shifted = [dict(r, keypoints=(np.asarray(r["keypoints"]) + np.tile([15.0, 0.0, 0.0], 17)).tolist()) for r in results]
    assert evaluate_coco(gt, shifted, np.asarray(COCO.sigmas))["AP"] < 0.5


def test_pckh_is_100_for_ground_truth_and_follows_known_offsets():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0, 200, (10, 16, 2))
    visible = np.ones((10, 16), dtype=bool)
    head_boxes = np.tile([0.0, 0.0, 30.0, 40.0], (10, 1))  # diagonal 50 -> head size 30
    table = pckh_table(truth, truth, visible, head_boxes, MPII.pckh_groups, MPII.pckh_mean_excludes)
    assert table["Mean"] == 100.0 and table["Head"] == 100.0 and table["Mean@0.1"] == 100.0
    predictions = truth.copy()
    predictions[:5, :, 0] += 14.0  # within 0.5 x 30 = 15
    predictions[5:, :, 0] += 16.0  # beyond
    per_joint, counts = pckh(predictions, truth, visible, head_boxes, 0.5)
    np.testing.assert_allclose(per_joint, 50.0)
    assert counts.tolist() == [10] * 16
    invisible = visible.copy()
    invisible[5:] = False  # only the close half is labelled
    assert pckh(predictions, truth, invisible, head_boxes, 0.5)[0].tolist() == [100.0] * 16
    # 3.2 px off at head size 30: beyond 0.10 (3.0 px), within HRNet's "Mean@0.1", which is at 0.11
    near = pckh_table(truth + [3.2, 0.0], truth, visible, head_boxes, MPII.pckh_groups, MPII.pckh_mean_excludes)
    assert near["Mean@0.1"] == 0.0 and near["Mean@0.11"] == 100.0
