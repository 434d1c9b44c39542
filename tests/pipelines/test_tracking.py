"""MLflow runs of consecutive Kedro sessions in one process stay separate."""


import mlflow
import pytest
from kedro.framework.session import KedroSession

from pnfs_pipeline.hooks import MissingUpstreamError
from tests.pipelines.conftest import run_pipeline, tiny_runtime_params


def test_each_session_closes_its_mlflow_run(kedro_project):
    # With kedro-mlflow's `nested: True` the run was reopened (stacked) before every node and only
    # closed once, so it stayed active: a second session with other parameters then failed with
    # "Changing param values is not allowed" (a notebook or a script running several sessions).
    run_ids = []
    for num_val_images in (4, 3):
        params = tiny_runtime_params({"synthetic.num_val_images": num_val_images})
        with KedroSession.create(project_path=kedro_project, runtime_params=params) as session:
            session.run(pipeline_names=["prepare"])
        assert mlflow.active_run() is None
        runs = mlflow.search_runs(search_all_experiments=True, order_by=["start_time DESC"], max_results=1)
        run_ids.append(runs.iloc[0]["run_id"])
        assert runs.iloc[0]["params.synthetic.num_val_images"] == str(num_val_images)
    assert run_ids[0] != run_ids[1]


def _run_count() -> int:
    # conf/base/mlflow.yml's store; MLflow keeps one engine per URI for the process, so the
    # relative path means the first project's file in every test: compare counts, not totals.
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    return len(mlflow.search_runs(search_all_experiments=True))


def test_a_run_stopped_before_its_first_node_leaves_no_mlflow_run(kedro_project):
    before = _run_count()
    with pytest.raises(MissingUpstreamError):
        run_pipeline(kedro_project, "evaluate")
    assert _run_count() == before  # not a FINISHED run with no metrics


def test_only_rank_zero_opens_an_mlflow_run(kedro_project, monkeypatch):
    before = _run_count()
    run_pipeline(kedro_project, "prepare", {"synthetic.num_val_images": 3})
    assert _run_count() == before + 1
    # another rank of a torchrun job, running a node on the prepared data (README: multi-node)
    monkeypatch.setenv("RANK", "1")
    run_pipeline(kedro_project, "prepare", {"synthetic.num_val_images": 3}, node_names=["summarize_samples"])
    assert _run_count() == before + 1


def test_a_rank_that_cannot_switch_mlflow_off_says_so(monkeypatch, caplog):
    import importlib

    from pnfs_pipeline.hooks import DistributedRankHooks

    module = importlib.import_module("kedro_mlflow.framework.hooks.mlflow_hook")

    monkeypatch.setenv("RANK", "1")
    monkeypatch.delattr(module.mlflow_hook, "mlflow_config", raising=False)  # internals moved
    with caplog.at_level("WARNING", logger="pnfs_pipeline.hooks"):
        DistributedRankHooks().before_pipeline_run({"pipeline_names": ["prepare"]}, None, None)
    assert "rank 1: could not switch kedro-mlflow off" in caplog.text


def test_metric_names_read_as_mlflow_allows_them():
    from pnfs_pipeline.pipelines.tracking import metric_name

    assert metric_name("eval_AP (M)") == "eval_AP M"
    assert metric_name("eval_AP .5") == "eval_AP .5"
    assert metric_name("eval_per_part_AP/head") == "eval_per_part_AP/head"
    assert metric_name("search_loss[part=1]") == "search_loss_part_1_"
