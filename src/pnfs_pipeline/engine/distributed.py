"""Multi-process training on PyTorch's own distributed engine.

Two ways in:
- ``launch(nproc, worker, payload)`` starts ``nproc`` local workers through torch's elastic
  launcher (what ``torchrun`` uses) and returns rank 0's result. A worker that dies makes the
  launch fail with :class:`DistributedRunError`; the others are stopped, nothing hangs.
- inside a job started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), ``init_from_env``
  joins the process group, so the same training code runs across nodes.

gloo serves the CPU, NCCL the GPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class DistributedRunError(RuntimeError):
    """A distributed worker failed; the message says which rank and why."""


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str, timeout_seconds: float = 600.0) -> DistributedContext:
    """Join the process group described by torchrun's environment variables (if any).

    ``timeout_seconds`` bounds every collective: while rank 0 saves a checkpoint, logs to MLflow
    and draws the epoch's figure, the other ranks wait in the next epoch's first collective, so
    it must outlast that on a slow filesystem or tracking server. A worker that dies is caught
    sooner by the launcher (local workers) or by torchrun's agent.
    """
    world_size = env_world_size()
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(gpu_of_local_rank(context.local_rank, torch.cuda.device_count()))
    return context


def gpu_of_local_rank(local_rank: int, visible: int) -> int:
    """The GPU a worker trains on: its local rank where the machine shows several, the one it
    sees where each process sees only its own (SLURM, per-task CUDA_VISIBLE_DEVICES). More workers
    than visible GPUs would put two on one GPU, which NCCL refuses at its first collective with
    no word of the cause. One visible GPU with nothing choosing it (no ``CUDA_VISIBLE_DEVICES``)
    is the machine's only one, shared by every local worker; with it set, the process may have
    been given its own (SLURM), which this process cannot tell from a shared one."""
    if visible == 1:
        workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if workers > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
            raise RuntimeError(
                f"{workers} workers on this machine share its only GPU; start one worker per GPU "
                "(torchrun --nproc-per-node, trainer.nproc_per_node)"
            )
        return 0
    if local_rank >= visible:
        raise RuntimeError(
            f"local rank {local_rank} has no GPU of its own: this machine shows {visible} GPUs; start at most "
            f"{visible} workers per machine (torchrun --nproc-per-node, trainer.nproc_per_node)"
        )
    return local_rank


def all_reduce_mean(tensors: list[torch.Tensor], context: DistributedContext) -> None:
    """Average tensors in place over every rank (architecture gradients; darts2's weight
    gradients too). One all-reduce per dtype and device: darts2 hands over every weight gradient
    of the supernet, hundreds of blocking collectives one by one."""
    if not context.enabled:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([tensor.reshape(-1) for tensor in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(context.world_size)
        for tensor, average in zip(group, flat.split([tensor.numel() for tensor in group]), strict=True):
            tensor.copy_(average.view(tensor.shape))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(
    nproc: int, worker: Callable[[Any], Any], payload: Any, monitor_interval: float = 0.2, all_ranks: bool = False
) -> Any:
    """Run ``worker(payload)`` in ``nproc`` local processes; return rank 0's return value
    (with ``all_ranks``, a dict of every rank's).

    ``worker`` must be importable (a module-level function) and ``payload`` picklable.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"pnfs-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=monitor_interval,
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, worker)(payload)
    except ChildFailedError as error:
        failures = "; ".join(
            f"rank {rank}: exit code {failure.exitcode} ({failure.message or 'no message'})"
            for rank, failure in sorted(error.failures.items())
        )
        raise DistributedRunError(f"distributed training failed ({nproc} workers): {failures}") from None
    return dict(results) if all_ranks else results[0]
