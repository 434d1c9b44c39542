"""Checkpoints: one dict written atomically, loaded with ``weights_only=True``.

A checkpoint holds model and optimizer states, scheduler, epoch, architecture parameters, RNG
states and the configuration, so a killed run continues exactly where it stopped.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pnfs_pipeline.files import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write through a temporary file and a rename: never a half-written checkpoint."""
    atomic_write(path, lambda stream: torch.save(state, stream))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error


def rng_state() -> dict[str, Any]:
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        # Tensors, not numpy arrays: weights_only loading accepts only tensors and plain types.
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": np.random.get_state()[2],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A run may resume on a machine with fewer GPUs (or other CUDA_VISIBLE_DEVICES).
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
