import json

import pytest
import yaml

from pnfs_pipeline.engine.checkpoint import load_checkpoint, save_checkpoint
from pnfs_pipeline.hooks import UnfinishedTrainingError
from tests.pipelines.conftest import run_pipeline


def test_search_runs_alone_on_a_fresh_project(kedro_project):
    run_pipeline(kedro_project, "search", {"search.strategy.name": "darts1", "search.trainer.epochs": 2})
    data = kedro_project / "data"
    architecture = yaml.safe_load((data / "07_model_output" / "architecture_parameters.yml").read_text())
    assert architecture["strategy"] == "darts1"
    assert set(architecture["parts"]) == {"upper_limb", "head", "lower_limb"}
    history = json.loads((data / "08_reporting" / "search_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all("arch_loss" in h and h["val_loss"] > 0 for h in history)
    checkpoint_file = next((data / "06_models" / "supernet.pt").glob("*/supernet.pt"))
    checkpoint = load_checkpoint(checkpoint_file)
    assert checkpoint["epoch"] == 1 and set(checkpoint["architecture"]) == set(architecture["parts"])
    assert checkpoint["config"]["model"]["backbone"] == "tiny"
    assert (data / "08_reporting" / "architecture.png").stat().st_size > 10_000
    # Per-epoch metrics reached MLflow (the store may be shared by this test process).
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, order_by=["start_time DESC"])
    latest = runs.iloc[0]
    assert latest["tags.mlflow.runName"] == "search" and latest["metrics.search_train_loss"] > 0


def test_search_resumes_from_its_last_checkpoint(kedro_project):
    run_pipeline(kedro_project, "search", {"search.trainer.epochs": 1})
    samples = kedro_project / "data" / "05_model_input" / "train_samples.json"
    prepared = samples.stat().st_mtime_ns
    # --from-nodes=search_architecture (README, real data): the persisted samples, no new prepare
    run_pipeline(kedro_project, "search", {"search.trainer.epochs": 2, "search.resume": True}, from_nodes=["search_architecture"])
    assert samples.stat().st_mtime_ns == prepared
    history = json.loads((kedro_project / "data" / "08_reporting" / "search_history.json").read_text())
    # The resumed run trained only epoch 2 and kept epoch 1's record.
    assert [h["epoch"] for h in history] == [1, 2]

    # A run planned for 3 epochs that stopped after 2: a fresh search is refused before its
    # first node, prepare's included, so nothing of the stopped run nor the samples is rewritten.

    last = kedro_project / "data" / "06_models" / "search_last.pt"
    state = load_checkpoint(last)
    save_checkpoint({**state, "config": {**state["config"], "train": {**state["config"]["train"], "epochs": 3}}}, last)
    stopped = last.read_bytes()
    with pytest.raises(UnfinishedTrainingError, match=r"search_last.pt holds a run stopped after epoch 2 of 3.*search.resume=true"):
        run_pipeline(kedro_project, "search", {"search.trainer.epochs": 1})
    assert samples.stat().st_mtime_ns == prepared and last.read_bytes() == stopped
