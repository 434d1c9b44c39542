"""Typed parameters: bad values fail at once, naming the parameter."""

import pytest

from pnfs_pipeline.config import ParameterError, check_parameters


@pytest.mark.parametrize(
    "groups, message",
    [
        ({"model": {"backbone_kwargs": {"foo": 1}}}, r"'model.backbone_kwargs': .*\['foo'\] are not arguments of backbone 'mobilenet_v2'"),
        ({"model": {"fabric": {"size_types": []}}}, r"'model.fabric.size_types': .*one positive width multiple"),
        ({"model": {"fabric": {"size_types": [8, 4]}}}, r"'model.fabric.size_types': .*fine to coarse"),
        ({"sample": {"input_size": [192, 256], "heatmap_size": [24, 32]}}, r"'sample': .*input_size \(192, 256\) / 4"),
        ({"search": {"trainer": {"batch_size": 10, "nproc_per_node": 3}}}, r"'search.trainer': .*batch_size 10 .* nproc_per_node 3"),
        ({"data": {"keypoint_spec": "mpii"}, "model": {"num_parts": 4}}, r"'model.num_parts': keypoint spec 'mpii' groups .* \[1, 3, 5, 8\] parts, not 4"),
        ({"data": {}, "sample": {"keypoint_sigmas": {"hand": 1.0}}}, r"'sample.keypoint_sigmas': 'hand' is neither a keypoint nor a part"),
        ({"data": {}, "search": {"trainer": {"ohkm_topk": 18}}}, r"'search.trainer.ohkm_topk': 18 is more than the 17 keypoints"),
        ({"data": {"keypoint_spec": "nope"}}, r"'data.keypoint_spec'"),
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
