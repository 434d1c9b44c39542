"""The exploration notebook runs on a finished run's artifacts; kedro viz builds headless."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.pipelines.conftest import PROJECT_ROOT


@pytest.mark.slow
def test_notebook_loads_a_finished_run_through_the_catalog(finished_project, monkeypatch):
    kedro_project = finished_project
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "explore_run.ipynb", as_version=4)
    # Where Jupyter starts the kernel: the notebook's folder (the relative image roots of the
    # sample indexes then resolve only because the session works in the project folder).
    monkeypatch.delenv("PNFS_PROJECT", raising=False)
    (kedro_project / "notebooks").mkdir()
    resources = {"metadata": {"path": str(kedro_project / "notebooks")}}
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources)
    client.execute()
    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )
    assert "genotype (pnfs-genotype/1)" in outputs and "AP" in outputs
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # diagram, alpha/beta history, overlays


@pytest.mark.slow
def test_kedro_viz_builds_headless(kedro_project):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run([str(kedro), "viz", "build"], cwd=kedro_project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    built = kedro_project / "build"
    assert (built / "index.html").is_file()
    pipelines = sorted(p.name for p in (built / "api" / "pipelines").iterdir())
    assert {"prepare", "search", "derive", "retrain", "evaluate", "predict"} <= set(pipelines)
