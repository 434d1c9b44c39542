"""The ``prepare`` pipeline: from raw keypoint data to persisted top-down sample indexes."""

from kedro.pipeline import Node, Pipeline

from pnfs_pipeline.pipelines.prepare import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                nodes.obtain_raw_data,
                inputs=["params:data", "params:synthetic"],
                outputs="raw_data_manifest",
                name="obtain_raw_data",
            ),
            Node(
                nodes.validate_annotations,
                inputs=["raw_data_manifest", "params:data", "params:sample"],
                outputs=["validated_annotations", "validation_report"],
                name="validate_annotations",
            ),
            Node(
                nodes.build_sample_indexes,
                inputs=["validated_annotations", "params:data"],
                outputs=["train_samples", "val_samples", "val_detection_samples", "val_ground_truth"],
                name="build_sample_indexes",
            ),
            Node(
                nodes.summarize_samples,
                inputs=["train_samples", "val_samples", "val_detection_samples"],
                outputs="data_summary",
                name="summarize_samples",
            ),
            Node(
                nodes.plot_sample_preview,
                inputs=["train_samples", "params:sample", "params:augmentation", "params:preview"],
                outputs="sample_preview",
                name="plot_sample_preview",
            ),
        ],
        tags=["prepare"],
    )
