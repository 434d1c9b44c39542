"""A Kedro dataset for training checkpoints: atomic writes, ``weights_only=True`` loads."""

from __future__ import annotations

from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from pnfs_pipeline.engine.checkpoint import load_checkpoint, save_checkpoint


class CheckpointDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Any]]):
    """Saves a checkpoint dict with ``torch.save`` through a temporary file and a rename.

    Example catalog entry::

        supernet_checkpoint:
          type: pnfs_pipeline.datasets.CheckpointDataset
          filepath: data/06_models/supernet.pt
          versioned: true
    """

    def __init__(
        self, filepath: str, version: Version | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        if protocol != "file":
            raise DatasetError(f"CheckpointDataset writes local files only, got {filepath!r}")
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=self._exists_local)
        self.metadata = deepcopy(metadata)

    @staticmethod
    def _exists_local(path: str) -> bool:
        from pathlib import Path

        return Path(path).is_file()

    def _load(self) -> dict[str, Any]:
        return load_checkpoint(get_filepath_str(self._get_load_path(), "file"))

    def _save(self, data: dict[str, Any]) -> None:
        save_checkpoint(data, get_filepath_str(self._get_save_path(), "file"))

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError:
            return False
        return self._exists_local(get_filepath_str(path, "file"))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}
