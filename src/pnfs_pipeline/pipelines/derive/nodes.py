"""Nodes of the ``derive`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import torch
from matplotlib.figure import Figure

from pnfs_pipeline.config import DeriveParams, ModelParams, SampleParams, parse_params
from pnfs_pipeline.keypoints import keypoint_spec_from_dict
from pnfs_pipeline.nas.derived import DerivedNetwork
from pnfs_pipeline.nas.genotype import derive_genotype
from pnfs_pipeline.nas.profile import count_macs, count_parameters, measure_latency
from pnfs_pipeline.nas.supernet import build_supernet
from pnfs_pipeline.pipelines.tracking import log_metrics
from pnfs_pipeline.viz.fabric_diagram import genotype_summary, plot_fabric_diagrams

logger = logging.getLogger(__name__)


def make_genotype(architecture_parameters: dict[str, Any], derive: dict[str, Any]) -> dict[str, Any]:
    params = parse_params(DeriveParams, derive, "derive")
    genotype = derive_genotype(
        architecture_parameters,
        architecture_parameters["network"],
        rule=params.rule,
        threshold=params.threshold,
        provenance={"search": architecture_parameters.get("provenance", {})},
    )
    kept = {part: len(info["cells"]) for part, info in genotype["parts"].items()}
    logger.info("genotype (%s rule): kept cells per part %s", params.rule, kept)
    return genotype


def report_sizes(
    genotype: dict[str, Any],
    architecture_parameters: dict[str, Any],
    train_samples: dict[str, Any],
    sample: dict[str, Any],
    derive: dict[str, Any],
) -> dict[str, Any]:
    """Parameters, MACs and CPU latency (batch 1) of the supernet and the derived network."""
    params = parse_params(DeriveParams, derive, "derive")
    sample_params = parse_params(SampleParams, sample, "sample")
    spec = keypoint_spec_from_dict(train_samples["keypoint_spec"], source="train_samples")
    model_params = parse_params(ModelParams, architecture_parameters["model"], "architecture_parameters.model")
    # Sizes need no trained weights: the search's pretrained file may have moved since.
    model_params = model_params.model_copy(update={"pretrained_backbone": None})
    threads = torch.get_num_threads()
    if params.latency_threads:
        torch.set_num_threads(params.latency_threads)
    try:
        report: dict[str, Any] = {"input_size": list(sample_params.input_size), "threads": torch.get_num_threads()}
        for name, network in (
            ("supernet", build_supernet(spec, model_params)),
            ("derived", DerivedNetwork(genotype)),
        ):
            report[name] = {
                "parameters": count_parameters(network),
                "macs": count_macs(network, sample_params.input_size),
                "latency_ms": 1e3 * measure_latency(network, sample_params.input_size, repeats=params.latency_repeats),
            }
    finally:
        torch.set_num_threads(threads)
    for key in ("parameters", "macs", "latency_ms"):
        report[f"derived_over_supernet_{key}"] = report["derived"][key] / report["supernet"][key]
    logger.info(
        "supernet %.2f M params %.3f GMACs %.1f ms | derived %.2f M params %.3f GMACs %.1f ms",
        report["supernet"]["parameters"] / 1e6,
        report["supernet"]["macs"] / 1e9,
        report["supernet"]["latency_ms"],
        report["derived"]["parameters"] / 1e6,
        report["derived"]["macs"] / 1e9,
        report["derived"]["latency_ms"],
    )
    log_metrics(
        {f"{net}_{k}": v for net in ("supernet", "derived") for k, v in report[net].items()}
    )
    return report


def draw_genotype(
    genotype: dict[str, Any], architecture_parameters: dict[str, Any], size_report: dict[str, Any]
) -> tuple[Figure, str]:
    sizes = {
        "supernet": size_report["supernet"],
        "derived": size_report["derived"],
        "input_size": size_report["input_size"],
    }
    return plot_fabric_diagrams(genotype, architecture_parameters), genotype_summary(genotype, sizes)
