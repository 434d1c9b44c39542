"""Parameters, multiply-accumulates and latency of a model (the pose literature's 'GFLOPs' = GMACs)."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``input_size`` (width, height), per batch.

    torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate of convolutions and matrix
    products (not of BN, pooling or activations), so MACs are its total / 2.
    """
    width, height = input_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(batch_size, 3, height, width, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def measure_latency(
    model: nn.Module, input_size: tuple[int, int], batch_size: int = 1, repeats: int = 10, warmup: int = 2
) -> float:
    """Median seconds per forward pass."""
    width, height = input_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(batch_size, 3, height, width, device=device)
    timings = []
    try:
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                timings.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    timings.sort()
    return timings[len(timings) // 2]


def size_report(model: nn.Module, input_size: tuple[int, int]) -> dict[str, float]:
    parameters, macs = count_parameters(model), count_macs(model, input_size)
    return {
        "parameters": parameters,
        "parameters_M": parameters / 1e6,
        "macs": macs,
        "gmacs": macs / 1e9,
        "input_size": list(input_size),
    }
