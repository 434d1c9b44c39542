"""MLflow runs of consecutive Kedro sessions in one process stay separate."""

import mlflow
from kedro.framework.session import KedroSession

from tests.pipelines.conftest import tiny_runtime_params


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
