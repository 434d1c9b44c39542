"""Project pipelines."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The lifecycle, in order; the default run chains them. Kedro finds only the pipelines a run
# asks for (`kedro run --pipeline=search` finds search alone), hence the `if`.
LIFECYCLE = ("prepare", "search", "derive", "retrain", "evaluate")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in LIFECYCLE if name in pipelines), Pipeline([])
    )
    return pipelines
