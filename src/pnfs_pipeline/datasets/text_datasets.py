"""JSON and YAML datasets whose local files are replaced whole: a run killed while saving
leaves the previous file (or no new version), never a truncated one that a later run reads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.yaml import YAMLDataset

from pnfs_pipeline.files import atomic_write


def _save_atomically(dataset: Any, data: Any) -> None:
    path = get_filepath_str(dataset._get_save_path(), dataset._protocol)
    if dataset._protocol != "file":  # object stores replace an object whole anyway
        with dataset._fs.open(path, **dataset._fs_open_args_save) as stream:
            dataset._dump(data, stream)
    else:

        def write(stream: BinaryIO) -> None:
            text = io.TextIOWrapper(stream, encoding="utf-8")
            dataset._dump(data, text)
            text.flush()
            text.detach()  # the caller closes the file

        atomic_write(Path(path), write)
    dataset._invalidate_cache()


class AtomicJSONDataset(JSONDataset):
    """``json.JSONDataset`` (same arguments), saved through a temporary file and a rename."""

    def _dump(self, data: Any, stream: Any) -> None:
        json.dump(data, stream, **self._save_args)

    def save(self, data: Any) -> None:
        _save_atomically(self, data)


class AtomicYAMLDataset(YAMLDataset):
    """``yaml.YAMLDataset`` (same arguments), saved through a temporary file and a rename."""

    def _dump(self, data: Any, stream: Any) -> None:
        yaml.dump(data, stream, **self._save_args)

    def save(self, data: dict) -> None:
        _save_atomically(self, data)
