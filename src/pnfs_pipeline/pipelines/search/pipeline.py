"""The ``search`` pipeline. It includes ``prepare``, so it runs on a fresh clone by itself."""

from kedro.pipeline import Node, Pipeline

from pnfs_pipeline.pipelines.prepare.pipeline import create_pipeline as create_prepare_pipeline
from pnfs_pipeline.pipelines.search import nodes


def create_pipeline(**kwargs) -> Pipeline:
    search = Pipeline(
        [
            Node(
                nodes.search_architecture,
                inputs=[
                    "train_samples",
                    "val_samples",
                    "params:model",
                    "params:search",
                    "params:sample",
                    "params:augmentation",
                ],
                outputs=["supernet_checkpoint", "architecture_parameters", "search_history"],
                name="search_architecture",
            ),
            Node(
                nodes.plot_architecture,
                inputs=["search_history", "architecture_parameters"],
                outputs="architecture_figure",
                name="plot_architecture",
            ),
        ],
        tags=["search"],
    )
    return create_prepare_pipeline() + search
