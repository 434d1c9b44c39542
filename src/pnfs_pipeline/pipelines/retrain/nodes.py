"""Nodes of the ``retrain`` pipeline."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from pnfs_pipeline.config import (
    AugmentationParams,
    ModelParams,
    RetrainParams,
    SampleParams,
    parse_params,
)
from pnfs_pipeline.data.dataset import train_and_val_datasets
from pnfs_pipeline.data.targets import keypoint_sigmas
from pnfs_pipeline.engine.trainer import TrainConfig, TrainingJob, run_training
from pnfs_pipeline.keypoints import KeypointSpecError, check_same_keypoints, keypoint_spec_from_dict
from pnfs_pipeline.nas.backbones import load_pretrained
from pnfs_pipeline.nas.derived import DerivedNetwork, inherit_supernet_weights
from pnfs_pipeline.nas.genotype import validate_genotype
from pnfs_pipeline.nas.profile import count_parameters
from pnfs_pipeline.pipelines.tracking import epoch_logger

logger = logging.getLogger(__name__)


def retrain_network(
    genotype: dict[str, Any],
    supernet_checkpoint: dict[str, Any],
    train_samples: dict[str, Any],
    val_samples: dict[str, Any],
    retrain: dict[str, Any],
    model: dict[str, Any],
    sample: dict[str, Any],
    augmentation: dict[str, Any],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train the derived network (inheriting the supernet's weights, or from scratch)."""
    params = parse_params(RetrainParams, retrain, "retrain")
    model_params = parse_params(ModelParams, model, "model")
    sample_params = parse_params(SampleParams, sample, "sample")
    spec = keypoint_spec_from_dict(train_samples["keypoint_spec"], source="train_samples")
    genotype = validate_genotype(genotype, "genotype")  # a hand-edited one fails on its own fields first
    if genotype["network"]["num_keypoints"] != spec.num_keypoints:
        raise KeypointSpecError(
            f"genotype: network.num_keypoints is {genotype['network']['num_keypoints']}, train_samples hold "
            f"spec {spec.name!r} with {spec.num_keypoints} keypoints: derive the genotype from a search on this data"
        )
    if params.init == "inherit":
        check_same_keypoints(
            supernet_checkpoint["config"].get("keypoint_spec"), train_samples["keypoint_spec"], "supernet_checkpoint", "train_samples"
        )
    if params.keypoint_sigmas is not None:
        # Resolved here so that a bad name fails before any training, naming this parameter.
        sigmas = keypoint_sigmas(spec, sample_params.sigma, params.keypoint_sigmas, "retrain.keypoint_sigmas")
        logger.info(
            "retraining targets (retrain.keypoint_sigmas): %s",
            ", ".join(f"{name} {value:g}" for name, value in zip(spec.keypoints, sigmas, strict=True)),
        )
        sample_params = sample_params.model_copy(update={"keypoint_sigmas": params.keypoint_sigmas})
    torch.manual_seed(params.trainer.seed)
    network = DerivedNetwork(genotype, frozen_backbone=model_params.frozen_backbone)
    if params.init == "inherit":
        supernet_config = supernet_checkpoint["config"]
        copied = inherit_supernet_weights(
            network,
            supernet_checkpoint["model"],
            supernet_config.get("part_names"),
            ((supernet_config.get("model") or {}).get("fabric") or {}).get("operators"),
        )
        logger.info("derived network inherits %d tensors from the supernet", copied)
    elif model_params.pretrained_backbone:
        load_pretrained(network.backbone, model_params.pretrained_backbone)
    logger.info("derived network: %.2f M parameters", count_parameters(network) / 1e6)
    train_dataset, val_dataset = train_and_val_datasets(
        train_samples,
        val_samples,
        sample_params,
        parse_params(AugmentationParams, augmentation, "augmentation"),
        seed=params.trainer.seed,
    )
    job = TrainingJob(
        model_builder=functools.partial(DerivedNetwork, genotype, frozen_backbone=model_params.frozen_backbone),
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        config=TrainConfig(**params.trainer.model_dump()),
        checkpoint_path=params.checkpoint_path,
        run_config={
            "genotype": genotype,
            "sample": sample_params.model_dump(mode="json"),
            "keypoint_spec": train_samples["keypoint_spec"],
            "retrain": params.model_dump(mode="json"),
            # Recorded only when set, so checkpoints from before the setting still resume.
            **({"frozen_backbone": True} if model_params.frozen_backbone else {}),
        },
        resume=params.resume,
        initial_state=network.state_dict(),
    )
    result = run_training(job, on_epoch_end=epoch_logger("retrain_"))
    return result.final_state, result.history
