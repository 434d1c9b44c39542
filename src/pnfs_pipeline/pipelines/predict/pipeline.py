"""The ``predict`` pipeline: a folder of images -> keypoints and overlay images."""

from kedro.pipeline import Node, Pipeline

from pnfs_pipeline.pipelines.predict import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.predict_images,
                inputs=["predict_images", "retrained_checkpoint", "params:predict"],
                outputs=["predicted_keypoints", "predict_overlays"],
                name="predict_images",
            ),
        ],
        tags=["predict"],
    )
