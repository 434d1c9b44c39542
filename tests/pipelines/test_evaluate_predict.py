import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pnfs_pipeline.config import ParameterError
from pnfs_pipeline.data.dataset import ImageReadError
from pnfs_pipeline.hooks import MissingUpstreamError
from tests.pipelines.conftest import FINISHED_RUN_PARAMS, run_pipeline

FAST = FINISHED_RUN_PARAMS


def test_evaluate_and_predict_after_retrain(finished_project):
    kedro_project = finished_project  # search, retrain and evaluate have run
    data = kedro_project / "data"
    metrics = json.loads((data / "08_reporting" / "evaluation_metrics.json").read_text())
    assert set(metrics["overall"]) >= {"AP", "AP .5", "AR"} and 0.0 <= metrics["overall"]["AP"] <= 1.0
    assert set(metrics["per_part_AP"]) == {"upper_limb", "head", "lower_limb"}
    assert len(metrics["per_keypoint_AP"]) == 17
    assert (data / "08_reporting" / "validation_overlays.png").stat().st_size > 10_000
    results = json.loads((data / "07_model_output" / "val_keypoint_results.json").read_text())
    assert results and len(results[0]["keypoints"]) == 51
    # the report names the scored network and the search its genotype came from
    import yaml

    genotype = yaml.safe_load(next((data / "07_model_output" / "genotype.yml").glob("*/genotype.yml")).read_text())
    network = metrics["network"]
    assert network["kind"] == "derived" and network["trained_epochs"] == 1
    assert network["search_finished_at"] == genotype["provenance"]["search"]["finished_at"]
    assert network["cells_per_part"] == {part: len(info["cells"]) for part, info in genotype["parts"].items()}

    # Detected boxes instead of ground-truth ones.
    run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.boxes": "detections", "evaluate.flip_test": False})
    assert json.loads((data / "08_reporting" / "evaluation_metrics.json").read_text())["boxes"] == "detections"

    # predict: a folder of images, the whole image as the box; its .gitkeep is no image, and
    # images of one name in two subfolders are two images.
    images = sorted((data / "01_raw" / "synthetic" / "images" / "val2017").glob("*.jpg"))[:2]
    folder = data / "01_raw" / "predict_images"
    for subfolder in ("crowd", "solo"):
        (folder / subfolder).mkdir(parents=True)
        shutil.copy(images[0], folder / subfolder / "person.jpg")
    (folder / ".gitkeep").touch()
    (folder / "crowd" / "notes.txt").write_text("taken on the 3rd")  # not an image: left out
    run_pipeline(kedro_project, "predict", FAST)
    predicted = json.loads((data / "07_model_output" / "predicted_keypoints.json").read_text())
    assert [p["file_name"] for p in predicted] == ["crowd/person.jpg", "solo/person.jpg"]
    assert predicted[0]["keypoints"] == predicted[1]["keypoints"]
    overlays = sorted((data / "08_reporting" / "predict_overlays").rglob("*.png"))
    assert [str(o.relative_to(data / "08_reporting" / "predict_overlays")) for o in overlays] == ["crowd/person.png", "solo/person.png"]
    (folder / "solo" / "broken.jpg").write_bytes(b"not a JPEG")
    with pytest.raises(ImageReadError, match="predict_images/solo/broken.jpg: cannot be read as an image"):
        run_pipeline(kedro_project, "predict", FAST)
    for subfolder in ("crowd", "solo"):
        shutil.rmtree(folder / subfolder)

    for image in images:
        shutil.copy(image, folder / image.name)
    run_pipeline(kedro_project, "predict", FAST)
    predicted = json.loads((data / "07_model_output" / "predicted_keypoints.json").read_text())
    assert [p["file_name"] for p in predicted] == [i.name for i in images]
    assert all(len(p["keypoints"]) == 51 for p in predicted)
    overlays = sorted((data / "08_reporting" / "predict_overlays").rglob("*.png"))
    assert [o.stem for o in overlays] == [i.stem for i in images]

    # ... and with a boxes file.
    boxes = [{"file_name": images[0].name, "bbox": [10, 10, 80, 150], "score": 0.9}]
    (kedro_project / "boxes.json").write_text(json.dumps(boxes))
    run_pipeline(kedro_project, "predict", {**FAST, "predict.boxes_file": "boxes.json"})
    predicted = json.loads((data / "07_model_output" / "predicted_keypoints.json").read_text())
    assert len(predicted) == 1 and predicted[0]["file_name"] == images[0].name
    # the overlays are this run's only
    assert [o.stem for o in sorted((data / "08_reporting" / "predict_overlays").glob("*.png"))] == [images[0].stem]
    # two images of one stem keep two overlays
    shutil.copy(images[0], data / "01_raw" / "predict_images" / f"{images[0].stem}.png")
    run_pipeline(kedro_project, "predict", FAST)
    overlays = {o.stem for o in (data / "08_reporting" / "predict_overlays").glob("*.png")}
    assert overlays == {f"{images[0].stem}_jpg", f"{images[0].stem}_png", images[1].stem}

    # evaluate.checkpoint scores any checkpoint file, with no retrained model in the catalog.
    chosen = kedro_project / "elsewhere" / "model.pt"
    chosen.parent.mkdir()
    shutil.move(next((data / "06_models" / "retrained.pt").glob("*/retrained.pt")), chosen)
    shutil.rmtree(data / "06_models" / "retrained.pt")
    with pytest.raises(ParameterError, match=r"'evaluate.checkpoint': no file elsewhere/missing.pt"):
        run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.checkpoint": "elsewhere/missing.pt"})
    run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.checkpoint": "elsewhere/model.pt"})
    assert json.loads((data / "08_reporting" / "evaluation_metrics.json").read_text())["checkpoint"] == "elsewhere/model.pt"
    # ... the searched supernet itself too, as the original code evaluates (README)
    supernet = next((data / "06_models" / "supernet.pt").glob("*/supernet.pt")).relative_to(kedro_project)
    run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.checkpoint": str(supernet)})
    metrics = json.loads((data / "08_reporting" / "evaluation_metrics.json").read_text())
    assert metrics["checkpoint"] == str(supernet) and 0.0 <= metrics["overall"]["AP"] <= 1.0
    assert metrics["network"]["kind"] == "supernet"

    # A model of another keypoint spec, or a file that is not one of our checkpoints, is refused by name.
    from pnfs_pipeline.engine.checkpoint import load_checkpoint, save_checkpoint
    from pnfs_pipeline.keypoints import load_keypoint_spec

    state = load_checkpoint(chosen)
    reordered = load_keypoint_spec("coco").to_dict()
    reordered["keypoints"][1:3] = reordered["keypoints"][2:0:-1]  # left and right eye swapped
    save_checkpoint({**state, "config": {**state["config"], "keypoint_spec": reordered}}, chosen.with_name("swapped.pt"))
    with pytest.raises(ValueError, match=r"elsewhere/swapped.pt was trained on keypoint spec 'coco' \(17 keypoints\), val_samples .* differ in keypoints"):
        run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.checkpoint": "elsewhere/swapped.pt"})
    broken = {**state["config"]["genotype"], "parts": {}}
    save_checkpoint({**state, "config": {**state["config"], "genotype": broken}}, chosen.with_name("broken.pt"))
    with pytest.raises(ValueError, match=r"elsewhere/broken.pt \(its genotype\): field 'parts'"):
        run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.checkpoint": "elsewhere/broken.pt"})
    save_checkpoint(state["model"], chosen.with_name("weights_only.pt"))
    with pytest.raises(ValueError, match=r"elsewhere/weights_only.pt: not a checkpoint of this project"):
        run_pipeline(kedro_project, "evaluate", {**FAST, "evaluate.checkpoint": "elsewhere/weights_only.pt"})


def test_evaluate_before_a_model_exists_names_every_stage_to_run(kedro_project):
    # retrain makes the model, but needs derive's genotype and search's supernet first
    expected = "'retrained_checkpoint' does not exist yet: run `kedro run --pipelines=search,derive,retrain` first"
    with pytest.raises(MissingUpstreamError, match=re.escape(expected)):
        run_pipeline(kedro_project, "evaluate")


@pytest.mark.slow
def test_the_command_line_shows_a_missing_step_or_a_bad_name_as_one_line(kedro_project):
    """Not a traceback of ~140 lines through the hook machinery with the message at its end."""
    kedro = Path(sys.executable).with_name("kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    expected = {
        "--pipelines=evaluate": "Error: 'retrained_checkpoint' does not exist yet: run `kedro run --pipelines=",
        "--pipelines=serach": "Error: no pipeline named 'serach': did you mean 'search'?",
        "--params=search.trainer.epochz=2": "Error: invalid parameters:\n  parameter 'search.trainer.epochz'",
    }
    # Side by side, each in a copy of the project (two sessions creating one MLflow database at
    # once collide in its schema migration): a command spends most of its time importing.
    commands = {}
    for position, argument in enumerate(expected):
        project = kedro_project.with_name(f"{kedro_project.name}_{position}")
        shutil.copytree(kedro_project, project)
        commands[argument] = subprocess.Popen(
            [str(kedro), "run", argument, *(["--pipelines=search"] if argument.startswith("--params") else [])],
            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    try:
        for argument, command in commands.items():
            stdout, stderr = command.communicate(timeout=300)
            assert command.returncode == 1, (argument, stderr[-2000:])
            assert expected[argument] in stderr, stderr[-2000:]
            assert "Traceback" not in stderr and "╭" not in stderr
            assert "register_new_resolver" not in stdout + stderr  # dependencies' deprecation, filtered
    finally:
        for command in commands.values():  # none left loading the machine after a failure
            command.kill()
            command.wait()


def test_mpii_evaluation_reports_pckh(kedro_project):
    mpii = {
        **FAST,
        "data.source": "synthetic_mpii",
        "data.keypoint_spec": "mpii",
        "sample.input_size": [64, 64],
        "sample.heatmap_size": [16, 16],
    }
    run_pipeline(kedro_project, "search", mpii)
    run_pipeline(kedro_project, "retrain", mpii)
    run_pipeline(kedro_project, "evaluate", mpii)
    metrics = json.loads((kedro_project / "data" / "08_reporting" / "evaluation_metrics.json").read_text())
    assert set(metrics["overall"]) == {"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1", "Mean@0.11"}
    assert 0.0 <= metrics["overall"]["Mean"] <= 100.0


def test_overlay_titles_give_the_score_coco_ranks_people_by(coco_root):
    from pnfs_pipeline.config import SampleParams
    from pnfs_pipeline.pipelines.evaluate.nodes import plot_validation_overlays
    from tests.conftest import coco_sample_indexes

    val = coco_sample_indexes(coco_root, SampleParams(input_size=(48, 64), heatmap_size=(12, 16)))["val"]
    count = len(val["samples"])
    keypoints = np.zeros((count, 17, 3))
    keypoints[..., 2] = 0.1  # below vis_threshold 0.2: not in the score
    keypoints[:, :4, 2] = 0.9
    predictions = {"boxes": "ground_truth", "keypoints": keypoints, "indices": np.arange(count), "scores": np.full(count, 0.5)}
    figure = plot_validation_overlays(predictions, val, val, {"num_overlays": count})
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert len(titles) == count
    assert all(title.endswith("score 0.45") for title in titles), titles  # 0.5 x 0.9, not the mean 0.29


def test_predict_decodes_each_image_a_few_times_not_once_per_crop(monkeypatch):
    """Images are decoded on demand (a folder of photos need not fit in memory), but a batch's
    images stay decoded while every crop scale reads them: one decode for the image's size, one
    for the crops, one for the overlay drawn as it is saved."""
    import collections

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from PIL import Image

    import pnfs_pipeline.pipelines.predict.nodes as nodes
    from pnfs_pipeline.keypoints import load_keypoint_spec
    from tests.evaluation.test_evaluation import _BrightnessAtStride

    monkeypatch.setattr(nodes, "network_from_checkpoint", lambda checkpoint, source: _BrightnessAtStride())
    decodes = collections.Counter()

    def loader(name):
        def load():
            decodes[name] += 1
            return Image.fromarray(np.full((96, 72, 3), 40, np.uint8))

        return load

    images = {f"{i:02d}.jpg": loader(f"{i:02d}.jpg") for i in range(9)}
    checkpoint = {"config": {"keypoint_spec": load_keypoint_spec("coco").to_dict(), "sample": {"input_size": [48, 64], "heatmap_size": [12, 16]}}}
    params = {"batch_size": 8, "crop_scales": [1.0, 0.9, 0.8], "device": "cpu"}
    results, overlays = nodes.predict_images(images, checkpoint, params)
    assert len(results) == 9 and sorted(decodes) == sorted(images)
    assert max(decodes.values()) <= 2  # its size, its crops at three scales
    for make in overlays.values():  # as Kedro's PartitionedDataset saves them, one at a time
        figure = make()
        assert isinstance(figure, Figure)
        plt.close(figure)
    assert max(decodes.values()) <= 3
