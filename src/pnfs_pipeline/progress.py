"""Progress bars (rich), drawn on a terminal only: redirected output (CI, a log file) gets no
bars and none of the blank lines a finished transient bar leaves there."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress, ProgressColumn
from rich.progress import track as rich_track

Item = TypeVar("Item")


def on_terminal() -> bool:
    return Console().is_terminal


def track(sequence: Iterable[Item], description: str, total: float | None = None) -> Iterator[Item]:
    """``sequence`` with a transient progress bar."""
    return rich_track(sequence, description=description, total=total, transient=True, disable=not on_terminal())


def progress_bar(*columns: str | ProgressColumn, disable: bool = False, **kwargs: Any) -> Progress:
    """A transient :class:`rich.progress.Progress` (rich's default columns when none are given)."""
    return Progress(*columns, transient=True, disable=disable or not on_terminal(), **kwargs)
