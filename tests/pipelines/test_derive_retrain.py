import json

import pytest
import yaml

from pnfs_pipeline.config import ParameterError
from pnfs_pipeline.engine.checkpoint import load_checkpoint
from pnfs_pipeline.hooks import MissingUpstreamError
from pnfs_pipeline.nas.genotype import validate_genotype
from tests.pipelines.conftest import run_pipeline


def test_derive_and_retrain_after_search(kedro_project):
    run_pipeline(kedro_project, "search", {"search.strategy.name": "gumbel"})
    params = {"derive.rule": "threshold", "derive.latency_repeats": 2, "retrain.trainer.epochs": 1}
    data = kedro_project / "data"
    # the search's pretrained backbone file, moved away since, is not needed any more
    searched = data / "07_model_output" / "architecture_parameters.yml"
    architecture = yaml.safe_load(searched.read_text())
    architecture["model"]["pretrained_backbone"] = "moved_away/backbone.pth"
    searched.write_text(yaml.safe_dump(architecture, sort_keys=False))
    run_pipeline(kedro_project, "derive", params)
    genotype_file = next((data / "07_model_output" / "genotype.yml").glob("*/genotype.yml"))
    genotype = validate_genotype(yaml.safe_load(genotype_file.read_text()))
    assert genotype["provenance"]["strategy"] == "gumbel" and genotype["provenance"]["rule"] == "threshold"
    sizes = json.loads((data / "08_reporting" / "size_report.json").read_text())
    assert sizes["derived"]["parameters"] < sizes["supernet"]["parameters"]
    assert sizes["derived"]["macs"] < sizes["supernet"]["macs"]
    assert sizes["derived"]["latency_ms"] > 0
    assert (data / "08_reporting" / "fabric_diagram.png").stat().st_size > 10_000
    assert "cell_" in (data / "08_reporting" / "genotype_summary.txt").read_text()

    with pytest.raises(ValueError, match="retrain.keypoint_sigmas'?: 'hand' is neither a keypoint nor a part"):
        run_pipeline(kedro_project, "retrain", {**params, "retrain.keypoint_sigmas": {"hand": 1.0}})
    with pytest.raises(ParameterError, match="retrain.keypoint_sigmas.head"):
        run_pipeline(kedro_project, "retrain", {**params, "retrain.keypoint_sigmas": {"head": 0}})
    assert not list((data / "06_models" / "retrained.pt").glob("*/retrained.pt"))

    run_pipeline(kedro_project, "retrain", {**params, "retrain.keypoint_sigmas": {"head": 0.75}})
    checkpoint = load_checkpoint(next((data / "06_models" / "retrained.pt").glob("*/retrained.pt")))
    assert checkpoint["config"]["genotype"]["parts"].keys() == genotype["parts"].keys()
    # The retraining's own targets are what the checkpoint records; the search's stay uniform.
    assert checkpoint["config"]["sample"]["keypoint_sigmas"] == {"head": 0.75}
    supernet = load_checkpoint(next((data / "06_models" / "supernet.pt").glob("*/supernet.pt")))
    assert supernet["config"]["sample"]["keypoint_sigmas"] == {}
    history = json.loads((data / "08_reporting" / "retrain_history.json").read_text())
    assert len(history) == 1 and history[0]["val_loss"] > 0

    # A hand-edited genotype (README): retrain from its node, so derive does not replace it.
    versions = sorted((data / "07_model_output" / "genotype.yml").glob("*/genotype.yml"))
    edited = yaml.safe_load(versions[-1].read_text())
    cell = next(iter(edited["parts"]["head"]["cells"].values()))
    cell["ops"] = ["max_pool_3x3"] * len(cell["ops"])
    versions[-1].write_text(yaml.safe_dump(edited, sort_keys=False))
    run_pipeline(kedro_project, "retrain", {**params, "retrain.keypoint_sigmas": None}, from_nodes=["retrain_network"])
    assert sorted((data / "07_model_output" / "genotype.yml").glob("*/genotype.yml")) == versions
    checkpoints = sorted((data / "06_models" / "retrained.pt").glob("*/retrained.pt"))
    assert load_checkpoint(checkpoints[-1])["config"]["genotype"] == edited

    # A hand-edited genotype missing a field is named by its own check, before anything else.
    broken = {**edited, "network": {k: v for k, v in edited["network"].items() if k != "num_keypoints"}}
    versions[-1].write_text(yaml.safe_dump(broken, sort_keys=False))
    with pytest.raises(ValueError, match="genotype: field 'network.num_keypoints'"):
        run_pipeline(kedro_project, "retrain", {**params, "retrain.keypoint_sigmas": None}, from_nodes=["retrain_network"])
    versions[-1].write_text(yaml.safe_dump(edited, sort_keys=False))

    # A supernet searched on another keypoint spec cannot pass its weights on.
    from pnfs_pipeline.engine.checkpoint import save_checkpoint

    supernet_file = next((data / "06_models" / "supernet.pt").glob("*/supernet.pt"))
    other = dict(supernet["config"]["keypoint_spec"], keypoints=list(reversed(supernet["config"]["keypoint_spec"]["keypoints"])))
    save_checkpoint({**supernet, "config": {**supernet["config"], "keypoint_spec": other}}, supernet_file)
    with pytest.raises(ValueError, match=r"supernet_checkpoint was trained on keypoint spec 'coco' .* train_samples holds"):
        run_pipeline(kedro_project, "retrain", {**params, "retrain.keypoint_sigmas": None}, from_nodes=["retrain_network"])


@pytest.mark.parametrize(("pipeline", "command"), [("derive", "search"), ("retrain", "search")])
def test_running_too_early_names_the_commands_to_run_first(kedro_project, pipeline, command):
    with pytest.raises(MissingUpstreamError, match=rf"run `kedro run --pipelines={command}` first"):
        run_pipeline(kedro_project, pipeline)


def test_a_frozen_backbone_stays_frozen_in_retraining(kedro_project):
    frozen = {"model.frozen_backbone": True, "derive.latency_repeats": 1, "retrain.trainer.epochs": 1}
    run_pipeline(kedro_project, "search", frozen)
    run_pipeline(kedro_project, "retrain", frozen)
    models = kedro_project / "data" / "06_models"
    supernet = load_checkpoint(next((models / "supernet.pt").glob("*/supernet.pt")))["model"]
    retrained = load_checkpoint(next((models / "retrained.pt").glob("*/retrained.pt")))
    weights = [k for k in retrained["model"] if k.startswith("backbone.") and k.endswith(".weight")]
    assert weights and all(retrained["model"][k].equal(supernet[k]) for k in weights)
    assert retrained["config"]["frozen_backbone"] is True
    # unfrozen checkpoints carry no such key, as those written before the setting existed, so
    # those resume as before; freezing a resumed run is another setting
    run_pipeline(kedro_project, "retrain", {**frozen, "model.frozen_backbone": False}, from_nodes=["retrain_network"])
    assert "frozen_backbone" not in load_checkpoint("data/06_models/retrain_last.pt")["config"]
    resume = {**frozen, "retrain.resume": True, "retrain.trainer.epochs": 2}
    with pytest.raises(ValueError, match=r"other settings \(frozen_backbone: '\(absent\)' -> True\)"):
        run_pipeline(kedro_project, "retrain", resume, from_nodes=["retrain_network"])
    # the optimizer trained every parameter but the backbone's
    from pnfs_pipeline.nas.derived import DerivedNetwork

    names = [name for name, _ in DerivedNetwork(retrained["config"]["genotype"]).named_parameters()]
    trained = [name for name in names if not name.startswith("backbone.")]
    assert 0 < len(trained) < len(names)
    assert sum(len(group["params"]) for group in retrained["optimizer"]["param_groups"]) == len(trained)
