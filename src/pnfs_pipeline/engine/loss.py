"""Heatmap regression loss."""

from __future__ import annotations

import torch


def joints_mse_loss(
    pred: torch.Tensor, batch: dict[str, torch.Tensor], foreground_weight: float = 0.0, ohkm_topk: int = 0
) -> torch.Tensor:
    """0.5 * target-weighted MSE per joint, averaged over joints and samples (HRNet / PNFS).

    As HRNet's ``MSE(pred * w, target * w)``, a joint's squared error counts ``w ** 2`` times:
    the same for visibility weights of 0 and 1, and 2.25 for a wrist of joint weight 1.5.

    With ``foreground_weight`` w > 0 each pixel's squared error counts ``1 + w * target`` times:
    the few pixels around a keypoint then weigh as much as the large background that otherwise
    dominates the mean (the weighted loss map of Wang et al., Adaptive Wing Loss, ICCV 2019,
    with the target itself as a soft mask). 0 is the paper's plain MSE.

    With ``ohkm_topk`` k > 0 only each sample's k largest joint losses count (online hard
    keypoint mining, Chen et al., CPN, CVPR 2018; HRNet's ``USE_OHKM`` with k = 8).
    """
    target, weight = batch["heatmaps"], batch["target_weight"]
    squared = (pred.float() - target) ** 2
    if foreground_weight:
        squared = squared * (1.0 + foreground_weight * target)
    per_joint = squared.mean(dim=(2, 3)) * weight.square()
    if ohkm_topk:
        if ohkm_topk > per_joint.shape[1]:
            raise ValueError(f"ohkm_topk {ohkm_topk} exceeds the {per_joint.shape[1]} keypoints of the heatmaps")
        return 0.5 * per_joint.topk(ohkm_topk, dim=1).values.mean()
    return 0.5 * per_joint.mean()
