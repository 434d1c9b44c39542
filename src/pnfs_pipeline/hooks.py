"""Project hooks."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Pipeline

from pnfs_pipeline.config import ParameterError
from pnfs_pipeline.engine.unfinished_run import (
    UnfinishedRunError,
    refuse_to_replace_an_unfinished_run,
)
from pnfs_pipeline.pipeline_registry import LIFECYCLE

logger = logging.getLogger(__name__)


def lifecycle_pipelines() -> dict[str, Pipeline]:
    """Every lifecycle pipeline, built directly (Kedro loads only the requested ones)."""
    import importlib

    return {
        stage: importlib.import_module(f"pnfs_pipeline.pipelines.{stage}.pipeline").create_pipeline()
        for stage in LIFECYCLE
    }


class ProjectFolderHooks:
    """Work in the project folder, wherever the session was started.

    Paths the project writes outside the catalog (the synthetic images, the sample indexes'
    image roots, kedro-mlflow's ``sqlite:///mlflow.db``) are relative to the project folder;
    Kedro finds the project from a subfolder (``notebooks/``, where Jupyter starts its
    kernel), and there they went to ``notebooks/data`` and ``notebooks/mlflow.db``.
    """

    @hook_impl(tryfirst=True)  # before kedro-mlflow reads its tracking URI
    def after_context_created(self, context: Any) -> None:
        project = Path(context.project_path).resolve()
        if Path.cwd().resolve() != project:
            logger.info("working in the project folder %s", project)
            os.chdir(project)


class InvalidParametersError(click.ClickException, ParameterError):
    """A :class:`ParameterError` found before the first node: Kedro's command line shows it as its
    one line instead of a traceback through the hook machinery."""


class ParameterCheckHooks:
    """Validate every parameter group the pipeline reads before its first node runs.

    Nodes validate their own groups too, but only when they run: a typo in ``derive`` would
    otherwise surface after hours of search, with the search's outputs already written. First
    among the project's checks: a wrong parameter is worth knowing before a missing input.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        from pnfs_pipeline.config import PARAMETER_GROUPS, check_parameters

        read = {name.split(":", 1)[1].split(".", 1)[0] for name in pipeline.inputs() if name.startswith("params:")}
        if not read:
            return
        parameters = catalog.load("parameters")
        # The keypoint spec (data's) is what cross-checks of the other groups need; a group name
        # no pipeline knows (a misspelled 'sampel') is reported, not ignored.
        checked = read | {"data"} | (set(parameters) - set(PARAMETER_GROUPS))
        try:
            parsed = check_parameters({name: parameters[name] for name in sorted(checked) if name in parameters})
        except ParameterError as error:
            raise InvalidParametersError(str(error)) from error
        if "evaluate" in parsed and parsed["evaluate"].checkpoint:
            _evaluate_chosen_checkpoint(parsed["evaluate"].checkpoint, pipeline, catalog)
        _refuse_to_replace_an_unfinished_training(parsed, pipeline)


class UnfinishedTrainingError(click.ClickException, UnfinishedRunError):
    """An :class:`UnfinishedRunError` found before the first node (one line on the command line)."""


# The nodes that train, by the parameter group that holds their checkpoint_path and resume.
TRAINING_NODES = {"search": "search_architecture", "retrain": "retrain_network"}


def _refuse_to_replace_an_unfinished_training(parsed: dict[str, Any], pipeline: Pipeline) -> None:
    """The trainer refuses to overwrite an unfinished run's checkpoint; said before the first
    node, not after the stages before the training node (prepare's, on a default run) have run."""
    names = {node.name for node in pipeline.nodes}
    for group, node_name in TRAINING_NODES.items():
        if group in parsed and node_name in names and not parsed[group].resume:
            try:
                refuse_to_replace_an_unfinished_run(parsed[group].checkpoint_path)
            except UnfinishedRunError as error:
                raise UnfinishedTrainingError(str(error)) from error


def _evaluate_chosen_checkpoint(path: str, pipeline: Pipeline, catalog: Any) -> None:
    """``evaluate.checkpoint`` scores that file: where evaluation is the only reader of the
    retrained checkpoint, the file stands in for it, so no retrained model need exist (that the
    file exists, check_parameters has checked)."""
    from pnfs_pipeline.datasets import CheckpointDataset

    readers = {node.name for node in pipeline.nodes if "retrained_checkpoint" in node.inputs}
    if "retrained_checkpoint" in pipeline.inputs() and readers == {"predict_validation"}:
        catalog["retrained_checkpoint"] = CheckpointDataset(filepath=path)


class MissingUpstreamError(click.ClickException, RuntimeError):
    """A pipeline was run before the pipeline that produces its inputs (shown by Kedro's command
    line as its one line)."""


class UpstreamCheckHooks:
    """Fail at once, in one line naming the command to run first, when inputs do not exist yet.

    Without this a pipeline run out of order fails deep inside dataset loading with a message
    about a missing file rather than about the missing step.
    """

    @hook_impl(tryfirst=True)  # before kedro-mlflow opens a run, which would stay recorded FINISHED
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        missing = _missing_inputs(pipeline, catalog)
        if not missing:
            return
        registered = lifecycle_pipelines()
        producer, dataset = _latest_producer(missing, registered)
        if producer is None:
            raise MissingUpstreamError(f"input '{dataset}' does not exist and no pipeline produces it")
        # The producer may lack inputs of its own: name every stage to run, earliest first.
        earliest = producer
        while True:
            upstream, _ = _latest_producer(_missing_inputs(registered[earliest], catalog), registered)
            if upstream is None or LIFECYCLE.index(upstream) >= LIFECYCLE.index(earliest):
                break
            earliest = upstream
        stages = LIFECYCLE[LIFECYCLE.index(earliest) : LIFECYCLE.index(producer) + 1]
        if len(stages) == 1:
            raise MissingUpstreamError(f"'{dataset}' does not exist yet: run `kedro run --pipelines={producer}` first")
        raise MissingUpstreamError(
            f"'{dataset}' does not exist yet: run `kedro run --pipelines={','.join(stages)}` first "
            f"(the {producer} pipeline's own inputs are missing too)"
        )


def _missing_inputs(pipeline: Pipeline, catalog: Any) -> list[str]:
    """The pipeline's dataset inputs that do not exist yet (parameters aside)."""
    return [
        name
        for name in sorted(pipeline.inputs())
        if not name.startswith("params:") and name != "parameters" and not catalog.exists(name)
    ]


def _latest_producer(missing: list[str], registered: dict[str, Pipeline]) -> tuple[str | None, str | None]:
    """The latest lifecycle stage that produces one of ``missing``, and that dataset; ``(None,
    name)`` when no stage produces any of them."""
    producers = []
    for name in missing:
        producer = next((stage for stage in LIFECYCLE if name in registered[stage].all_outputs()), None)
        producers.append((LIFECYCLE.index(producer) if producer else -1, producer, name))
    if not producers:
        return None, None
    _, producer, dataset = max(producers)
    return producer, dataset


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class DistributedRankHooks:
    """In a torchrun job every rank runs the pipeline; only rank 0 may write catalog outputs and
    MLflow runs."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline, catalog: Any) -> None:
        if _rank() == 0:
            return
        # kedro-mlflow opens a run in its own before_pipeline_run unless the pipeline is in its
        # disabled list; without a run, the project's metric logging does nothing either.
        try:
            from kedro_mlflow.framework.hooks.mlflow_hook import mlflow_hook

            disabled = mlflow_hook.mlflow_config.tracking.disable_tracking
        except (ImportError, AttributeError) as error:
            # A kedro-mlflow whose internals moved: this rank would record an MLflow run of its own.
            logger.warning("rank %d: could not switch kedro-mlflow off (%s); it may record a run of its own", _rank(), error)
            return
        names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or ["__default__"]
        names = [names] if isinstance(names, str) else list(names)
        disabled.pipelines = sorted(set(disabled.pipelines) | set(names))

    @hook_impl
    def after_catalog_created(self, catalog: Any) -> None:
        if _rank() == 0:
            return
        for name in list(catalog.keys()):
            dataset = catalog.get(name)
            # In-memory hand-overs between nodes must still work on every rank.
            if dataset is not None and type(dataset).__name__ != "MemoryDataset":
                dataset.save = lambda data: None  # rank 0 saves the same data
