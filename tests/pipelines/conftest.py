"""Run pipelines through a real KedroSession in a temporary copy of the project."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Small enough for seconds per pipeline on 2 CPU cores.
TINY_PARAMS = {
    "synthetic.num_train_images": 8,
    "synthetic.num_val_images": 4,
    "synthetic.image_width": 128,
    "synthetic.image_height": 128,
    "sample.input_size": [48, 64],
    "sample.heatmap_size": [12, 16],
    "preview.num_samples": 2,
    "model.backbone": "tiny",
    "model.backbone_kwargs": {"width": 4},
    "model.fabric.factor": 1,
    "search.trainer.epochs": 1,
    "search.trainer.batch_size": 4,
}


def _copy_project(folder: Path) -> None:
    shutil.copytree(PROJECT_ROOT / "conf", folder / "conf", ignore=shutil.ignore_patterns("local"))
    (folder / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", folder / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", folder / ".telemetry")
    (folder / "src").mkdir()  # the package itself is imported from the installed project


@pytest.fixture
def kedro_project(tmp_path, monkeypatch) -> Path:
    """A copy of conf/ and pyproject.toml in a temporary folder that is the working directory."""
    _copy_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    return tmp_path


# What the tests of a finished run read: one retraining epoch, two validation overlays.
FINISHED_RUN_PARAMS = {"derive.latency_repeats": 1, "retrain.trainer.epochs": 1, "evaluate.num_overlays": 2}


@pytest.fixture(scope="session")
def _finished_run(tmp_path_factory) -> Path:
    """search, retrain and evaluate, run once for the session with FINISHED_RUN_PARAMS."""
    project = tmp_path_factory.mktemp("finished_run")
    _copy_project(project)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        bootstrap_project(project)
        for pipeline in ("search", "retrain", "evaluate"):
            run_pipeline(project, pipeline, FINISHED_RUN_PARAMS)
    return project


@pytest.fixture
def finished_project(kedro_project, _finished_run) -> Path:
    """:func:`kedro_project` holding the data of a finished run (its own copy; MLflow's database
    starts empty)."""
    shutil.copytree(_finished_run / "data", kedro_project / "data")
    return kedro_project


def tiny_runtime_params(params: dict | None = None) -> dict:
    """TINY_PARAMS updated with ``params``, as the nested dict KedroSession takes."""
    nested: dict = {}
    for dotted, value in {**TINY_PARAMS, **(params or {})}.items():
        target = nested
        *parents, leaf = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return nested


def run_pipeline(project: Path, pipeline: str, params: dict | None = None, env: str | None = None, **run_kwargs):
    try:
        with KedroSession.create(project_path=project, runtime_params=tiny_runtime_params(params), env=env) as session:
            return session.run(pipeline_names=[pipeline], **run_kwargs)
    finally:
        # A pipeline that fails before kedro-mlflow's error hook runs can leave its run open; the
        # next test in this process must not log into it. (A successful run closes its own run:
        # tests/pipelines/test_tracking.py.)
        while mlflow.active_run() is not None:
            mlflow.end_run()
