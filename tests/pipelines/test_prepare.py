import json
from pathlib import Path

import pytest

from pnfs_pipeline.data.records import BadInputError
from tests.pipelines.conftest import run_pipeline


def test_prepare_writes_indexes_report_and_preview(kedro_project):
    run_pipeline(kedro_project, "prepare")
    data = kedro_project / "data"
    train = json.loads((data / "05_model_input" / "train_samples.json").read_text())
    summary = json.loads((data / "08_reporting" / "data_summary.json").read_text())
    assert train["num_samples"] == summary["train"]["num_samples"] > 0
    assert summary["val_detections"]["num_samples"] > 0
    assert (data / "08_reporting" / "sample_preview.png").stat().st_size > 10_000
    report = json.loads((data / "08_reporting" / "validation_report.json").read_text())
    assert report["num_bad_records"] == 0

    # A second run with the same parameters does not regenerate the synthetic images.
    image = next((data / "01_raw" / "synthetic" / "images" / "train2017").glob("*.jpg"))
    stamp = image.stat().st_mtime_ns
    run_pipeline(kedro_project, "prepare")
    assert image.stat().st_mtime_ns == stamp


def test_bad_record_in_fail_mode_stops_and_keeps_earlier_outputs(kedro_project):
    run_pipeline(kedro_project, "prepare")
    train_index = kedro_project / "data" / "05_model_input" / "train_samples.json"
    before = train_index.read_bytes()
    annotations = kedro_project / "data" / "01_raw" / "synthetic" / "annotations" / "person_keypoints_train2017.json"
    content = json.loads(annotations.read_text())
    content["annotations"][0]["keypoints"] = content["annotations"][0]["keypoints"][:-3]
    # Break the manifest's check so the edit survives (a user's own dataset would not be regenerated).
    annotations.write_text(json.dumps(content))
    source = {"data.source": "coco", "data.root": "data/01_raw/synthetic", "data.on_bad_record": "fail"}
    with pytest.raises(BadInputError, match=r"person_keypoints_train2017.json \[record \d+\]: wrong keypoint count"):
        run_pipeline(kedro_project, "prepare", source)
    assert train_index.read_bytes() == before
    # In skip mode the record is reported and the run goes on.
    run_pipeline(kedro_project, "prepare", {**source, "data.on_bad_record": "skip"})
    report = json.loads((kedro_project / "data" / "08_reporting" / "validation_report.json").read_text())
    assert report["num_bad_records"] == 1 and "wrong keypoint count" in report["records"][0]["reason"]


def test_mpii_variant_runs_through_prepare(kedro_project):
    run_pipeline(
        kedro_project,
        "prepare",
        {"data.source": "synthetic_mpii", "data.keypoint_spec": "mpii", "sample.input_size": [64, 64], "sample.heatmap_size": [16, 16]},
    )
    val = json.loads((kedro_project / "data" / "05_model_input" / "val_samples.json").read_text())
    assert val["keypoint_spec"]["name"] == "mpii" and len(val["samples"][0]["keypoints"]) == 16
    assert "head_box" in val["samples"][0]


def test_unknown_parameter_fails_naming_it(kedro_project):
    from pnfs_pipeline.config import ParameterError

    with pytest.raises(ParameterError, match=r"parameter 'sample.sigmaa': Extra inputs are not permitted"):
        run_pipeline(kedro_project, "prepare", {"sample.sigmaa": 3})


@pytest.mark.parametrize(
    "pipeline, params, message",
    [
        ("derive", {"derive.rul": "path"}, r"parameter 'derive.rul': Extra inputs"),
        ("search", {"model.num_parts": 2}, r"parameter 'model.num_parts': keypoint spec 'coco' groups .* not 2"),
        ("search", {"sample.heatmap_size": [9, 12]}, r"parameter 'sample': .* must be input_size .* / 4"),
        ("__default__", {"retrain.trainer.ohkm_topk": 40, "derive.threshold": 2}, r"(?s)derive.threshold.*retrain.trainer.ohkm_topk"),
    ],
)
def test_every_parameter_group_is_checked_before_the_first_node(kedro_project, pipeline, params, message):
    from pnfs_pipeline.config import ParameterError

    with pytest.raises(ParameterError, match=message):
        run_pipeline(kedro_project, pipeline, params)
    data = kedro_project / "data"
    assert not data.exists() or not any(p.is_file() for p in data.rglob("*"))  # nothing ran, nothing written


def test_a_misspelled_parameter_group_is_named(kedro_project):
    from pnfs_pipeline.config import ParameterError

    with pytest.raises(ParameterError, match=r"parameter 'sampel': no such parameter group"):
        run_pipeline(kedro_project, "prepare", {"sampel.sigma": 3})


def test_a_session_started_in_a_subfolder_works_in_the_project_folder(kedro_project, monkeypatch):
    """Jupyter starts a notebook's kernel in notebooks/: the synthetic images, the indexes' image
    roots and the MLflow store belong to the project folder all the same."""
    notebooks = kedro_project / "notebooks"
    notebooks.mkdir()
    monkeypatch.chdir(notebooks)
    run_pipeline(kedro_project, "prepare")
    assert Path.cwd() == kedro_project.resolve()
    assert not any(notebooks.iterdir())  # no notebooks/data, no notebooks/mlflow.db
    index = json.loads((kedro_project / "data" / "05_model_input" / "val_samples.json").read_text())
    assert (kedro_project / index["image_root"] / index["samples"][0]["image"]).is_file()
