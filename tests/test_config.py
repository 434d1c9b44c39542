"""Typed parameters: bad values fail at once, naming the parameter."""

import pytest

from pnfs_pipeline.config import ParameterError, check_parameters


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"model": {"backbone_kwargs": {"foo": 1}}}, r"'model.backbone_kwargs': .*\['foo'\] are not arguments of backbone 'mobilenet_v2'"),
        ({"model": {"backbone": "tiny", "backbone_kwargs": {"width": "abc"}}}, r"'model.backbone_kwargs': .*width of backbone 'tiny' must be a positive integer, got 'abc'"),
        ({"model": {"backbone": "tiny", "backbone_kwargs": {"width": 0}}}, r"'model.backbone_kwargs': .*width .* positive integer, got 0"),
        ({"model": {"backbone": "fabric", "backbone_kwargs": {"operators": "sep_conv_3x3"}}}, r"'model.backbone_kwargs': .*operators of backbone 'fabric' must be a list"),
        ({"model": {"fabric": {"size_types": []}}}, r"'model.fabric.size_types': .*one positive width multiple"),
        ({"model": {"fabric": {"size_types": [8, 4]}}}, r"'model.fabric.size_types': .*fine to coarse"),
        ({"sample": {"input_size": [192, 256], "heatmap_size": [24, 32]}}, r"'sample': .*input_size \(192, 256\) / 4"),
        ({"search": {"trainer": {"batch_size": 10, "nproc_per_node": 3}}}, r"'search.trainer': .*batch_size 10 .* nproc_per_node 3"),
        ({"data": {"keypoint_spec": "mpii"}, "model": {"num_parts": 4}}, r"'model.num_parts': keypoint spec 'mpii' groups .* \[1, 3, 5, 8\] parts, not 4"),
        ({"data": {}, "sample": {"keypoint_sigmas": {"hand": 1.0}}}, r"'sample.keypoint_sigmas': 'hand' is neither a keypoint nor a part"),
        ({"data": {}, "search": {"trainer": {"ohkm_topk": 18}}}, r"'search.trainer.ohkm_topk': 18 is more than the 17 keypoints"),
        ({"data": {"keypoint_spec": "nope"}}, r"'data.keypoint_spec'"),
        # values that passed every bound and failed, or trained nothing, much later
        ({"retrain": None}, r"'retrain': is null"),
        ({"sample": {"sigma": float("inf")}}, r"'sample.sigma': .*finite"),
        ({"search": {"trainer": {"lr": float("nan")}}}, r"'search.trainer.lr': .*finite"),
        ({"retrain": {"trainer": {"lr_steps": [0, 2]}}}, r"'retrain.trainer': .*lr_steps \[0, 2\]"),
        ({"retrain": {"trainer": {"lr_steps": [2, 2]}}}, r"'retrain.trainer': .*lr_steps \[2, 2\] must increase"),
        ({"retrain": {"trainer": {"scheduler": "cosine", "lr_steps": [2]}}}, r"cosine would ignore them"),
        ({"retrain": {"trainer": {"scheduler": "cosine", "lr": 0.004, "lr_min": 0.01}}}, r"lr_min 0.01 is above lr 0.004"),
        ({"retrain": {"trainer": {"lr_factor": 4.0}}}, r"'retrain.trainer.lr_factor'"),
        ({"retrain": {"trainer": {"optimizer": "sgd", "momentum": 1.0}}}, r"'retrain.trainer.momentum'"),
        ({"search": {"trainer": {"epochs": 2}, "strategy": {"arch_warmup_epochs": 2}}}, r"'search': .*arch_warmup_epochs 2 leaves none of the 2 epochs"),
        ({"search": {"strategy": {"gumbel_tau_min": 20.0}}}, r"'search.strategy': .*gumbel_tau_min 20.0 is above gumbel_tau_max"),
        ({"retrain": {"checkpoint_path": "data"}}, r"'retrain.checkpoint_path': .*must name a file"),
        ({"search": {"checkpoint_path": ""}}, r"'search.checkpoint_path': .*must name a file"),
        ({"evaluate": {"seed": -1}}, r"'evaluate.seed'"),
        ({"data": {"subset_seed": -1}}, r"'data.subset_seed'"),
        ({"synthetic": {"max_people": 51}}, r"'synthetic.max_people'"),
        ({"search": {}, "model": {"pretrained_backbone": "nowhere/mobilenet.pth"}}, r"'model.pretrained_backbone': no file nowhere/mobilenet.pth"),
        ({"retrain": {"init": "scratch"}, "model": {"pretrained_backbone": "gone.pth"}}, r"'model.pretrained_backbone': no file gone.pth"),
        ({"predict": {"boxes_file": "nowhere/boxes.json"}}, r"'predict.boxes_file': no file nowhere/boxes.json"),
        ({"data": {}, "augmentation": {"half_body_min_joints": 17}}, r"'augmentation.half_body_min_joints': 17 is not below the 17 keypoints"),
        ({"data": {"source": "synthetic_mpii", "keypoint_spec": "mpii"}, "synthetic": {"mpii": False}}, r"'synthetic.mpii': false, but data.source is synthetic_mpii"),
        # YAML booleans, which pydantic would read as 1 / 0
        ({"search": {"trainer": {"epochs": True}}}, r"'search.trainer.epochs': .*a boolean where int is expected"),
        ({"retrain": {"trainer": {"max_steps_per_epoch": False}}}, r"'retrain.trainer.max_steps_per_epoch': .*a boolean where"),
        ({"sample": {"input_size": [192, True]}}, r"'sample.input_size': .*a boolean in \[192, true\] where tuple\[int, int\]"),
        ({"evaluate": {"crop_scales": [1.0, False]}}, r"'evaluate.crop_scales': .*a boolean in \[1.0, false\]"),
        ({"sample": {"keypoint_sigmas": {"nose": True}}}, r"'sample.keypoint_sigmas': .*a boolean in \{'nose': true\} where dict\[str, float\] is expected \(a number"),
        ({"evaluate": {"checkpoint": False}}, r"'evaluate.checkpoint': .*a boolean where str \| None is expected$"),
    ],
)
def test_bad_parameters_are_named(groups, message):
    with pytest.raises(ParameterError, match=message):
        check_parameters(groups)


def test_every_problem_is_reported_at_once_and_good_groups_parse():
    with pytest.raises(ParameterError) as error:
        check_parameters({"derive": {"rul": "path"}, "evaluate": {"batch_size": 0}, "predict": {}})
    assert "'derive.rul'" in str(error.value) and "'evaluate.batch_size'" in str(error.value)
    parsed = check_parameters({"data": {}, "model": {"backbone": "tiny", "backbone_kwargs": {"width": 8}}})
    assert parsed["model"].backbone_kwargs == {"width": 8}


def test_cuda_is_refused_by_name_where_there_is_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParameterError, match=r"'retrain.trainer.device': 'cuda', but this machine has no CUDA device"):
        check_parameters({"retrain": {"trainer": {"device": "cuda"}}, "evaluate": {"device": "auto"}})
    check_parameters({"retrain": {"trainer": {"device": "auto"}}})


def test_more_launched_workers_than_gpus_are_refused_by_name(monkeypatch):
    """NCCL refuses two workers on one GPU only at its first collective, with no word of the setting."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ParameterError, match=r"'search.trainer.nproc_per_node': 4 workers, but this machine shows 2 GPU\(s\)"):
        check_parameters({"search": {"trainer": {"nproc_per_node": 4, "batch_size": 8}}})  # device auto: the GPUs
    check_parameters({"search": {"trainer": {"nproc_per_node": 2, "batch_size": 8}}})
    check_parameters({"retrain": {"trainer": {"nproc_per_node": 4, "batch_size": 8, "device": "cpu"}}})
    monkeypatch.setenv("WORLD_SIZE", "8")  # under torchrun the trainer joins its job: nproc_per_node is unused
    check_parameters({"search": {"trainer": {"nproc_per_node": 4, "batch_size": 8}}})


def test_each_local_rank_takes_a_gpu_of_its_own(monkeypatch):
    from pnfs_pipeline.engine.distributed import gpu_of_local_rank

    assert [gpu_of_local_rank(rank, 4) for rank in range(4)] == [0, 1, 2, 3]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_of_local_rank(3, 1) == 0  # SLURM: each process sees only its own GPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(RuntimeError, match=r"4 workers on this machine share its only GPU"):
        gpu_of_local_rank(3, 1)
    with pytest.raises(RuntimeError, match=r"local rank 2 has no GPU of its own: this machine shows 2 GPUs"):
        gpu_of_local_rank(2, 2)


def test_settings_that_look_odd_but_serve_a_purpose_pass():
    # steps past the epochs: a resumed run of the seed's schedule (steps 90, 120, 150) ending sooner
    check_parameters({"search": {"trainer": {"epochs": 140, "lr_steps": [90, 120, 150]}}})
    # a pipeline that does not load the backbone's weights does not need their file any more
    check_parameters({"data": {}, "evaluate": {}, "model": {"pretrained_backbone": "moved_away.pth"}})
    check_parameters({"retrain": {"init": "inherit"}, "model": {"pretrained_backbone": "moved_away.pth"}})
    # booleans where a field takes them, and numbers beside them
    parsed = check_parameters({"search": {"trainer": {"channels_last": True, "max_steps_per_epoch": None, "lr": 1}}})
    assert parsed["search"].trainer.channels_last is True and parsed["search"].trainer.lr == 1.0
