"""The ``retrain`` pipeline. It includes ``derive``, so it runs alone once ``search`` has run."""

from kedro.pipeline import Node, Pipeline

from pnfs_pipeline.pipelines.derive.pipeline import create_pipeline as create_derive_pipeline
from pnfs_pipeline.pipelines.retrain import nodes


def create_pipeline(**kwargs) -> Pipeline:
    retrain = Pipeline(
        [
            Node(
                nodes.retrain_network,
                inputs=[
                    "genotype",
                    "supernet_checkpoint",
                    "train_samples",
                    "val_samples",
                    "params:retrain",
                    "params:model",
                    "params:sample",
                    "params:augmentation",
                ],
                outputs=["retrained_checkpoint", "retrain_history"],
                name="retrain_network",
            ),
        ],
        tags=["retrain"],
    )
    return create_derive_pipeline() + retrain
