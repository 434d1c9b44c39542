"""Run a pose network over top-down crops and decode keypoints in image coordinates."""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from pnfs_pipeline.data.dataset import TopDownDataset, make_data_loader
from pnfs_pipeline.evaluation.decode import decode_heatmaps, flip_back, heatmap_to_image


@torch.no_grad()
def predict_heatmaps(model: nn.Module, images: torch.Tensor, flip_permutation: np.ndarray | None) -> torch.Tensor:
    """Heatmaps for a batch; with a flip permutation, the average with the flipped input's."""
    heatmaps = model(images).float()
    if flip_permutation is not None:
        heatmaps = 0.5 * (heatmaps + flip_back(model(images.flip(-1)).float(), flip_permutation))
    return heatmaps


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: TopDownDataset,
    batch_size: int = 32,
    flip_test: bool = True,
    decode: str = "argmax",
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Keypoints ``(N, K, 3)`` (x, y, confidence) in image pixels plus each crop's metadata."""
    device = torch.device(device)
    model = model.to(device).eval()
    loader = make_data_loader(dataset, batch_size=batch_size, shuffle=False, seed=0)
    permutation = dataset.spec.flip_permutation() if flip_test else None
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in ("keypoints", "scores", "areas", "image_ids", "indices")}
    with Progress(transient=True) as progress:
        task = progress.add_task("predicting", total=len(loader))
        for batch in loader:
            heatmaps = predict_heatmaps(model, batch["image"].to(device), permutation).cpu().numpy()
            coords, confidences = decode_heatmaps(heatmaps, decode)
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
