"""The top-down torch ``Dataset`` over a persisted sample index, and its ``DataLoader`` factory.

A *sample index* is a JSON-able dict: ``{"dataset", "image_root", "keypoint_spec", "samples"}``
where ``samples`` are :class:`~pnfs_pipeline.data.records.PersonRecord` dicts. It is what the
``prepare`` pipeline persists, so training and evaluation can run without re-reading annotations.
"""

from __future__ import annotations

import logging
import operator
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from pnfs_pipeline.config import AugmentationParams, SampleParams
from pnfs_pipeline.data.targets import gaussian_heatmaps, keypoint_sigmas
from pnfs_pipeline.data.transforms import (
    CropParams,
    affine_points,
    crop_affine,
    flip_keypoints,
    mirrored_affine,
    sample_augmentation,
    warp_image,
)
from pnfs_pipeline.keypoints import KeypointSpec, keypoint_spec_from_dict

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class ImageReadError(OSError):
    """An image named by the sample index cannot be read; the message names the file."""


def read_rgb_image(path: Path) -> np.ndarray:
    """The stored pixels as RGB. EXIF orientation is not applied: COCO-format annotations (and
    the validation's size check) refer to the pixels as stored, as in the reference code."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageReadError(f"{path}: image missing or corrupt")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_NORMALIZE_SCALE = torch.from_numpy(1.0 / (255.0 * IMAGENET_STD)).view(3, 1, 1)
_NORMALIZE_SHIFT = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD).view(3, 1, 1)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float tensor with ImageNet statistics."""
    # One converting copy into planar float and two in-place passes: 4x faster per training
    # sample than the float64-promoting numpy expression (17 vs 76 us at 96x72, measured).
    planar = torch.empty((3, *image.shape[:2]), dtype=torch.float32)
    planar.copy_(torch.from_numpy(image).permute(2, 0, 1))
    return planar.mul_(_NORMALIZE_SCALE).add_(_NORMALIZE_SHIFT)


def denormalize_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize_image`, for figures."""
    image = tensor.detach().cpu().float().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class PackedRecords(Sequence):
    """Sample records pickled into one byte array, read back one at a time.

    A loader's worker processes are forked with the dataset, and a Python list of dicts is not
    shared for long: reading a record touches its reference counts, which copies the page it
    lies on, so each worker ended up with a private copy of the whole list (COCO train2017's
    148k records: 565 MB a worker, measured). Two numpy arrays have no such counts and stay shared.
    """

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        pickled = [pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL) for record in records]
        self._offsets = np.zeros(len(pickled) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in pickled], out=self._offsets[1:])
        self._bytes = np.frombuffer(b"".join(pickled), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(index, slice) or not hasattr(index, "__index__"):
            raise TypeError(f"records are read one at a time, by integer index, not {type(index).__name__}")
        asked = operator.index(index)  # a Python int: numpy's small integers would overflow below
        position = asked + len(self) if asked < 0 else asked
        if not 0 <= position < len(self):
            raise IndexError(f"record {asked} of {len(self)}")
        return pickle.loads(self._bytes[self._offsets[position] : self._offsets[position + 1]].tobytes())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


class RecentImages:
    """The last ``keep`` decoded images, by name."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, name: str, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The image ``name``, decoded by ``decode`` unless it is among the last ``keep``."""
        image = self._images.get(name)
        if image is None:
            image = self._images[name] = decode()
            if len(self._images) > self.keep:
                self._images.popitem(last=False)
        else:
            self._images.move_to_end(name)
        return image


# Decoded images a dataset keeps when it does not cache them all: the crops of one image come
# one after another in evaluation (see images_in_order), so each image is decoded once, not once
# per person (COCO val2017's detection boxes: 21 a image on average).
RECENT_IMAGES = 4
# Images beyond which caching every decoded one is worth a warning (~20 GB at 640x480).
CACHE_WARNING_IMAGES = 20_000


class TopDownDataset(Dataset):
    """Person crops with Gaussian heatmap targets.

    Randomness is drawn from a generator seeded by ``(seed, epoch, index)``, so a sample's
    augmentation does not depend on worker count, worker order or what was drawn before it.
    """

    def __init__(
        self,
        index: dict[str, Any],
        sample: SampleParams,
        augmentation: AugmentationParams | None = None,
        seed: int = 0,
        image_root: str | Path | None = None,
        images: dict[str, np.ndarray] | None = None,
    ) -> None:
        """``images`` (name -> RGB array) serves images already in memory instead of files."""
        self._check_crop_shape(index["samples"], sample, index.get("dataset", "sample index"))
        self.samples = PackedRecords(index["samples"])
        self.images = images
        self.image_root = Path(image_root if image_root is not None else index.get("image_root", "."))
        self.spec: KeypointSpec = keypoint_spec_from_dict(index["keypoint_spec"], source="sample index")
        self.sample = sample
        self.augmentation = augmentation if augmentation is not None and augmentation.enabled else None
        self.seed = seed
        self.epoch = 0
        self._flip_permutation = self.spec.flip_permutation()
        self._sigmas = keypoint_sigmas(self.spec, sample.sigma, sample.keypoint_sigmas)
        self._joint_weights = np.asarray(self.spec.joint_weights) if sample.use_joint_weights else None
        self._decoded: dict[str, np.ndarray] | None = {} if sample.cache_images and images is None else None
        if self._decoded is not None:
            count = len({record["image"] for record in index["samples"]})
            if count > CACHE_WARNING_IMAGES:
                logger.warning(
                    "sample.cache_images keeps every decoded image in memory, in each loader process: %d images of "
                    "%s (COCO train2017 decoded: ~100 GB); set it false for a dataset this size (conf/coco does)",
                    count, index.get("dataset", "the sample index"),
                )
        self._recent = RecentImages(RECENT_IMAGES)

    @staticmethod
    def _check_crop_shape(records: Sequence[dict[str, Any]], sample: SampleParams, name: str) -> None:
        """The crops were sized at prepare time for that run's input shape; the warp scales by the
        crop's width alone, so crops of another shape would cut people off (or add margin)."""
        if not records:
            return
        sizes = np.asarray([record["size"] for record in records], dtype=np.float64)
        ratios = sizes[:, 0] / sizes[:, 1]
        wrong = np.flatnonzero(np.abs(ratios / sample.aspect_ratio - 1.0) > 1e-3)
        if wrong.size:
            first = records[int(wrong[0])]
            width, height = sample.input_size
            raise ValueError(
                f"{name}: {wrong.size} of {len(records)} crops were prepared for another input shape "
                f"(record {first.get('record_id')} of image {first.get('image')}: width / height "
                f"{ratios[wrong[0]]:.4f}), not this network's {width}x{height} ({sample.aspect_ratio:.4f}): "
                "run the prepare pipeline again with this sample.input_size"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def crop_params(
        self, idx: int, keypoints: np.ndarray, image_width: int, record: dict[str, Any] | None = None
    ) -> CropParams:
        record = self.samples[idx] if record is None else record
        center, size = np.asarray(record["center"]), np.asarray(record["size"])
        if self.augmentation is None:
            return CropParams(center=center, size=size, rotation=0.0, flipped=False)
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        crop = sample_augmentation(
            keypoints,
            center,
            size,
            self.augmentation,
            self.spec.upper_body,
            self.spec.lower_body,
            self.sample.aspect_ratio,
            rng,
        )
        if crop.flipped:
            mirrored = crop.center.copy()
            mirrored[0] = image_width - 1 - mirrored[0]
            crop = CropParams(mirrored, crop.size, crop.rotation, True)
        return crop

    def images_in_order(self) -> list[int]:
        """Every sample index, the crops of each image together (images in the order of their
        first crop, crops in index order): the identity where the index already groups them."""
        first_seen: dict[str, int] = {}
        keys = []
        for position, record in enumerate(self.samples):
            keys.append(first_seen.setdefault(record["image"], position))
        return sorted(range(len(keys)), key=lambda i: (keys[i], i))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        record = self.samples[idx]
        if self.images is not None:
            image = self.images[record["image"]]
        elif self._decoded is not None:
            image = self._decoded.get(record["image"])
            if image is None:
                image = self._decoded[record["image"]] = read_rgb_image(self.image_root / record["image"])
        else:
            image = self._recent.get(record["image"], lambda: read_rgb_image(self.image_root / record["image"]))
        original_keypoints = np.asarray(record["keypoints"], dtype=np.float64)
        keypoints = original_keypoints
        crop = self.crop_params(idx, keypoints, image.shape[1], record)
        matrix = crop_affine(crop.center, crop.size, crop.rotation, self.sample.input_size)
        image_matrix = matrix
        if crop.flipped:
            keypoints = flip_keypoints(keypoints, image.shape[1], self._flip_permutation)
            # The mirror goes into the warp instead of copying a flipped image (a quarter of the
            # loader's time): sampling the original at x is sampling the mirrored image at W-1-x.
            image_matrix = mirrored_affine(matrix, image.shape[1])
        crop_image = warp_image(image, image_matrix, self.sample.input_size)

        stride = self.sample.input_size[0] / self.sample.heatmap_size[0]
        input_keypoints = keypoints.copy()
        input_keypoints[:, :2] = affine_points(keypoints[:, :2], matrix)
        heatmaps, target_weight = gaussian_heatmaps(
            input_keypoints / np.array([stride, stride, 1.0]),
            self.sample.heatmap_size,
            self._sigmas,
            self._joint_weights,
        )
        return {
            "image": normalize_image(crop_image),
            "heatmaps": torch.from_numpy(heatmaps),
            "target_weight": torch.from_numpy(target_weight),
            "keypoints": torch.from_numpy(original_keypoints.astype(np.float32)),
            "input_keypoints": torch.from_numpy(input_keypoints.astype(np.float32)),
            # torch.tensor() per field cost ~50 us a sample; 0-d arrays share memory and
            # collate into the same float32 / int64 / bool batches.
            "center": torch.from_numpy(np.asarray(crop.center, dtype=np.float32)),
            "size": torch.from_numpy(np.asarray(crop.size, dtype=np.float32)),
            "rotation": torch.from_numpy(np.array(crop.rotation, dtype=np.float32)),
            "flipped": torch.from_numpy(np.array(bool(crop.flipped))),
            "score": torch.from_numpy(np.array(record["score"], dtype=np.float32)),
            "area": torch.from_numpy(np.array(record["area"], dtype=np.float32)),
            "image_id": torch.from_numpy(np.array(int(record["image_id"]), dtype=np.int64)),
            "index": torch.from_numpy(np.array(idx, dtype=np.int64)),
        }


def train_and_val_datasets(
    train_index: dict[str, Any],
    val_index: dict[str, Any],
    sample: SampleParams,
    augmentation: AugmentationParams,
    seed: int,
) -> tuple[TopDownDataset, TopDownDataset]:
    """The augmented training set and the plain validation set of a training run."""
    return TopDownDataset(train_index, sample, augmentation, seed=seed), TopDownDataset(val_index, sample, None)


def set_dataset_epoch(dataset: Dataset, epoch: int) -> None:
    """The epoch that seeds augmentation, on ``dataset`` or the dataset under a ``Subset``."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if hasattr(base, "set_epoch"):
        base.set_epoch(epoch)


class EpochTaggedSampler(Sampler):
    """Yields ``(epoch, index)`` pairs from ``sampler``.

    A loader's persistent workers hold their own copies of the dataset, made when they started:
    an epoch set on the main process's copy never reaches them. Carried with every index, the
    epoch does, so one loader (and the images its workers have decoded) serves every epoch.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochTaggedDataset(Dataset):
    """Reads the ``(epoch, index)`` pairs of :class:`EpochTaggedSampler`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if epoch != self._epoch:
            set_dataset_epoch(self.dataset, epoch)
            self._epoch = epoch
        return self.dataset[index]


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a distinct, reproducible numpy/random state derived from the loader's seed.
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_data_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: torch.utils.data.Sampler | Sequence[int] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A reproducible ``DataLoader``: shuffling and worker seeds derive from ``seed``.
    ``pin_memory`` for batches bound for a GPU (on a CPU run it would only start CUDA)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        worker_init_fn=_seed_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
