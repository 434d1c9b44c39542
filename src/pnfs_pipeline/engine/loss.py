"""Heatmap regression loss."""

from __future__ import annotations

import torch


def joints_mse_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """0.5 * target-weighted MSE per joint, averaged over joints and samples (HRNet / PNFS)."""
    target, weight = batch["heatmaps"], batch["target_weight"]
    per_joint = ((pred.float() - target) ** 2).mean(dim=(2, 3))
    return 0.5 * (per_joint * weight).mean()
