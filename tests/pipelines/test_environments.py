"""The real-data environments (conf/coco, conf/mpii) merge over conf/base into valid parameters."""

import json
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader

from pnfs_pipeline.config import (
    PARAMETER_GROUPS,
    AugmentationParams,
    DataParams,
    EvaluateParams,
    ModelParams,
    RetrainParams,
    SampleParams,
    SearchParams,
    check_parameters,
    parse_params,
)
from pnfs_pipeline.settings import CONFIG_LOADER_ARGS

CONF = Path(__file__).resolve().parents[2] / "conf"


def _parameters(env: str) -> dict:
    loader = OmegaConfigLoader(conf_source=str(CONF), env=env, **CONFIG_LOADER_ARGS)
    return loader["parameters"]


@pytest.mark.parametrize("env, backbone", [("coco", "mobilenet_v2"), ("mpii", "hrnet_w32")])
def test_real_data_environment_has_the_seed_schedule(env, backbone):
    params = _parameters(env)
    assert parse_params(DataParams, params["data"], "data").source == env
    assert parse_params(ModelParams, params["model"], "model").backbone == backbone
    parse_params(SampleParams, params["sample"], "sample")
    parse_params(AugmentationParams, params["augmentation"], "augmentation")
    search = parse_params(SearchParams, params["search"], "search")
    retrain = parse_params(RetrainParams, params["retrain"], "retrain")
    for trainer in (search.trainer, retrain.trainer):
        assert (trainer.epochs, trainer.batch_size, trainer.lr) == (200, 24, 0.001)
        assert trainer.scheduler == "multistep" and list(trainer.lr_steps) == [90, 120, 150]
        assert trainer.heatmap_foreground_weight == 0.0
    # The paper's targets: one sigma for every keypoint, in search and retraining alike (the
    # synthetic default's narrow head targets must not leak in through the soft merge).
    assert retrain.keypoint_sigmas is None and not parse_params(SampleParams, params["sample"], "sample").keypoint_sigmas
    # Real data decodes as the reference code does, so its scores compare with the paper's.
    assert parse_params(EvaluateParams, params["evaluate"], "evaluate").decode == "argmax"
    # The original's sync search: architecture parameters at the weights' rate, no decay.
    assert search.strategy.name == "sync"
    assert (search.strategy.arch_lr, search.strategy.arch_weight_decay) == (search.trainer.lr, 0.0)
    # Keys the environment does not set still come from conf/base (soft merge).
    assert search.strategy.split_for_train == params["search"]["strategy"]["split_for_train"] == 2
    # and the whole environment passes the up-front checks, cross-group ones included
    check_parameters({name: params[name] for name in PARAMETER_GROUPS if name in params})


@pytest.fixture(scope="module")
def real_layout_root(tmp_path_factory) -> Path:
    """A small dataset in COCO's layout (with a detections file) and in MPII's (HRNet JSON)."""
    from pnfs_pipeline.data.synthetic import SyntheticConfig, generate_synthetic_dataset

    root = tmp_path_factory.mktemp("real_layouts")
    generate_synthetic_dataset(root, SyntheticConfig(seed=3, num_train_images=6, num_val_images=3, image_width=192, image_height=160))
    return root


@pytest.mark.parametrize(
    "env, subfolder, extra, scores",
    [
        ("coco", ".", {"evaluate.boxes": "detections"}, {"AP", "AP .5", "AR"}),
        ("mpii", "mpii", {}, {"Head", "Mean", "Mean@0.1"}),
    ],
)
def test_real_data_environment_runs_end_to_end(kedro_project, real_layout_root, env, subfolder, extra, scores):
    """The parameter checks see the merged configuration; this runs it: the environment's own
    backbone, reader and metric through the default pipeline, at a small input and one step."""
    from tests.pipelines.conftest import run_pipeline

    model = _parameters(env)["model"]  # as merged for a user (the test runs override the base's tiny one)
    params = {
        "data.root": str(real_layout_root / subfolder),
        "model.backbone": model["backbone"],
        "model.backbone_kwargs": model["backbone_kwargs"],
        "sample.input_size": [64, 64],
        "sample.heatmap_size": [16, 16],
        "search.trainer.batch_size": 4,
        "search.trainer.max_steps_per_epoch": 1,
        "retrain.trainer.epochs": 1,
        "retrain.trainer.batch_size": 4,
        "retrain.trainer.max_steps_per_epoch": 1,
        "derive.latency_repeats": 1,
        **extra,
    }
    run_pipeline(kedro_project, "__default__", params, env=env)
    data = kedro_project / "data"
    genotype = yaml.safe_load(next((data / "07_model_output" / "genotype.yml").glob("*/genotype.yml")).read_text())
    assert genotype["network"]["backbone"] == params["model.backbone"]
    assert len(genotype["parts"]) == model["num_parts"]
    metrics = json.loads((data / "08_reporting" / "evaluation_metrics.json").read_text())
    assert scores <= set(metrics["overall"])
    assert metrics["boxes"] == extra.get("evaluate.boxes", "ground_truth")
    assert metrics["flip_shift"] == "none"  # the original PNFS code's flip test
