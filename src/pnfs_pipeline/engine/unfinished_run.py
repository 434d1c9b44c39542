"""Refusing to start a run over the checkpoint of one that stopped early.

Apart from the trainer so that Kedro's hooks can check it before the first node without
importing torch at every command's start (the checkpoint is read only where one exists).
"""

from __future__ import annotations

import os
from pathlib import Path


class UnfinishedRunError(RuntimeError):
    """A fresh run would replace the last checkpoint of a run that stopped before its end."""


def refuse_to_replace_an_unfinished_run(path: str | Path | None) -> None:
    """A run that is not resuming writes its first epoch over ``path``: refused when the file
    holds a run stopped before its last epoch (hours of training lost to a forgotten flag).
    Only rank 0 writes checkpoints: under torchrun without a shared filesystem another rank's
    file at ``path`` is a stale one of its own, not the run's."""
    if path is None or int(os.environ.get("RANK", "0")) != 0 or not Path(path).is_file():
        return
    from pnfs_pipeline.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    done = int(state.get("epoch", -1)) + 1
    config = state.get("config", {})
    planned = config.get("train", {}).get("epochs")
    if planned is not None and done < planned:
        flag = next((f"{name}.resume=true" for name in ("search", "retrain") if name in config), "resume=true")
        raise UnfinishedRunError(
            f"{path} holds a run stopped after epoch {done} of {planned}, which a new run would "
            f"overwrite: continue it with --params=\"{flag}\", or move the file away to start afresh"
        )
