"""Progress bars on stderr (rich), with count, rate and ETA; status lines; quiet mode."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


def is_quiet() -> bool:
    return _QUIET


class Bar:
    """Handle to one bar; every method is a no-op when bars are off."""

    def __init__(self, progress=None, task_id=None):
        self._p, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._id, n)

    def set_description(self, desc: str) -> None:
        if self._p is not None:
            self._p.update(self._id, description=desc)

    def set_total(self, total: int) -> None:
        if self._p is not None:
            self._p.update(self._id, total=total)


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "it") -> Iterator[Bar]:
    """Example: `with bar(100, "seed", "ex") as b: ... b.advance()` -> `seed ━━━ 40/100 2.31 ex/s 0:00:17 eta 0:00:26`."""
    if _QUIET or total == 0:
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):  # noqa: D102
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{speed:.2f} {unit}/s")

    console = Console(file=sys.stderr)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console) as p:
        yield Bar(p, p.add_task(desc, total=total))


def info(msg: str) -> None:
    """A status line on stderr (hidden with --quiet)."""
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)
