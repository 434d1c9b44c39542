"""MLflow logging for nodes (kedro-mlflow opens the run; without one, nothing is logged)."""

from __future__ import annotations

import logging
import re
from typing import Any

logger = logging.getLogger(__name__)


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits, '_', '-', '.', ' ', ':' and '/' in metric names: COCO's
    "AP (M)" becomes "AP M", anything else outside that set an underscore."""
    return re.sub(r"[^\w\-. :/]", "_", re.sub(r"\((\w+)\)", r"\1", name))


def _flat_numbers(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        metric_name(f"{prefix}{key}"): float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_metrics(metrics: dict[str, Any], prefix: str = "", step: int | None = None) -> None:
    """Log the numeric entries of ``metrics`` to the active MLflow run, if there is one."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_metrics(_flat_numbers(metrics, prefix), step=step)


def epoch_logger(prefix: str):
    """A trainer ``on_epoch_end`` callback that logs each epoch's numbers."""

    def on_epoch_end(epoch: int, metrics: dict[str, Any], model: Any) -> None:
        log_metrics(metrics, prefix=prefix, step=epoch + 1)

    return on_epoch_end


def log_figure(figure: Any, artifact_path: str) -> None:
    """Log a matplotlib figure to the active MLflow run (if any), then close it."""
    import matplotlib.pyplot as plt
    import mlflow

    try:
        if mlflow.active_run() is not None:
            mlflow.log_figure(figure, artifact_path)
    finally:
        plt.close(figure)
