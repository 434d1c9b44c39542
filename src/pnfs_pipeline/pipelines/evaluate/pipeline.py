"""The ``evaluate`` pipeline: runs alone once ``retrain`` has written its checkpoint."""

from kedro.pipeline import Node, Pipeline

from pnfs_pipeline.pipelines.evaluate import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.predict_validation,
                inputs=["retrained_checkpoint", "val_samples", "val_detection_samples", "params:evaluate", "params:sample"],
                outputs="val_predictions",
                name="predict_validation",
            ),
            Node(
                nodes.score_predictions,
                inputs=["val_predictions", "val_ground_truth", "val_samples", "params:evaluate"],
                outputs=["evaluation_metrics", "val_keypoint_results"],
                name="score_predictions",
            ),
            Node(
                nodes.plot_validation_overlays,
                inputs=["val_predictions", "val_samples", "val_detection_samples", "params:evaluate"],
                outputs="validation_overlays",
                name="plot_validation_overlays",
            ),
        ],
        tags=["evaluate"],
    )
