"""Checkpoint files: atomic, readable like any other output, refused when foreign."""

import os

import pytest
import torch

from pnfs_pipeline.engine.checkpoint import load_checkpoint, save_checkpoint


def test_checkpoint_gets_the_usual_file_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint({"epoch": 3, "weights": torch.ones(2)}, tmp_path / "nested" / "last.pt")
    finally:
        os.umask(previous)
    path = tmp_path / "nested" / "last.pt"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's owner-only 0600
    assert load_checkpoint(path)["epoch"] == 3
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_foreign_file_is_refused_by_name(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pt: not a readable checkpoint"):
        load_checkpoint(path)
