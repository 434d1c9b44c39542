import numpy as np
import pytest
import torch

from pnfs_pipeline.config import RetrainParams, parse_params
from pnfs_pipeline.data.targets import gaussian_heatmaps
from pnfs_pipeline.engine.loss import joints_mse_loss
from pnfs_pipeline.engine.trainer import TrainConfig


def _batch():
    keypoints = np.array([[5.3, 7.6, 2.0], [2.0, 3.0, 0.0]])
    heatmaps, weight = gaussian_heatmaps(keypoints, (12, 16), 1.5)
    return {"heatmaps": torch.from_numpy(heatmaps)[None], "target_weight": torch.from_numpy(weight)[None]}


def test_plain_loss_is_half_the_weighted_mean_squared_error():
    batch = _batch()
    pred = torch.rand_like(batch["heatmaps"])
    expected = 0.5 * ((pred[0, 0] - batch["heatmaps"][0, 0]) ** 2).mean() / 2  # joint 1 is not labelled
    assert joints_mse_loss(pred, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    assert joints_mse_loss(pred, batch, foreground_weight=0.0).item() == pytest.approx(expected.item(), rel=1e-6)


def test_joint_weights_count_as_in_hrnet():
    batch = _batch()
    batch["target_weight"] = batch["target_weight"] * torch.tensor([[1.5, 1.0]])  # a wrist's weight
    pred = torch.rand_like(batch["heatmaps"])
    weight = batch["target_weight"][0, :, None, None]
    hrnet = 0.5 * torch.nn.functional.mse_loss(pred[0] * weight, batch["heatmaps"][0] * weight, reduction="none").mean(dim=(1, 2)).mean()
    assert joints_mse_loss(pred, batch).item() == pytest.approx(hrnet.item(), rel=1e-6)


def test_foreground_weight_makes_an_error_at_the_keypoint_cost_more_than_one_in_the_background():
    batch = _batch()
    at_peak, in_background = batch["heatmaps"].clone(), batch["heatmaps"].clone()
    at_peak[0, 0, 8, 5] += 0.5  # the target's peak pixel (value ~0.9)
    in_background[0, 0, 0, 11] += 0.5  # a corner, where the target is ~0
    plain = [joints_mse_loss(p, batch).item() for p in (at_peak, in_background)]
    weighted = [joints_mse_loss(p, batch, foreground_weight=9.0).item() for p in (at_peak, in_background)]
    assert plain[0] == pytest.approx(plain[1])
    peak_value = batch["heatmaps"][0, 0, 8, 5].item()
    assert weighted[0] / weighted[1] == pytest.approx(1 + 9.0 * peak_value, rel=1e-3)


def test_negative_foreground_weight_fails_naming_the_parameter():
    with pytest.raises(ValueError, match="heatmap_foreground_weight"):
        parse_params(RetrainParams, {"trainer": {"heatmap_foreground_weight": -1.0}}, "retrain")
    with pytest.raises(ValueError, match="heatmap_foreground_weight"):
        TrainConfig(heatmap_foreground_weight=-1.0)


def test_ohkm_keeps_only_each_samples_hardest_keypoints():
    torch.manual_seed(0)
    target = torch.rand(3, 5, 4, 4)
    weight = torch.ones(3, 5)
    weight[0, 4] = 0.0  # sample 0's noisiest joint, unlabelled: never counts as hard
    batch = {"heatmaps": target, "target_weight": weight}
    pred = target + torch.randn_like(target) * torch.linspace(0.1, 1.0, 5).view(1, 5, 1, 1)
    per_joint = ((pred - target) ** 2).mean(dim=(2, 3)) * weight
    assert joints_mse_loss(pred, batch, ohkm_topk=5).item() == pytest.approx(joints_mse_loss(pred, batch).item())
    hardest_two = per_joint.sort(dim=1, descending=True).values[:, :2]
    assert joints_mse_loss(pred, batch, ohkm_topk=2).item() == pytest.approx(0.5 * hardest_two.mean().item())
    unweighted = ((pred - target) ** 2).mean(dim=(2, 3))
    assert unweighted[0].argmax() == 4 and per_joint[0].argmax() != 4  # the weight changes sample 0's choice
    with pytest.raises(ValueError, match="ohkm_topk 6 exceeds the 5 keypoints"):
        joints_mse_loss(pred, batch, ohkm_topk=6)


def test_negative_ohkm_topk_fails_naming_the_parameter():
    with pytest.raises(ValueError, match="ohkm_topk"):
        parse_params(RetrainParams, {"trainer": {"ohkm_topk": -1}}, "retrain")
    with pytest.raises(ValueError, match="ohkm_topk"):
        TrainConfig(ohkm_topk=-1)
