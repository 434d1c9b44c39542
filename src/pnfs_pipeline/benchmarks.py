"""Benchmark suite: ``python -m pnfs_pipeline.benchmarks [--quick] [--output FILE]``.

Every figure is measured side by side with its baseline in the same run: fp32 without the
optimisations vs the optimised settings (channels_last and the CPU depthwise rewrites of
``nas.fast_depthwise``, then bf16 autocast on top), brute-force vs vectorised OKS-NMS, and so on.
On the CPU each training measurement runs in a fresh process, so its peak memory is its own.
Prints a table and writes JSON with a description of the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnfs_pipeline.engine.allocator import (
    LIBRARY_NAMES,
    allocator_name,
    loaded_allocator,
    preloading,
    resolve_allocator,
)
from pnfs_pipeline.keypoints import load_keypoint_spec
from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.derived import DerivedNetwork
from pnfs_pipeline.nas.fast_depthwise import use_fast_depthwise
from pnfs_pipeline.nas.fused_batch_norm import use_fused_batch_norm
from pnfs_pipeline.nas.genotype import derive_genotype
from pnfs_pipeline.nas.ops import set_adapter_composition
from pnfs_pipeline.nas.supernet import FabricConfig, HeadConfig, PartSupernet

logger = logging.getLogger(__name__)

# The seed's configurations (operators, depth 6, cut 3, factor 16, 1 input node, 1 hidden state).
SETTINGS = {
    "mobilenet_v2_CNFx3": {
        "backbone": "mobilenet_v2",
        "parts": 3,
        "operators": ("skip_connect", "sep_conv_3x3", "atr_conv_3x3"),
        "vector": True,
    },
    "hrnet_w32_CNFx5": {
        "backbone": "hrnet_w32",
        "parts": 5,
        "operators": ("zero", "skip_connect", "atr_conv_3x3", "sep_conv_3x3"),
        "vector": True,
    },
}


def machine_description() -> dict[str, Any]:
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if cpu and flags:
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "bf16_cpu": cpu_bf16_support(flags),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "allocator": loaded_allocator(),
    }


def cpu_bf16_support(cpu_flags: set[str]) -> str:
    """How this CPU runs bf16 convolutions: with AMX tiles, with AVX512-BF16 instructions,
    emulated by oneDNN on AVX512 (slower than fp32: the bf16 rows then say little), or not."""
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in cpu_flags:
            return flag
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without that probe
        supported = False
    return "emulated" if supported else "none"


def build_setting(name: str) -> PartSupernet:
    setting = SETTINGS[name]
    spec = load_keypoint_spec("coco")
    model = PartSupernet(
        build_backbone(setting["backbone"]),
        spec.body_parts(setting["parts"]),
        spec.num_keypoints,
        FabricConfig(operators=setting["operators"], depth=6, cut_layers_num=3, factor=16),
        HeadConfig(vector_in_pixel=setting["vector"]),
    )
    model.backbone_name, model.backbone_kwargs = setting["backbone"], {}
    return model


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or this process's own peak resident memory on the CPU.

    Linux's ``ru_maxrss`` is no measure for a measuring process: a spawned child starts as a fork
    of the suite, and exec carries the fork's resident size (the suite's, ~1.7 GB once its
    inference rows ran) into the child's maximum. ``VmHWM`` belongs to the process's own memory
    since exec."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# Training modes compared side by side: (bf16 autocast, channels_last, CPU kernels (depthwise
# rewrites, fused BatchNorm), fused Adam kernel, connections composed with the backbone adapters).
TRAINING_MODES = {
    "fp32": (False, False, False, False, False),
    "fp32+channels_last+cpu_kernels+fused_adam+composed_adapters": (False, True, True, True, True),
    "bf16+channels_last+cpu_kernels+fused_adam+composed_adapters": (True, True, True, True, True),
}


TRAINING_WARMUP_STEPS = 5
DISTRIBUTED_MODE = "bf16+channels_last+cpu_kernels+fused_adam+composed_adapters"


def _autocast(device: torch.device, optimised: bool):
    if not optimised:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _training_step(
    model: torch.nn.Module, input_size: tuple[int, int], batch: int, device: torch.device, mode: str, distributed: bool = False
) -> Callable[[], None]:
    """One forward + backward + Adam step of ``model`` set up as ``mode`` says, on random data;
    with ``distributed``, through DistributedDataParallel as the trainer wraps it."""
    bf16, channels_last, cpu_kernels, fused_adam, composed_adapters = TRAINING_MODES[mode]
    width, height = input_size
    model = model.to(device).train()
    set_adapter_composition(model, composed_adapters)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cpu_kernels and device.type == "cpu":  # C kernels for the CPU; a GPU keeps cuDNN's
        use_fast_depthwise(model)
        use_fused_batch_norm(model)
    forward_model = model
    if distributed:
        forward_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    # The baseline is the plain per-tensor loop (on a GPU torch would otherwise pick foreach).
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused_adam, foreach=None if fused_adam else False)
    images = torch.randn(batch, 3, height, width, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    target = torch.rand(batch, 17, height // 4, width // 4, device=device)

    def step() -> None:
        with _autocast(device, bf16):
            out = forward_model(images)
        loss = ((out.float() - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_training(
    model: torch.nn.Module,
    input_size: tuple[int, int],
    batch: int,
    steps: int,
    device: torch.device,
    mode: str = "fp32",
) -> dict[str, float]:
    """Images per second of forward + backward + Adam step on random data."""
    step = _training_step(model, input_size, batch, device, mode)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The first training steps are slower (page faults of new allocations, oneDNN building its
    # primitives): on 2 cores the supernet step settles after about four.
    seconds = _timed(step, steps, device, warmup=TRAINING_WARMUP_STEPS)
    return {"images_per_second": batch / seconds, "peak_memory_mb": peak_memory_mb(device)}


def _distributed_training_worker(payload: tuple) -> dict[str, Any]:
    """One rank of :func:`measure_distributed_training` (module level: the launcher pickles it)."""
    import torch.distributed as dist

    from pnfs_pipeline.engine.distributed import init_from_env

    setting, input_size, batch, steps, mode, threads = payload
    torch.set_num_threads(threads)
    context = init_from_env("cpu")
    torch.manual_seed(0)
    step = _training_step(build_setting(setting), input_size, batch // context.world_size, torch.device("cpu"), mode, True)
    for _ in range(TRAINING_WARMUP_STEPS):
        step()
    seconds = []
    for _ in range(steps):
        dist.barrier()  # every rank starts the step together: a step lasts until the slowest ends
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    dist.destroy_process_group()
    return {"seconds": seconds, "peak_memory_mb": peak_memory_mb(torch.device("cpu")), "allocator": loaded_allocator()}


def _check_allocator(rows: list[dict[str, Any]], preload: Path | None) -> str:
    """The allocator the measuring processes ran with, which must be the one asked for."""
    expected = "system" if preload is None else allocator_name(preload)
    seen = {row["allocator"] for row in rows}
    if seen != {expected}:
        raise RuntimeError(
            f"the benchmark processes ran with allocator {sorted(seen)}, not {expected!r}"
            + (f": LD_PRELOAD of {preload} did not load" if preload is not None else "")
        )
    return expected


def measure_distributed_training(
    setting: str,
    input_size: tuple[int, int],
    batch: int,
    steps: int,
    mode: str,
    processes: int,
    threads: int,
    preload: Path | None = None,
) -> dict[str, Any]:
    """The global ``batch`` split over ``processes`` CPU workers of ``threads`` threads each, as
    ``trainer.nproc_per_node`` runs it (DistributedDataParallel over gloo), with the allocator
    library ``preload`` preloaded in the workers if given. A step's time is the slowest rank's;
    the peak memory is the workers' peaks added up."""
    from pnfs_pipeline.engine.distributed import launch

    if batch % processes:
        raise ValueError(f"batch {batch} must divide by the {processes} processes")
    payload = (setting, tuple(input_size), batch, steps, mode, threads)
    with preloading(preload):
        ranks = launch(processes, _distributed_training_worker, payload, all_ranks=True)
    step_seconds = [max(per_rank) for per_rank in zip(*(r["seconds"] for r in ranks.values()), strict=True)]
    return {
        "images_per_second": batch / float(np.median(step_seconds)),
        "peak_memory_mb": sum(r["peak_memory_mb"] for r in ranks.values()),
        "allocator": _check_allocator(list(ranks.values()), preload),
    }


@torch.inference_mode()
def time_inference(
    model: torch.nn.Module, input_size: tuple[int, int], batch: int, steps: int, device: torch.device, optimised: bool
) -> dict[str, float]:
    """Forward latency in eval mode; ``model`` is moved to ``device`` but keeps its mode and
    memory format (the next rows time it too)."""
    width, height = input_size
    given, was_training = model, model.training
    model = model.to(device).eval()
    images = torch.randn(batch, 3, height, width, device=device)
    if optimised:
        # A copy: converting in place would leave later fp32 baseline rows (and the supernet, whose
        # backbone the derived network shares) on channels_last weights.
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with _autocast(device, optimised):
            model(images)

    try:
        seconds = _timed(step, steps, device, warmup=2)
    finally:
        given.train(was_training)
    return {"latency_ms": 1e3 * seconds, "images_per_second": batch / seconds}


def _timed(step: Callable[[], None], steps: int, device: torch.device, warmup: int) -> float:
    for _ in range(warmup):
        step()
    timings = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings))


def derived_from_setting(supernet: PartSupernet) -> DerivedNetwork:
    """A derived network of the setting: the path rule on the untrained (uniform) architecture."""
    genotype = derive_genotype(supernet.architecture_summary("none"), supernet.network_description(), rule="path")
    return DerivedNetwork(genotype, backbone=supernet.backbone)


def oks_nms_benchmark(count: int, seed: int = 0) -> dict[str, float]:
    from pnfs_pipeline.evaluation.coco_eval import oks_nms

    rng = np.random.default_rng(seed)
    sigmas = np.asarray(load_keypoint_spec("coco").sigmas)
    # 20 detections an image: 5 people, each detected 4 times with slightly moved keypoints, as a
    # detector's overlapping boxes give; NMS suppresses about half of them (~10 kept an image: at
    # 2 px apart, repeats of the smaller people stay below OKS 0.9).
    per_image, people = 20, 5
    images = count // per_image
    base = rng.uniform(0, 400, (images, people, 1, 17, 3))
    keypoints = (base + rng.normal(0, 2.0, (images, people, per_image // people, 17, 3))).reshape(-1, 17, 3)
    scores = rng.uniform(0, 1, len(keypoints))
    areas = np.repeat(rng.uniform(1e3, 2e4, images * people), per_image // people)

    per_image_slices = [slice(i * per_image, (i + 1) * per_image) for i in range(images)]

    def vectorised() -> list[list[int]]:
        return [list(oks_nms(keypoints[s], scores[s], areas[s], sigmas)) for s in per_image_slices]

    def loop() -> list[list[int]]:  # the reference code: one OKS row against the remaining boxes per pick
        variances = (2 * sigmas) ** 2
        kept = []
        for s in per_image_slices:
            kp, sc, ar = keypoints[s], scores[s], areas[s]
            order, keep = np.argsort(-sc), []
            while order.size:
                best, rest = order[0], order[1:]
                keep.append(int(best))
                d2 = ((kp[rest, :, :2] - kp[best, None, :, :2]) ** 2).sum(-1)
                e = d2 / variances / ((ar[best] + ar[rest])[:, None] / 2 + np.spacing(1)) / 2
                order = rest[np.exp(-e).mean(-1) <= 0.9]
            kept.append(keep)
        return kept

    start = time.perf_counter()
    reference = loop()
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    ours = vectorised()
    optimised = time.perf_counter() - start
    if [sorted(k) for k in ours] != [sorted(k) for k in reference]:
        raise RuntimeError("OKS-NMS benchmark: the vectorised NMS kept other detections than the reference loop")
    kept = sum(len(k) for k in ours)
    return {"detections": len(keypoints), "kept": kept, "baseline_seconds": baseline, "optimised_seconds": optimised}


def coco_eval_benchmark(count: int, seed: int = 0) -> dict[str, float]:
    from pnfs_pipeline.evaluation.coco_eval import evaluate_coco

    rng = np.random.default_rng(seed)
    sigmas = np.asarray(load_keypoint_spec("coco").sigmas)
    images, annotations, results = [], [], []
    for i in range(count):
        image_id = i // 5 + 1
        if i % 5 == 0:
            images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        points = np.column_stack([rng.uniform(0, 600, 17), rng.uniform(0, 450, 17), np.full(17, 2)])
        annotations.append({"id": i + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 5000.0,
                            "keypoints": points.reshape(-1).tolist(), "num_keypoints": 17, "bbox": [0, 0, 50, 100]})
        noisy = points + np.column_stack([rng.normal(0, 3, (17, 2)), np.zeros(17)])
        results.append({"image_id": image_id, "category_id": 1, "keypoints": noisy.reshape(-1).tolist(), "score": float(rng.uniform())})
    ground_truth = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    start = time.perf_counter()
    stats = evaluate_coco(ground_truth, results, sigmas)
    return {"detections": count, "seconds": time.perf_counter() - start, "AP": stats["AP"]}


def _batches_across_epochs(loader):
    while True:
        yield from loader


def data_loader_benchmark(workers: list[int], samples: int) -> dict[str, float]:
    """Samples per second of the top-down pipeline on a freshly generated synthetic set."""
    import tempfile

    from pnfs_pipeline.config import AugmentationParams, DataParams, SampleParams
    from pnfs_pipeline.data.dataset import TopDownDataset, make_data_loader
    from pnfs_pipeline.data.sample_index import (
        build_sample_indexes,
        locate_raw_data,
        validate_raw_data,
    )
    from pnfs_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_dataset

    results = {}
    with tempfile.TemporaryDirectory() as root:
        generate_synthetic_dataset(root, SyntheticConfig(num_train_images=64, num_val_images=8, mpii=False))
        data = DataParams(source="coco", root=root)
        spec = load_keypoint_spec("coco")
        sample = SampleParams(input_size=(192, 256), heatmap_size=(48, 64))
        index = build_sample_indexes(validate_raw_data(locate_raw_data(data), spec, data, sample), spec, data)["train"]
        runs = [(f"workers_{count}", count, False) for count in workers] + [("workers_0_cached_images", 0, True)]
        for name, count, cached in runs:
            dataset = TopDownDataset(index, sample.model_copy(update={"cache_images": cached}), AugmentationParams())
            if cached:  # measure the steady state: every image decoded once beforehand
                for i in range(len(dataset)):
                    dataset[i]
            loader = make_data_loader(dataset, batch_size=16, shuffle=True, seed=0, num_workers=count)
            batches = _batches_across_epochs(loader)
            # Not part of the steady rate: the workers' start-up, and the batches each queues
            # ahead (prefetch_factor 2) while the first one is read. One iterator throughout: a
            # second would discard the queued batches in the timed window.
            for _ in range(1 + 2 * count):
                next(batches)
            seen, start = 0, time.perf_counter()
            while seen < samples:
                seen += next(batches)["image"].shape[0]
            results[name] = seen / (time.perf_counter() - start)
    return results


def _training_row(
    setting: str, input_size: tuple[int, int], batch: int, steps: int, device_name: str, mode: str, threads: int | None
) -> dict[str, float]:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    row = time_training(build_setting(setting), input_size, batch, steps, torch.device(device_name), mode)
    return {**row, "allocator": loaded_allocator()}


def measure_training(
    setting: str,
    input_size: tuple[int, int],
    batch: int,
    steps: int,
    device: torch.device,
    mode: str,
    threads: int | None,
    preload: Path | None = None,
) -> dict[str, Any]:
    """One training measurement; on the CPU in a fresh process so that its peak memory is its
    own, with the allocator library ``preload`` preloaded in it if given."""
    args = (setting, tuple(input_size), batch, steps, str(device), mode, threads or torch.get_num_threads())
    if device.type != "cpu":
        if preload is not None:
            raise ValueError("an allocator is preloaded only into the CPU measurement processes")
        return _training_row(*args)
    context = multiprocessing.get_context("spawn")
    with preloading(preload), ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        row = pool.submit(_training_row, *args).result()
    return {**row, "allocator": _check_allocator([row], preload)}


def median_of_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One training row from its measurements in alternating rounds: the median images/s, the
    largest peak memory, and every round's images/s (``rounds``) to show the spread."""
    speeds = [row["images_per_second"] for row in rounds]
    return {
        **rounds[0],
        "images_per_second": float(np.median(speeds)),
        "peak_memory_mb": max(row["peak_memory_mb"] for row in rounds),
        "rounds": speeds,
    }


def mode_label(mode: str, device: torch.device) -> str:
    """A training mode's row label: the CPU kernels are named only where they run (the CPU)."""
    return mode if device.type == "cpu" else mode.replace("+cpu_kernels", "")


def _training_rows(
    input_size: tuple[int, int], device: torch.device, threads: int | None, steps: int, allocator: Path | None
) -> dict[str, dict[str, Any]]:
    """One round of every supernet training row, in the table's order."""
    training = {}
    cores = threads or torch.get_num_threads()
    preloads = [None] if device.type != "cpu" or allocator is None else [None, allocator]
    for name in SETTINGS:
        for mode in TRAINING_MODES:
            key = f"{name}/{mode_label(mode, device)}"
            training[key] = measure_training(name, input_size, 8, steps, device, mode, threads)
            logger.info("train %s: %.1f img/s", key, training[key]["images_per_second"])
        for preload in preloads:
            suffix = "" if preload is None else f"+{allocator_name(preload)}"
            if preload is not None:
                key = f"{name}/{DISTRIBUTED_MODE}{suffix}"
                training[key] = measure_training(name, input_size, 8, steps, device, DISTRIBUTED_MODE, threads, preload)
                logger.info("train %s: %.1f img/s", key, training[key]["images_per_second"])
            if device.type == "cpu" and cores >= 2:
                # The same cores as two processes (trainer.nproc_per_node: 2), the global batch
                # split between them: each keeps its cores busy through the other's serial stretches.
                per_process = cores // 2
                key = f"{name}/{DISTRIBUTED_MODE}+ddp_2x{per_process}thread{suffix}"
                training[key] = measure_distributed_training(
                    name, input_size, 8, steps, DISTRIBUTED_MODE, 2, per_process, preload
                )
                logger.info("train %s: %.1f img/s", key, training[key]["images_per_second"])
    return training


def run_suite(
    quick: bool,
    input_size: tuple[int, int],
    device: torch.device,
    threads: int | None,
    allocator: Path | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Every measurement; on the CPU with ``allocator`` (a tcmalloc / jemalloc library), each
    setting's optimised rows are measured once more with it preloaded. The training rows run
    ``rounds`` times in alternation (a shared VM's speed drifts over minutes: rows measured
    minutes apart compare the hours, not the code) and report their medians."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)  # the networks and inputs this process builds (training rows seed their own)
    steps = 2 if quick else 5
    report: dict[str, Any] = {"machine": machine_description(), "input_size": list(input_size), "device": str(device)}
    measured: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(rounds):
        if rounds > 1:
            logger.info("training rows: round %d of %d", round_index + 1, rounds)
        for key, row in _training_rows(input_size, device, threads, steps, allocator).items():
            measured.setdefault(key, []).append(row)
    training = {key: median_of_rounds(rows) for key, rows in measured.items()}
    inference = {}
    derived = derived_from_setting(build_setting("mobilenet_v2_CNFx3"))
    supernet = build_setting("mobilenet_v2_CNFx3")
    for batch in (1, 8, 32):
        for optimised in (False, True):
            mode = "bf16+channels_last" if optimised else "fp32"
            inference[f"derived/batch{batch}/{mode}"] = time_inference(derived, input_size, batch, steps, device, optimised)
        inference[f"supernet/batch{batch}/fp32"] = time_inference(supernet, input_size, batch, steps, device, False)
        logger.info("inference batch %d: done", batch)
    report["supernet_training"] = training
    report["inference"] = inference
    scaling = {}
    for size in ((96, 128), (192, 256), (288, 384)):
        for batch in (1, 8):
            scaling[f"{size[0]}x{size[1]}/batch{batch}"] = measure_training(
                "mobilenet_v2_CNFx3", size, batch, max(1, steps // 2), device, "fp32", threads
            )
    report["scaling_fp32"] = scaling
    report["data_loader_samples_per_second"] = data_loader_benchmark([0, 1, 2], 64 if quick else 256)
    report["oks_nms_10k"] = oks_nms_benchmark(10_000)
    report["coco_eval_10k"] = coco_eval_benchmark(10_000)
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"machine: {report['machine']}", f"input {report['input_size']} on {report['device']}", ""]
    w = max([80, *(len(key) for key in report["supernet_training"])])  # the names column
    rounds = max((len(value.get("rounds", [])) for value in report["supernet_training"].values()), default=0)
    spread = f"  rounds' img/s ({rounds})" if rounds > 1 else ""
    lines.append(f"{'supernet training (batch 8)':{w}s} {'img/s':>8s} {'peak MB':>9s}{spread}")
    for key, value in report["supernet_training"].items():
        each = "  " + " ".join(f"{v:.1f}" for v in value["rounds"]) if rounds > 1 else ""
        lines.append(f"{key:{w}s} {value['images_per_second']:8.1f} {value['peak_memory_mb']:9.0f}{each}")
    lines.append("")
    lines.append(f"{'inference':{w}s} {'ms':>8s} {'img/s':>9s}")
    for key, value in report["inference"].items():
        lines.append(f"{key:{w}s} {value['latency_ms']:8.1f} {value['images_per_second']:9.1f}")
    lines.append("")
    lines.append(f"{'training time and memory by input and batch (fp32)':{w}s} {'img/s':>8s} {'peak MB':>9s}")
    for key, value in report["scaling_fp32"].items():
        lines.append(f"{key:{w}s} {value['images_per_second']:8.1f} {value['peak_memory_mb']:9.0f}")
    lines.append("")
    for key, value in report["data_loader_samples_per_second"].items():
        lines.append(f"data loader {key:{w - 12}s} {value:8.1f} samples/s")
    nms = report["oks_nms_10k"]
    lines.append(
        f"OKS-NMS, {nms['detections']} detections ({nms.get('kept', '?')} kept): loop {nms['baseline_seconds']:.2f} s, "
        f"vectorised {nms['optimised_seconds']:.2f} s"
    )
    lines.append(f"COCO evaluation, 10k detections: {report['coco_eval_10k']['seconds']:.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--input-size", default="192x256", help="width x height (default 192x256)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--allocator", default="auto",
        help="allocator preloaded for the extra optimised CPU training rows: auto (tcmalloc, else jemalloc, "
        "else no extra rows), system (no extra rows), tcmalloc, jemalloc or the path of a tcmalloc / jemalloc library",
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="measure the training rows this many times in alternation and report medians (default 1)",
    )
    parser.add_argument("--output", default="data/08_reporting/benchmarks.json")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    width, height = (int(v) for v in args.input_size.lower().split("x"))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    try:
        allocator = resolve_allocator(args.allocator)
    except FileNotFoundError as error:
        parser.error(str(error))
    if allocator is not None and allocator_name(allocator) not in LIBRARY_NAMES:
        # Every measuring process's allocator is read back from its memory maps, which knows
        # tcmalloc and jemalloc; another library's rows could not be told from glibc's.
        parser.error(f"--allocator {args.allocator}: the suite measures tcmalloc or jemalloc libraries, not {allocator.name}")
    if allocator is None and device.type == "cpu":
        logger.info("no tcmalloc / jemalloc library found (--allocator %s): no preloaded-allocator rows", args.allocator)
    report = run_suite(args.quick, (width, height), device, args.threads, allocator, args.rounds)
    table = format_table(report)
    print(table)  # noqa: T201 - the benchmark's output is the table
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
