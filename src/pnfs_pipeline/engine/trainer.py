"""One training loop for supernet search and for retraining a derived network.

Checkpoints go to ``checkpoint_path`` after every epoch (atomically), so ``resume=True`` continues
a killed run; a non-finite loss stops the run with the epoch and step, leaving the last good
checkpoint in place.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, SequentialSampler, Subset

from pnfs_pipeline.data.dataset import EpochTaggedDataset, EpochTaggedSampler, make_data_loader
from pnfs_pipeline.engine.allocator import loaded_allocator
from pnfs_pipeline.engine.checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from pnfs_pipeline.engine.distributed import (
    DistributedContext,
    all_reduce_mean,
    env_world_size,
    init_from_env,
    launch,
)
from pnfs_pipeline.engine.loss import joints_mse_loss
from pnfs_pipeline.engine.unfinished_run import refuse_to_replace_an_unfinished_run
from pnfs_pipeline.keypoints import as_lists
from pnfs_pipeline.nas.fast_depthwise import use_fast_depthwise
from pnfs_pipeline.nas.fused_batch_norm import use_fused_batch_norm
from pnfs_pipeline.nas.strategies import SearchStrategy
from pnfs_pipeline.progress import progress_bar

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names epoch and step."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 16
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "multistep"  # multistep | cosine
    lr_steps: tuple[int, ...] = ()
    lr_factor: float = 0.25
    lr_min: float = 5e-5
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16
    channels_last: bool = False
    seed: int = 0
    max_steps_per_epoch: int | None = None
    val_max_batches: int | None = None
    threads: int | None = None  # torch CPU threads; None keeps torch's default
    nproc_per_node: int = 1  # > 1: launch local workers (DistributedDataParallel)
    cudnn_benchmark: bool = True  # on a GPU: cuDNN's fastest algorithms for the input size, timed once
    heatmap_foreground_weight: float = 0.0  # 0: plain MSE; w: pixels weigh 1 + w * target
    ohkm_topk: int = 0  # > 0: only each sample's k hardest keypoints enter the loss

    def __post_init__(self) -> None:
        checks = {
            "optimizer": (self.optimizer, ("adam", "sgd")),
            "scheduler": (self.scheduler, ("multistep", "cosine")),
            "device": (self.device, ("auto", "cpu", "cuda")),
            "precision": (self.precision, ("fp32", "bf16")),
        }
        for name, (value, valid) in checks.items():
            if value not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")
        for name, value in (("epochs", self.epochs), ("batch_size", self.batch_size), ("lr", self.lr)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.heatmap_foreground_weight < 0:
            raise ValueError(f"heatmap_foreground_weight must be >= 0, got {self.heatmap_foreground_weight}")
        if self.ohkm_topk < 0:
            raise ValueError(f"ohkm_topk must be >= 0, got {self.ohkm_topk}")
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")


# Settings a run may continue with other values of: the machine's, and the number of epochs (a
# longer run; a cosine schedule then follows the new length from the resumed epoch). Also the
# genotype's provenance: a repeated search and derive give the same architecture with another
# search run id and finishing time.
RESUMABLE_SETTINGS = frozenset(
    {"threads", "num_workers", "nproc_per_node", "device", "cudnn_benchmark", "resume", "checkpoint_path", "epochs", "provenance"}
)


def config_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """``"key: saved -> current"`` for every setting that differs between two run configurations
    (nested dicts compared key by key, tuples equal to lists), machine settings excepted."""
    if isinstance(saved, dict) and isinstance(current, dict):
        differences = []
        for key in sorted(set(saved) | set(current), key=str):
            if key in RESUMABLE_SETTINGS:
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            differences += config_differences(saved.get(key, "(absent)"), current.get(key, "(absent)"), name)
        return differences
    if as_lists(saved) == as_lists(current):
        return []
    return [f"{prefix}: {_shortened(saved)} -> {_shortened(current)}"]


def _shortened(value: Any, limit: int = 60) -> str:
    text = repr(as_lists(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def split_for_bilevel(dataset: Dataset, train_share: int, arch_share: int) -> tuple[Subset, Subset]:
    """The first train_share/(train_share+arch_share) of the samples train weights, the rest alphas."""
    cut = len(dataset) * train_share // (train_share + arch_share)
    if cut == 0 or cut == len(dataset):
        raise ValueError(
            f"a {train_share}:{arch_share} split (search.strategy.split_for_train:split_for_arch) of "
            f"{len(dataset)} samples leaves one side empty"
        )
    return Subset(dataset, range(cut)), Subset(dataset, range(cut, len(dataset)))


def _to_device(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last:
        moved["image"] = moved["image"].contiguous(memory_format=torch.channels_last)
    return moved


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    final_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Trains ``model`` on top-down samples; a ``strategy`` makes it a supernet search."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        val_dataset: Dataset,
        config: TrainConfig,
        strategy_factory: Callable[[nn.Module, int], SearchStrategy] | None = None,
        checkpoint_path: str | Path | None = None,
        run_config: dict[str, Any] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any], nn.Module], None] | None = None,
        loss_fn: Callable | None = None,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.context = context or DistributedContext()
        self.device = resolve_device(config.device)
        if self.device.type == "cuda" and self.context.enabled:
            self.device = torch.device("cuda", torch.cuda.current_device())  # set when joining the group
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.device.type == "cuda":
            # As the original code: every training input has one size, so the algorithms cuDNN
            # times on the first batches serve the whole run (their choice may differ between runs).
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        torch.manual_seed(config.seed)
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.device.type == "cpu":
            # Exact, faster on the CPU, and sidesteps PyTorch's wrong bf16 channels_last gradient
            # for dilated depthwise convolutions (see nas/fast_depthwise.py).
            use_fast_depthwise(self.model)
            # BatchNorm and the ReLU after it in one pass (nas/fused_batch_norm.py).
            use_fused_batch_norm(self.model)
            if self.context.is_main:
                logger.info(
                    "training on the CPU: %d threads, memory allocator %s (engine/allocator.py)",
                    torch.get_num_threads(), loaded_allocator(),
                )
        self.strategy = strategy_factory(self.model, config.epochs) if strategy_factory else None
        if self.strategy is not None:
            self.strategy.sync_gradients = lambda grads: all_reduce_mean(grads, self.context)
        self.forward_model: nn.Module = self.model
        if self.context.enabled:
            if config.batch_size % self.context.world_size:
                raise ValueError(
                    f"batch_size {config.batch_size} must divide by the {self.context.world_size} workers"
                )
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # sampled architectures leave ops unused
            )
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.arch_dataset = None
        # Bilevel strategies train the architecture on a held-out part of the training set;
        # random search picks its architecture there (the validation set is the one evaluation
        # reports on, so choosing on it would leak the test into the search).
        if self.strategy is not None and (self.strategy.config.bilevel or self.strategy.config.name == "random"):
            self.train_dataset, self.arch_dataset = split_for_bilevel(
                train_dataset, self.strategy.config.split_for_train, self.strategy.config.split_for_arch
            )
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.run_config = run_config or {}
        self.on_epoch_end = on_epoch_end
        self.loss_fn = loss_fn or functools.partial(
            joints_mse_loss, foreground_weight=config.heatmap_foreground_weight, ohkm_topk=config.ohkm_topk
        )
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.start_epoch = 0
        self.saved_epochs = 0  # epochs of this run that the checkpoint at checkpoint_path holds
        self.history: list[dict[str, Any]] = []
        # One loader per (dataset, role), kept across epochs: rebuilt every epoch, its workers
        # restarted and the images they had decoded were decoded again.
        self._loaders: dict[tuple[int, bool, int, int], tuple[Dataset, Any]] = {}
        self._validation_shares: dict[tuple[int, int | None], tuple[Dataset, Dataset]] = {}
        # The augmentation a held-out split of the training set is scored with (random search):
        # the last trained epoch's, as when the epoch was set on the shared dataset.
        self._last_trained_epoch = 0

    # ---- construction ----------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if self.strategy is not None:
            groups = self.strategy.weight_optimizer_groups(c.lr, c.weight_decay)
        else:
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad], "name": "weights"}]
        if c.optimizer == "adam":
            # The fused kernel updates all tensors in one pass: 1.7 instead of 6.5 ms a step for
            # the default's derived network on 2 cores (measured); same update rule.
            fused = self.device.type in ("cpu", "cuda")
            return torch.optim.Adam(groups, lr=c.lr, weight_decay=c.weight_decay, fused=fused)
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _stretch_cosine_schedule(self) -> None:
        """A resumed cosine schedule over the current number of epochs: its learning rates set
        to the closed form at the resumed epoch, which the scheduler's steps then continue."""
        scheduler = self.scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == self.config.epochs:
            return
        scheduler.T_max = self.config.epochs
        progress = math.cos(math.pi * scheduler.last_epoch / scheduler.T_max)
        for group, base_lr in zip(self.optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = scheduler.eta_min + (base_lr - scheduler.eta_min) * (1 + progress) / 2
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        c = self.config
        if c.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=c.epochs, eta_min=c.lr_min)
        return torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(c.lr_steps), gamma=c.lr_factor)

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # ---- checkpoints -----------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict[str, Any]:
        state = {
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "rng": rng_state(),
            "config": {"train": asdict(self.config), **self.run_config},
        }
        if self.strategy is not None:
            state["strategy"] = {
                "name": self.strategy.config.name,
                "generator": self.strategy.generator.get_state(),
                "arch_optimizer": self.strategy.arch_optimizer.state_dict() if self.strategy.arch_optimizer else None,
            }
            state["architecture"] = architecture_parameters(self.model)
        return state

    def resume_from(self, path: str | Path) -> None:
        # On the CPU: RNG states must stay CPU byte tensors; model and optimizer states are
        # copied to their parameters' device by load_state_dict.
        self._restore(load_checkpoint(path, map_location="cpu"), path)

    def _restore(self, state: dict[str, Any], path: str | Path) -> None:
        differences = config_differences(state.get("config", {}), {"train": asdict(self.config), **self.run_config})
        if differences:
            shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
            raise ValueError(
                f"cannot resume from {path}: it was trained with other settings ({shown}). "
                "Restore them to continue that run, or move the file away to start afresh."
            )
        done = int(state["epoch"]) + 1
        if done > self.config.epochs:
            raise ValueError(
                f"cannot resume from {path}: it has trained {done} epochs, more than the {self.config.epochs} "
                f"asked for; ask for at least {done}, or move the file away to start afresh"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._stretch_cosine_schedule()
        self.history = list(state["history"])
        self.start_epoch = self.saved_epochs = int(state["epoch"]) + 1
        self._last_trained_epoch = int(state["epoch"])
        if self.strategy is not None and "strategy" in state:
            self.strategy.generator.set_state(state["strategy"]["generator"])
            if self.strategy.arch_optimizer is not None and state["strategy"]["arch_optimizer"]:
                self.strategy.arch_optimizer.load_state_dict(state["strategy"]["arch_optimizer"])
        restore_rng_state(state["rng"])
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)  # epochs count from 1, as the epoch log lines

    # ---- the loop --------------------------------------------------------------------------
    def _forward_loss(self, batch: dict[str, torch.Tensor], training: bool) -> torch.Tensor:
        weights = self.strategy.forward_weights(training) if self.strategy is not None else None
        model = self.forward_model if training else self.model
        with self._autocast():
            output = model(batch["image"], weights) if weights is not None else model(batch["image"])
        return self.loss_fn(output.float(), batch)

    def _loader(self, dataset: Dataset, epoch: int, shuffle: bool, batch_size: int, stream: int = 0):
        """Shuffled loaders split one seeded permutation over the workers (1 worker: all of it),
        so N workers see the same global batches as one process with N times their batch."""
        key = (id(dataset), shuffle, batch_size, stream)
        cached = self._loaders.get(key)
        if cached is None or cached[0] is not dataset:
            drop_last = shuffle and len(dataset) > batch_size
            if shuffle:
                # drop_last as the loader's: padding each worker's share to equal length would add
                # a step of repeated samples where one process drops its short last batch.
                sampler = DistributedSampler(
                    dataset,
                    num_replicas=self.context.world_size,
                    rank=self.context.rank,
                    shuffle=True,
                    seed=self.config.seed * 100_003 + stream,
                    drop_last=drop_last,
                )
            else:
                sampler = SequentialSampler(dataset)
            loader = make_data_loader(
                EpochTaggedDataset(dataset),
                batch_size=batch_size // self.context.world_size if shuffle else batch_size,
                shuffle=False,
                seed=self.config.seed * 100_003 + stream,
                num_workers=self.config.num_workers,
                drop_last=drop_last,
                sampler=EpochTaggedSampler(sampler),
                pin_memory=self.device.type == "cuda",
            )
            cached = self._loaders[key] = (dataset, loader)
        loader = cached[1]
        loader.sampler.set_epoch(epoch)
        return loader

    def _diverged(self, what: str) -> NonFiniteLossError:
        # Only this run's state counts: an earlier run's file at the same path is not ours.
        if self.checkpoint_path is not None and self.saved_epochs:
            where = f"last good checkpoint: {self.checkpoint_path} (after epoch {self.saved_epochs})"
        else:
            where = "no checkpoint of this run yet"
        return NonFiniteLossError(f"{what}; {where}")

    def _stop_unless_finite(self, value: torch.Tensor | float, what: str, epoch: int, step: int) -> float:
        """Raise when a step's loss is not finite on this rank or any other: the ranks stop
        together, where one raising alone would leave the others waiting in the step's gradient
        all-reduce (under torchrun across machines, until the collectives' timeout). Returns this
        rank's value as a float (read once: on a GPU each read waits for the step so far)."""
        own = float(value)
        broken = not math.isfinite(own)
        if self.context.enabled:
            flag = torch.tensor([float(broken)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            if flag.item() > 0 and not broken:
                raise self._diverged(f"non-finite {what} on another rank (this rank's: {own}) at epoch {epoch + 1}, step {step + 1}")
        if broken:
            raise self._diverged(f"non-finite {what} ({own}) at epoch {epoch + 1}, step {step + 1}")
        return own

    def _check_finite_after(self, epoch: int, val_loss: float) -> None:
        """An infinite gradient in an epoch's last step leaves NaN weights behind a finite loss:
        such an epoch must not be saved as the last good one."""
        broken = [name for name, parameter in self.model.named_parameters() if not torch.isfinite(parameter).all()]
        if broken:
            raise self._diverged(f"non-finite weights after epoch {epoch + 1} ({len(broken)} tensors, first {broken[0]})")
        if not math.isfinite(val_loss):
            raise self._diverged(f"non-finite validation loss ({val_loss}) after epoch {epoch + 1}")

    def train_epoch(self, epoch: int, progress: Progress) -> dict[str, float]:
        c = self.config
        self.model.train()
        self._last_trained_epoch = epoch
        loader = self._loader(self.train_dataset, epoch, True, c.batch_size)
        arch_iter = None
        if self.arch_dataset is not None and self.strategy.config.bilevel:
            share = self.strategy.config
            arch_batch_size = max(1, c.batch_size * share.split_for_arch // share.split_for_train)
            workers = self.context.world_size
            arch_batch_size = -(-arch_batch_size // workers) * workers  # a multiple of the workers
            arch_loader = self._loader(self.arch_dataset, epoch, True, arch_batch_size, stream=7919)
            arch_iter = _cycle(arch_loader)
        steps = len(loader) if c.max_steps_per_epoch is None else min(len(loader), c.max_steps_per_epoch)
        task = progress.add_task(f"epoch {epoch + 1}/{c.epochs}", total=steps, loss=math.nan, speed=0.0)
        total_loss, total_arch, arch_steps, images, start = 0.0, 0.0, 0, 0, time.perf_counter()
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            batch = _to_device(batch, self.device, c.channels_last)
            if arch_iter is not None:
                arch_batch = _to_device(next(arch_iter), self.device, c.channels_last)
                arch_loss = self.strategy.arch_step(
                    arch_batch, batch, self.loss_fn, self.optimizer.param_groups[0]["lr"], self._autocast
                )
                if arch_loss is not None:
                    self._stop_unless_finite(arch_loss, "architecture loss", epoch, step)
                    total_arch += arch_loss
                    arch_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._forward_loss(batch, training=True)
            loss_value = self._stop_unless_finite(loss, "loss", epoch, step)
            loss.backward()
            if self.strategy is not None:
                self.strategy.hold_architecture_in_warmup()
            self.optimizer.step()
            total_loss += loss_value
            images += batch["image"].shape[0]
            speed = images / max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=1, loss=total_loss / (step + 1), speed=speed)
        progress.remove_task(task)
        elapsed = time.perf_counter() - start
        sums, elapsed = self._over_all_ranks([total_loss, float(images), float(steps), total_arch, float(arch_steps)], elapsed)
        total_loss, images, loss_terms, total_arch, arch_steps = sums[0], int(sums[1]), sums[2], sums[3], int(sums[4])
        metrics = {
            "train_loss": total_loss / max(loss_terms, 1),
            "train_images": images,
            "images_per_second": images / max(elapsed, 1e-9),
            "epoch_seconds": elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if arch_steps:
            metrics["arch_loss"] = total_arch / arch_steps
        return metrics

    def _over_all_ranks(self, sums: list[float], elapsed: float) -> tuple[list[float], float]:
        """An epoch's sums (losses, images, loss terms ...) added over every rank, and its seconds
        on the slowest: each worker saw its share of the global batches, so one rank's figures
        alone would undercount. On the training device: NCCL reduces only CUDA tensors."""
        if not self.context.enabled:
            return sums, elapsed
        totals = torch.tensor(sums, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(totals)
        slowest = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        return totals.tolist(), slowest.item()

    @torch.no_grad()
    def validation_loss(self, weights=None, max_batches: int | None = None, dataset: Dataset | None = None) -> float:
        """Mean loss on the validation set (at most ``val_max_batches``), or on every sample of
        ``dataset``."""
        self.model.eval()
        if self.context.enabled:
            # Each rank's BatchNorm statistics moved with its own last batches (DDP broadcasts
            # rank 0's only before the next training forward): score rank 0's model, the one saved.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        limit = max_batches if max_batches is not None or dataset is not None else self.config.val_max_batches
        share = self._validation_share(dataset if dataset is not None else self.val_dataset, limit)
        loader = self._loader(share, self._last_trained_epoch, False, self.config.batch_size)
        total, count, failure = 0.0, 0, None
        try:
            for batch in loader:
                batch = _to_device(batch, self.device, self.config.channels_last)
                with self._autocast():
                    # The plain module: DistributedDataParallel's forward would sync buffers, a
                    # collective that ranks with shares of different sizes would call unequally often.
                    output = self.model(batch["image"], weights) if weights is not None else self.model(batch["image"])
                total += self.loss_fn(output.float(), batch).item() * batch["image"].shape[0]
                count += batch["image"].shape[0]
        except Exception as error:
            if not self.context.enabled:
                raise
            failure = error  # raised below on every rank: the others would wait in the all-reduce
        finally:
            self.model.train()
        if self.context.enabled:
            sums = torch.tensor([total, float(count), float(failure is not None)], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(sums)
            if failure is not None:
                raise failure
            if sums[2].item() > 0:
                raise RuntimeError("validation failed on another rank (its error is in that rank's log)")
            total, count = sums[0].item(), int(sums[1].item())
        return total / max(count, 1)

    def _validation_share(self, dataset: Dataset, limit: int | None) -> Dataset:
        """This rank's share of the first ``limit`` batches of ``dataset`` (all of it without a
        limit): every rank used to score the whole set, N-1 times more work than one rank's share.
        A share of a Subset is a Subset of its base dataset (the loader sets the augmentation
        epoch through one level only). Kept across epochs, so its loader (and workers) is too."""
        key = (id(dataset), limit)
        cached = self._validation_shares.get(key)
        if cached is None or cached[0] is not dataset:
            end = len(dataset) if limit is None else min(len(dataset), limit * self.config.batch_size)
            rank, ranks = self.context.rank, self.context.world_size
            if end == len(dataset) and ranks == 1:
                share = dataset
            else:
                base, indices = dataset, list(range(rank, end, ranks))
                while isinstance(base, Subset):
                    base, indices = base.dataset, [base.indices[i] for i in indices]
                share = Subset(base, indices)
            cached = self._validation_shares[key] = (dataset, share)
        return cached[1]

    def _checkpoint_to_resume(self) -> dict[str, Any] | None:
        """The checkpoint state to resume from, the same on every rank: rank 0's.

        Only rank 0 writes checkpoints, so across machines without a shared filesystem the other
        ranks have no file (or an old one); each resuming on its own would desynchronise the
        ranks' epochs and hang their collectives.
        """
        path = self.checkpoint_path
        found = path is not None and path.is_file()
        if not self.context.enabled:
            return load_checkpoint(path, map_location="cpu") if found else None
        payload = [load_checkpoint(path, map_location="cpu") if found and self.context.is_main else None]
        torch.distributed.broadcast_object_list(payload, src=0, device=self.device if self.device.type == "cuda" else None)
        return payload[0]

    def fit(self, resume: bool = False) -> TrainResult:
        if resume:
            state = self._checkpoint_to_resume()
            if state is not None:
                self._restore(state, self.checkpoint_path)
            else:
                logger.warning("resume asked for, but no checkpoint at %s: starting afresh", self.checkpoint_path)
        progress = progress_bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.6f}"),
            TextColumn("{task.fields[speed]:.1f} img/s"),
            TimeRemainingColumn(),
            disable=not self.context.is_main,
        )
        try:
            with progress:
                for epoch in range(self.start_epoch, self.config.epochs):
                    if self.strategy is not None:
                        self.strategy.epoch = epoch
                    metrics = self.train_epoch(epoch, progress)
                    metrics["val_loss"] = self.validation_loss()
                    self._check_finite_after(epoch, metrics["val_loss"])
                    metrics["epoch"] = epoch + 1
                    if self.strategy is not None:
                        metrics["architecture"] = architecture_softmax(self.model)
                    self.scheduler.step()
                    self.history.append(metrics)
                    if self.context.is_main:  # every rank has the same figures: one line per epoch
                        logger.info(
                            "epoch %d/%d: train loss %.6f, val loss %.6f, %.1f img/s, %.1f s",
                            epoch + 1,
                            self.config.epochs,
                            metrics["train_loss"],
                            metrics["val_loss"],
                            metrics["images_per_second"],
                            metrics["epoch_seconds"],
                        )
                    if self.checkpoint_path is not None and self.context.is_main:
                        save_checkpoint(self.state_dict(epoch), self.checkpoint_path)
                    self.saved_epochs = epoch + 1
                    if self.on_epoch_end is not None and self.context.is_main:
                        self.on_epoch_end(epoch, metrics, self.model)
            extra = {}
            if self.strategy is not None:
                final = self.strategy.finalize(lambda w: self.validation_loss(w, dataset=self.arch_dataset))
                if final:
                    extra["finalize"] = final
        finally:
            self._loaders.clear()  # ends their workers, also when training fails
        return TrainResult(self.history, self.state_dict(self.config.epochs - 1), extra)


def _cycle(loader):
    while True:
        yield from loader


def architecture_parameters(model: nn.Module) -> dict[str, Any]:
    """Raw alphas and betas per part, as tensors (for checkpoints)."""
    if not hasattr(model, "arch_alphas"):
        return {}
    return {
        name: {"alpha": alpha.detach().cpu().clone(), "beta": beta.detach().cpu().clone()}
        for name, alpha, beta in zip(model.part_names, model.arch_alphas, model.arch_betas, strict=True)
    }


def architecture_softmax(model: nn.Module) -> dict[str, Any]:
    """Softmax alphas and betas per part, as nested lists (for history, YAML and figures)."""
    if not hasattr(model, "arch_alphas"):
        return {}
    return {
        name: {
            "alpha": torch.softmax(alpha.detach().float(), -1).cpu().tolist(),
            "beta": torch.softmax(beta.detach().float(), -1).cpu().tolist(),
        }
        for name, alpha, beta in zip(model.part_names, model.arch_alphas, model.arch_betas, strict=True)
    }


@dataclass
class TrainingJob:
    """Everything a training run needs, picklable so distributed workers can rebuild it."""

    model_builder: Callable[[], nn.Module]
    train_dataset: Dataset
    val_dataset: Dataset
    config: TrainConfig
    strategy: Any = None  # a StrategyConfig for searches
    checkpoint_path: str | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    initial_state: dict[str, Any] | None = None


def _execute(
    job: TrainingJob,
    on_epoch_end: Callable[[int, dict[str, Any], nn.Module], None] | None,
    context: DistributedContext,
) -> TrainResult:
    from pnfs_pipeline.nas.strategies import SearchStrategy

    torch.manual_seed(job.config.seed)  # the same initial weights in every process
    model = job.model_builder()
    if job.initial_state is not None:
        model.load_state_dict(job.initial_state)
    strategy_factory = None
    if job.strategy is not None:
        strategy_factory = lambda m, epochs: SearchStrategy(m, job.strategy, epochs)  # noqa: E731
    trainer = Trainer(
        model,
        job.train_dataset,
        job.val_dataset,
        job.config,
        strategy_factory=strategy_factory,
        checkpoint_path=job.checkpoint_path,
        run_config=job.run_config,
        on_epoch_end=on_epoch_end,
        context=context,
    )
    return trainer.fit(resume=job.resume)


def _distributed_worker(job: TrainingJob) -> TrainResult | None:
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def work() -> TrainResult | None:
        device = resolve_device(job.config.device)
        if device.type == "cpu" and not job.config.threads:
            # torch's default in every worker is all the cores: the workers would oversubscribe them
            local_workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, torch.get_num_threads() // local_workers))
        context = init_from_env(device.type)
        try:
            result = _execute(job, None, context)
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        if not context.is_main:
            return None
        # To the CPU before the launcher passes the result back: CUDA tensors would cross as
        # handles into this worker's memory, which is freed when the worker exits.
        result.final_state = torch.utils._pytree.tree_map(
            lambda value: value.detach().cpu() if isinstance(value, torch.Tensor) else value, result.final_state
        )
        return result

    return work()


def run_training(
    job: TrainingJob, on_epoch_end: Callable[[int, dict[str, Any], nn.Module | None], None] | None = None
) -> TrainResult:
    """Train in this process, in ``nproc_per_node`` launched workers, or as a torchrun rank.

    Launched workers report back when they finish; ``on_epoch_end`` then sees each epoch's
    metrics (without a model) in this process, the only one that logs.
    """
    if not job.resume:
        refuse_to_replace_an_unfinished_run(job.checkpoint_path)
    if env_world_size() > 1:
        context = init_from_env(resolve_device(job.config.device).type)
        return _execute(job, on_epoch_end if context.is_main else None, context)
    if job.config.nproc_per_node > 1:
        result = launch(job.config.nproc_per_node, _distributed_worker, job)
        if on_epoch_end is not None:
            for metrics in result.history[-job.config.epochs :]:
                on_epoch_end(metrics["epoch"] - 1, metrics, None)
        return result
    return _execute(job, on_epoch_end, DistributedContext())
