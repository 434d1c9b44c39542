"""Nodes of the ``search`` pipeline."""

from __future__ import annotations

import functools
import logging
from typing import Any

from matplotlib.figure import Figure

from pnfs_pipeline.config import (
    AugmentationParams,
    ModelParams,
    SampleParams,
    SearchParams,
    parse_params,
)
from pnfs_pipeline.data.dataset import train_and_val_datasets
from pnfs_pipeline.engine.trainer import TrainConfig, TrainingJob, run_training
from pnfs_pipeline.keypoints import keypoint_spec_from_dict
from pnfs_pipeline.nas.profile import size_report
from pnfs_pipeline.nas.strategies import StrategyConfig
from pnfs_pipeline.nas.supernet import build_supernet
from pnfs_pipeline.pipelines.tracking import epoch_logger, log_figure, log_metrics
from pnfs_pipeline.viz.architecture import plot_architecture_history

logger = logging.getLogger(__name__)


def search_architecture(
    train_samples: dict[str, Any],
    val_samples: dict[str, Any],
    model: dict[str, Any],
    search: dict[str, Any],
    sample: dict[str, Any],
    augmentation: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Train the supernet with the chosen strategy; returns checkpoint, architecture, history."""
    model_params = parse_params(ModelParams, model, "model")
    search_params = parse_params(SearchParams, search, "search")
    sample_params = parse_params(SampleParams, sample, "sample")
    spec = keypoint_spec_from_dict(train_samples["keypoint_spec"], source="train_samples")
    supernet = build_supernet(spec, model_params)
    report = size_report(supernet, sample_params.input_size)
    logger.info(
        "supernet: %.2f M parameters, %.3f G MACs at %s",
        report["parameters_M"],
        report["gmacs"],
        sample_params.input_size,
    )
    log_metrics({"supernet_parameters_M": report["parameters_M"], "supernet_gmacs": report["gmacs"]})
    strategy_config = StrategyConfig(**search_params.strategy.model_dump())
    train_dataset, val_dataset = train_and_val_datasets(
        train_samples,
        val_samples,
        sample_params,
        parse_params(AugmentationParams, augmentation, "augmentation"),
        seed=search_params.trainer.seed,
    )
    job = TrainingJob(
        model_builder=functools.partial(build_supernet, spec, model_params),
        train_dataset=train_dataset,
        val_dataset=val_dataset,
        config=TrainConfig(**search_params.trainer.model_dump()),
        strategy=strategy_config,
        checkpoint_path=search_params.checkpoint_path,
        run_config={
            "model": model_params.model_dump(mode="json"),
            "sample": sample_params.model_dump(mode="json"),
            "keypoint_spec": train_samples["keypoint_spec"],
            "search": search_params.model_dump(mode="json"),
            "part_names": list(supernet.part_names),
        },
        resume=search_params.resume,
    )
    result = run_training(job, on_epoch_end=_search_epoch_logger(strategy_config.name))
    supernet.load_state_dict(result.final_state["model"])
    architecture = supernet.architecture_summary(strategy_config.name)
    architecture["network"] = supernet.network_description()
    architecture["model"] = model_params.model_dump(mode="json")
    architecture["size"] = report
    architecture["provenance"] = search_provenance(len(result.history))
    if result.extra.get("finalize"):
        architecture["random_search"] = result.extra["finalize"]
    return result.final_state, architecture, result.history


def _search_epoch_logger(strategy: str):
    """Per-epoch metrics and the alpha/beta figure so far, to MLflow."""
    log_epoch = epoch_logger("search_")
    seen: list[dict[str, Any]] = []

    def on_epoch_end(epoch: int, metrics: dict[str, Any], model: Any) -> None:
        log_epoch(epoch, metrics, model)
        seen.append(metrics)
        import mlflow

        # Launched workers report after training, without a model: the final figure suffices.
        if mlflow.active_run() is not None and model is not None:
            summary = {**model.architecture_summary(strategy), "network": model.network_description()}
            figure = plot_architecture_history(seen, summary)
            log_figure(figure, f"architecture/epoch_{epoch + 1:03d}.png")

    return on_epoch_end


def search_provenance(epochs: int) -> dict[str, Any]:
    """When and where this search ran, for the genotype's provenance."""
    import datetime

    import mlflow

    run = mlflow.active_run()
    return {
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "epochs": epochs,
        "mlflow_run_id": run.info.run_id if run else None,
    }


def plot_architecture(search_history: list[dict[str, Any]], architecture_parameters: dict[str, Any]) -> Figure:
    return plot_architecture_history(search_history, architecture_parameters)
