"""Project pipelines."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import click
from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The lifecycle, in order; the default run chains them. Kedro finds only the pipelines a run
# asks for (`kedro run --pipelines=search` finds search alone), hence the `if`.
LIFECYCLE = ("prepare", "search", "derive", "retrain", "evaluate")

_PIPELINES_PACKAGE = f"{__package__}.pipelines"


class UnknownPipelineError(click.ClickException, LookupError):
    """A run asked for a pipeline the project does not have (Kedro's command line shows it as its
    one line; not a KeyError, which Kedro's session would turn back into a traceback)."""


def pipeline_names() -> list[str]:
    """The project's pipelines: the folders of ``pipelines/`` that define one."""
    folder = Path(__file__).parent / "pipelines"
    return sorted(path.parent.name for path in folder.glob("*/pipeline.py"))


def register_pipelines() -> dict[str, Pipeline]:
    try:
        pipelines = find_pipelines(raise_errors=True)
    except ImportError as error:
        # Kedro imports only the pipelines asked for, and reports a name it has no folder for as
        # a failed import of that module; an import failing inside a real pipeline is raised as it is.
        named = re.fullmatch(rf"An error occurred while importing the '{_PIPELINES_PACKAGE}\.(.+)' module\.", str(error))
        if named and named.group(1) not in pipeline_names():
            asked = named.group(1)
            close = difflib.get_close_matches(asked, pipeline_names(), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            several = " (several pipelines: --pipelines=NAME,NAME)" if "," in asked else ""
            raise UnknownPipelineError(
                f"no pipeline named '{asked}': {hint}the pipelines are {', '.join(pipeline_names())} "
                f"and __default__, the whole lifecycle{several}"
            ) from None
        raise
    pipelines["__default__"] = sum(
        (pipelines[name] for name in LIFECYCLE if name in pipelines), Pipeline([])
    )
    return pipelines
