"""The ``derive`` pipeline: runs alone once ``search`` has written its architecture parameters."""

from kedro.pipeline import Node, Pipeline

from pnfs_pipeline.pipelines.derive import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.make_genotype,
                inputs=["architecture_parameters", "params:derive"],
                outputs="genotype",
                name="make_genotype",
            ),
            Node(
                nodes.report_sizes,
                inputs=["genotype", "architecture_parameters", "train_samples", "params:sample", "params:derive"],
                outputs="size_report",
                name="report_sizes",
            ),
            Node(
                nodes.draw_genotype,
                inputs=["genotype", "architecture_parameters", "size_report"],
                outputs=["fabric_diagram", "genotype_summary"],
                name="draw_genotype",
            ),
        ],
        tags=["derive"],
    )
