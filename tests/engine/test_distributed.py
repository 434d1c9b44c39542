"""DistributedDataParallel on the CPU with gloo: equivalence with one process, and failures."""

import functools

import pytest
import torch
from torch.utils.data import Dataset

from pnfs_pipeline.engine.distributed import DistributedRunError
from pnfs_pipeline.engine.trainer import TrainConfig, TrainingJob, run_training
from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.strategies import StrategyConfig
from pnfs_pipeline.nas.supernet import FabricConfig, HeadConfig, PartSupernet


def tiny_supernet() -> PartSupernet:
    return PartSupernet(
        build_backbone("tiny", width=4),
        {"upper": (0, 1), "lower": (2, 3)},
        4,
        FabricConfig(operators=("zero", "skip_connect", "sep_conv_3x3"), depth=4, cut_layers_num=2, factor=1),
        HeadConfig(vector_in_pixel=False),
    )


class RandomPoses(Dataset):
    def __init__(self, count: int, seed: int = 0, fail_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, 32, 32, generator=g)
        self.maps = torch.rand(count, 4, 8, 8, generator=g)
        self.fail_at = fail_at

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        if self.fail_at is not None and i == self.fail_at and torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            import os

            os._exit(3)  # a worker dying abruptly, as on a lost machine
        return {"image": self.images[i], "heatmaps": self.maps[i], "target_weight": torch.ones(4)}


def _job(nproc: int, strategy: str = "sync", fail_at: int | None = None, count: int = 32) -> TrainingJob:
    return TrainingJob(
        model_builder=functools.partial(tiny_supernet),
        train_dataset=RandomPoses(count, seed=1, fail_at=fail_at),
        val_dataset=RandomPoses(8, seed=2),
        config=TrainConfig(
            epochs=1, batch_size=8, optimizer="sgd", momentum=0.0, lr=0.05, seed=0, device="cpu",
            nproc_per_node=nproc, threads=1,
        ),
        strategy=StrategyConfig(name=strategy, arch_lr=0.05, arch_weight_decay=0.0),
    )


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sync"])
def test_two_workers_match_one_process_with_the_same_global_batch(strategy):
    # 31 samples: one process drops the last 7 after three batches of 8; two workers must too
    # (padding each worker's share to 16 made a fourth batch of repeated samples).
    single = run_training(_job(1, strategy, count=31))
    double = run_training(_job(2, strategy, count=31))
    # Architecture parameters start at zero; compare how far each run moved them. BatchNorm sees
    # 4 samples per worker instead of 8, so the runs agree closely rather than bit for bit:
    # the stated tolerance is 5% of the single-process change.
    one = torch.cat([t.flatten() for part in single.final_state["architecture"].values() for t in part.values()])
    two = torch.cat([t.flatten() for part in double.final_state["architecture"].values() for t in part.values()])
    assert one.norm() > 0
    assert (two - one).norm() <= 0.05 * one.norm(), ((two - one).norm(), one.norm())
    assert [h["epoch"] for h in double.history] == [1]
    # The epoch's figures count every worker's share, not rank 0's half.
    assert double.history[0]["train_images"] == single.history[0]["train_images"] == 24
    assert double.history[0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=0.05)


class PosesFarOffOnRankOne(RandomPoses):
    """Targets 30x larger in the worker of rank 1: its losses dwarf rank 0's."""

    def __getitem__(self, i):
        sample = super().__getitem__(i)
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            sample = {**sample, "heatmaps": sample["heatmaps"] * 30.0}
        return sample


@pytest.mark.slow
def test_the_architecture_loss_counts_every_workers_batches():
    job = _job(2, "darts1")
    job.train_dataset = PosesFarOffOnRankOne(32, seed=1)
    baseline = _job(1, "darts1")
    single = run_training(baseline).history[0]
    double = run_training(job).history[0]
    # rank 0's batches alone would give about the single process's figure; all of them, far more
    assert double["arch_loss"] > 10 * single["arch_loss"]
    assert double["train_loss"] > 10 * single["train_loss"]


def architecture_on_this_rank(job: TrainingJob) -> list[torch.Tensor]:
    """A distributed worker that returns its own copy of the architecture parameters."""
    from pnfs_pipeline.engine.distributed import init_from_env
    from pnfs_pipeline.engine.trainer import _execute

    context = init_from_env("cpu")
    try:
        result = _execute(job, None, context)
    finally:
        torch.distributed.destroy_process_group()
    return [t for part in result.final_state["architecture"].values() for t in part.values()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["darts1", "gumbel"])
def test_architecture_parameters_stay_identical_on_every_rank(strategy):
    from pnfs_pipeline.engine.distributed import launch

    per_rank = launch(2, architecture_on_this_rank, _job(2, strategy), all_ranks=True)
    assert sorted(per_rank) == [0, 1]
    for first, second in zip(per_rank[0], per_rank[1], strict=True):
        assert torch.equal(first, second)
    assert any(t.abs().sum() > 0 for t in per_rank[0])


def tiny_supernet_sharing_the_cores() -> PartSupernet:
    """Built in each worker: fails the run where the workers' threads oversubscribe the CPUs."""
    import os

    threads, workers, cpus = torch.get_num_threads(), int(os.environ["LOCAL_WORLD_SIZE"]), os.cpu_count() or 1
    if threads * workers > max(cpus, workers):
        raise RuntimeError(f"{workers} workers of {threads} threads on {cpus} CPUs")
    return tiny_supernet()


@pytest.mark.slow
def test_launched_workers_share_the_cores_when_threads_are_not_set():
    job = _job(2)
    job.model_builder = tiny_supernet_sharing_the_cores
    job.config = TrainConfig(**{**job.config.__dict__, "threads": None})
    result = run_training(job)
    assert [h["epoch"] for h in result.history] == [1]


@pytest.mark.slow
def test_a_dying_worker_fails_the_run_instead_of_hanging():
    with pytest.raises(DistributedRunError, match=r"rank 1: exit code"):
        run_training(_job(2, fail_at=5))


class NaNImagesOnRankOne(RandomPoses):
    def __getitem__(self, i):
        sample = super().__getitem__(i)
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


def stop_on_this_rank(job: TrainingJob) -> str:
    """The run's own error on this rank (a short collective timeout: a rank left waiting fails the test soon)."""
    from pnfs_pipeline.engine.distributed import init_from_env
    from pnfs_pipeline.engine.trainer import NonFiniteLossError, _execute

    context = init_from_env("cpu", timeout_seconds=60)
    try:
        _execute(job, None, context)
        return "finished"
    except NonFiniteLossError as error:
        return str(error)
    finally:
        torch.distributed.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_stops_every_rank():
    """Raising on the rank that saw it alone left the others in the step's gradient all-reduce:
    across machines, waiting until the collectives' timeout."""
    from pnfs_pipeline.engine.distributed import launch

    job = _job(2)
    job.train_dataset = NaNImagesOnRankOne(32, seed=1)
    messages = launch(2, stop_on_this_rank, job, all_ranks=True)
    assert messages[1].startswith("non-finite loss (nan) at epoch 1, step 1"), messages
    assert messages[0].startswith("non-finite loss on another rank (this rank's: "), messages
    assert "at epoch 1, step 1" in messages[0]


class CountedPoses(RandomPoses):
    """Counts the samples this process reads (validation reads no others here)."""

    read = 0

    def __getitem__(self, i):
        CountedPoses.read += 1
        return super().__getitem__(i)


def validation_on_this_rank(limit: int | None) -> tuple[float, int]:
    from pnfs_pipeline.engine.distributed import init_from_env
    from pnfs_pipeline.engine.trainer import Trainer

    context = init_from_env("cpu")
    try:
        torch.manual_seed(0)
        config = TrainConfig(batch_size=4, device="cpu", threads=1, val_max_batches=limit)
        trainer = Trainer(tiny_supernet(), RandomPoses(8), CountedPoses(9, seed=2), config, context=context)
        if context.rank == 1:  # BatchNorm statistics moved by this rank's own last batches: rank 0's are scored
            for name, buffer in trainer.model.named_buffers():
                if name.endswith("running_mean"):
                    buffer += 1.0
        return trainer.validation_loss(), CountedPoses.read
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("limit", [None, 2])
def test_each_rank_scores_its_share_of_the_validation_set(limit):
    """Every rank scored the whole set (N-1 sets of wasted work); the shares' sums make the
    single process's mean: 9 samples split 5 + 4, or the first 2 batches of 4 split 4 + 4."""
    from pnfs_pipeline.engine.distributed import launch
    from pnfs_pipeline.engine.trainer import Trainer

    torch.manual_seed(0)
    config = TrainConfig(batch_size=4, device="cpu", threads=1, val_max_batches=limit)
    alone = Trainer(tiny_supernet(), RandomPoses(8), RandomPoses(9, seed=2), config).validation_loss()
    ranks = launch(2, validation_on_this_rank, limit, all_ranks=True)
    assert ranks[0][0] == pytest.approx(alone, rel=1e-5) and ranks[1][0] == ranks[0][0]
    assert [ranks[rank][1] for rank in (0, 1)] == ([5, 4] if limit is None else [4, 4])


class UnreadableOnRankOne(RandomPoses):
    def __getitem__(self, i):
        if torch.distributed.get_rank() == 1:
            raise OSError(f"sample {i}: cannot be read")
        return super().__getitem__(i)


def validation_error_on_this_rank(_: None) -> str:
    from pnfs_pipeline.engine.distributed import init_from_env
    from pnfs_pipeline.engine.trainer import Trainer

    context = init_from_env("cpu", timeout_seconds=60)
    try:
        config = TrainConfig(batch_size=4, device="cpu", threads=1)
        Trainer(tiny_supernet(), RandomPoses(8), UnreadableOnRankOne(9, seed=2), config, context=context).validation_loss()
        return "finished"
    except (OSError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        torch.distributed.destroy_process_group()


def test_a_validation_sample_that_fails_on_one_rank_stops_every_rank():
    """With shares, only one rank reads the bad sample; the others must not wait for it in the sums' all-reduce."""
    from pnfs_pipeline.engine.distributed import launch

    messages = launch(2, validation_error_on_this_rank, None, all_ranks=True)
    assert messages[1] == "OSError: sample 1: cannot be read"
    assert messages[0] == "RuntimeError: validation failed on another rank (its error is in that rank's log)"


def test_a_share_of_a_subset_is_a_subset_of_its_base():
    """The loader sets the augmentation epoch through one Subset level only."""
    from torch.utils.data import Subset

    from pnfs_pipeline.engine.trainer import Trainer

    base = RandomPoses(9, seed=2)
    trainer = Trainer(tiny_supernet(), RandomPoses(8), base, TrainConfig(batch_size=4, device="cpu", threads=1))
    share = trainer._validation_share(Subset(Subset(base, range(2, 9)), range(1, 6)), 1)
    assert share.dataset is base and list(share.indices) == [3, 4, 5, 6]


def resume_with_this_ranks_path(payload: tuple) -> tuple[list[torch.Tensor], list[int]]:
    """A worker whose checkpoint path is its own machine's: only rank 0's holds the file."""
    from pnfs_pipeline.engine.distributed import init_from_env
    from pnfs_pipeline.engine.trainer import _execute

    job, paths = payload
    context = init_from_env("cpu")
    job.checkpoint_path = paths[context.rank]
    try:
        result = _execute(job, None, context)
    finally:
        torch.distributed.destroy_process_group()
    return [t for part in result.final_state["architecture"].values() for t in part.values()], [h["epoch"] for h in result.history]


@pytest.mark.slow
def test_every_rank_resumes_from_rank_zeros_checkpoint(tmp_path):
    """Across machines without a shared filesystem only rank 0 has the checkpoint it wrote."""
    from pnfs_pipeline.engine.distributed import launch

    first = _job(2)
    first.checkpoint_path = tmp_path / "node0" / "last.pt"
    run_training(first)
    resumed = _job(2)
    resumed.config = TrainConfig(**{**resumed.config.__dict__, "epochs": 2})
    resumed.resume = True
    paths = {0: tmp_path / "node0" / "last.pt", 1: tmp_path / "node1" / "last.pt"}
    per_rank = launch(2, resume_with_this_ranks_path, (resumed, paths), all_ranks=True)
    (arch0, epochs0), (arch1, epochs1) = per_rank[0], per_rank[1]
    assert epochs0 == epochs1 == [1, 2]  # both continued after epoch 1
    for a, b in zip(arch0, arch1, strict=True):
        assert torch.equal(a, b)


def darts2_gradient_on_this_half(payload: tuple) -> list[torch.Tensor]:
    """A worker's second-order architecture gradient on its half of the batches, averaged."""
    from pnfs_pipeline.engine.distributed import all_reduce_mean, init_from_env
    from pnfs_pipeline.engine.loss import joints_mse_loss
    from pnfs_pipeline.nas.strategies import unrolled_arch_gradient

    train_batch, arch_batch = payload
    context = init_from_env("cpu")
    try:
        half = slice(4 * context.rank, 4 * context.rank + 4)
        model = _darts2_model()
        unrolled_arch_gradient(
            model, {k: v[half] for k, v in train_batch.items()}, {k: v[half] for k, v in arch_batch.items()},
            joints_mse_loss, xi=0.5, sync=lambda grads: all_reduce_mean(grads, context),
        )
        grads = [p.grad for p in model.arch_parameters()]
        all_reduce_mean(grads, context)
    finally:
        torch.distributed.destroy_process_group()
    return grads


def _darts2_model() -> PartSupernet:
    torch.manual_seed(0)
    model = tiny_supernet().double().eval()  # eval: BatchNorm does not depend on the batch
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    return model


@pytest.mark.slow
def test_darts2_over_two_workers_is_the_single_process_gradient():
    from pnfs_pipeline.engine.distributed import launch
    from pnfs_pipeline.engine.loss import joints_mse_loss
    from pnfs_pipeline.nas.strategies import unrolled_arch_gradient

    def batch(seed):
        data = RandomPoses(8, seed=seed)
        return {"image": data.images.double(), "heatmaps": data.maps.double(), "target_weight": torch.ones(8, 4, dtype=torch.float64)}

    train_batch, arch_batch = batch(1), batch(2)
    model = _darts2_model()
    unrolled_arch_gradient(model, train_batch, arch_batch, joints_mse_loss, xi=0.5)
    single = [p.grad for p in model.arch_parameters()]
    per_rank = launch(2, darts2_gradient_on_this_half, (train_batch, arch_batch), all_ranks=True)
    for got, want in zip(per_rank[0], single, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
