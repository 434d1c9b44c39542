"""The trainer keeps one loader per dataset across epochs, its workers' decoded images with it."""

import pytest
import torch
from torch import nn

from pnfs_pipeline.config import AugmentationParams, SampleParams
from pnfs_pipeline.data.dataset import TopDownDataset
from pnfs_pipeline.engine.trainer import TrainConfig, Trainer
from tests.conftest import coco_sample_indexes

SAMPLE = SampleParams(input_size=(48, 64), heatmap_size=(12, 16), cache_images=True)


@pytest.fixture
def train_index(coco_root):
    return coco_sample_indexes(coco_root, SAMPLE)["train"]


class ImageSums:
    """A loss that records what each step saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[int], list[float]]] = []

    def __call__(self, output: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.seen.append((batch["index"].tolist(), batch["image"].sum(dim=(1, 2, 3)).tolist()))
        return (output - batch["heatmaps"]).pow(2).mean()


def _trainer(index, num_workers: int, loss: ImageSums, after_epoch=None) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 17, 3, stride=4, padding=1))
    augmentation = AugmentationParams(flip=True, rotation_prob=1.0)
    dataset = TopDownDataset(index, SAMPLE, augmentation, seed=5)
    config = TrainConfig(epochs=3, batch_size=2, device="cpu", num_workers=num_workers, val_max_batches=1)
    return Trainer(model, dataset, TopDownDataset(index, SAMPLE), config, loss_fn=loss, on_epoch_end=after_epoch)


def test_workers_see_every_epochs_augmentation_and_keep_their_decoded_images(train_index, coco_root):
    in_process = ImageSums()
    _trainer(train_index, 0, in_process).fit()

    def remove_the_images(epoch, metrics, model):
        if epoch == 0:  # decoded by the workers in epoch 1: epochs 2 and 3 must not read them again
            for path in (coco_root / "images").rglob("*.jpg"):
                path.unlink()

    with_workers = ImageSums()
    _trainer(train_index, 1, with_workers, remove_the_images).fit()

    assert len(with_workers.seen) == len(in_process.seen) == 3 * (len(train_index["samples"]) // 2)
    for (indices, sums), (want_indices, want_sums) in zip(with_workers.seen, in_process.seen, strict=True):
        assert indices == want_indices
        assert sums == pytest.approx(want_sums, rel=1e-6)
    # the augmentation differs between epochs for the same sample
    steps = len(with_workers.seen) // 3
    first = {i: s for step in with_workers.seen[:steps] for i, s in zip(*step, strict=True)}
    second = {i: s for step in with_workers.seen[steps : 2 * steps] for i, s in zip(*step, strict=True)}
    assert any(first[i] != pytest.approx(second[i], rel=1e-6) for i in first.keys() & second.keys())


def test_the_same_loader_serves_every_epoch(train_index):
    trainer = _trainer(train_index, 0, ImageSums())
    first = trainer._loader(trainer.train_dataset, 0, True, 2)
    assert trainer._loader(trainer.train_dataset, 1, True, 2) is first
    assert first.sampler.epoch == 1
    assert trainer._loader(trainer.val_dataset, 0, False, 2) is not first


def test_a_failed_run_ends_its_loader_workers(train_index):
    class Stop(Exception):
        pass

    def stop(epoch, metrics, model):
        raise Stop

    trainer = _trainer(train_index, 1, ImageSums(), stop)
    with pytest.raises(Stop):
        trainer.fit()
    assert trainer._loaders == {}


def test_a_held_out_split_is_scored_with_the_last_trained_epochs_augmentation(train_index, monkeypatch):
    trainer = _trainer(train_index, 0, ImageSums())
    trainer.fit()
    epochs = []
    original = trainer._loader
    monkeypatch.setattr(trainer, "_loader", lambda dataset, epoch, *args, **kwargs: epochs.append(epoch) or original(dataset, epoch, *args, **kwargs))
    trainer.validation_loss(dataset=trainer.train_dataset)
    assert epochs == [2]  # the third epoch's, as random search's candidates were scored before
