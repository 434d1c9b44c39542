"""Run a pose network over top-down crops and decode keypoints in image coordinates."""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from pnfs_pipeline.data.dataset import TopDownDataset, make_data_loader
from pnfs_pipeline.evaluation.decode import (
    decode_heatmaps,
    exact_flip_shift,
    flip_back,
    heatmap_to_image,
)


@torch.no_grad()
def predict_heatmaps(
    model: nn.Module, images: torch.Tensor, flip_permutation: np.ndarray | None, flip_shift: float = 1.0
) -> torch.Tensor:
    """Heatmaps for a batch; with a flip permutation, the average with the flipped input's."""
    heatmaps = model(images).float()
    if flip_permutation is not None:
        flipped = flip_back(model(images.flip(-1)).float(), flip_permutation, flip_shift)
        heatmaps = 0.5 * (heatmaps + flipped)
    return heatmaps


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: TopDownDataset,
    batch_size: int = 32,
    flip_test: bool = True,
    decode: str = "argmax",
    device: str | torch.device = "cpu",
    flip_shift: str = "exact",
    dark_kernel: int = 3,
) -> dict[str, np.ndarray]:
    """Keypoints ``(N, K, 3)`` (x, y, confidence) in image pixels plus each crop's metadata.

    ``flip_shift``: ``exact`` undoes the flip by its true sub-pixel offset, ``reference`` by the
    reference code's whole pixel. ``dark_kernel``: the smoothing window of ``decode="dark"``.
    """
    if flip_shift not in ("exact", "reference"):
        raise ValueError(f"flip_shift must be 'exact' or 'reference', got {flip_shift!r}")
    device = torch.device(device)
    model = model.to(device).eval()
    loader = make_data_loader(dataset, batch_size=batch_size, shuffle=False, seed=0)
    permutation = dataset.spec.flip_permutation() if flip_test else None
    shift = 1.0
    if flip_shift == "exact":
        shift = exact_flip_shift(dataset.sample.input_size[0], dataset.sample.heatmap_size[0])
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in ("keypoints", "scores", "areas", "image_ids", "indices")}
    with Progress(transient=True) as progress:
        task = progress.add_task("predicting", total=len(loader))
        for batch in loader:
            heatmaps = predict_heatmaps(model, batch["image"].to(device), permutation, shift).cpu().numpy()
            coords, confidences = decode_heatmaps(heatmaps, decode, dark_kernel)
            image_coords = heatmap_to_image(
                coords,
                batch["center"].numpy(),
                batch["size"].numpy(),
                dataset.sample.input_size,
                dataset.sample.heatmap_size,
            )
            outputs["keypoints"].append(np.concatenate([image_coords, confidences[..., None]], axis=-1))
            outputs["scores"].append(batch["score"].numpy())
            # The padded crop area normalises OKS in NMS, as in the reference code.
            outputs["areas"].append((batch["size"][:, 0] * batch["size"][:, 1]).numpy())
            outputs["image_ids"].append(batch["image_id"].numpy())
            outputs["indices"].append(batch["index"].numpy())
            progress.advance(task)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in outputs.items()}
