"""Progress bars on stderr (rich), with count, rate and ETA; status lines; quiet mode.

A bar's rate counts only the items done while it runs, over the time since it started: items it starts
with (LLM answers taken from the cache) and the wait before the first item do not inflate it, and answers
that arrive together (a batch of parallel generations) do not read as hundreds per second. A spinner and
the elapsed time move while no item is done yet.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

_QUIET = False
clock = time.monotonic      # the bars' clock (tests replace it)


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


def rate(done: float, start: float, elapsed: float | None, total: float | None) -> tuple[float | None, float | None]:
    """(items per second, seconds left) of a bar that started at `start` of `total` items `elapsed` seconds
    ago and is at `done` now; None where nothing is done yet in this bar.

    Examples: rate(52, 40, 30.0, 92) -> (0.4, 100.0): 12 answers in 30 s, the 40 from the cache left out;
    rate(40, 40, 30.0, 92) -> (None, None).
    """
    if not elapsed or done <= start:
        return None, None
    speed = (done - start) / elapsed
    return speed, (None if total is None else max(total - done, 0) / speed)


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "it", done: int = 0) -> Iterator[Bar]:
    """A bar of `total` items of which `done` are done already (e.g. answers from the cache: the bar starts
    there, and its rate and ETA count only the items done from now on); none when nothing is left to do.

    Example: `with bar(92, "seed", "req", done=40) as b: ... b.advance()`
    -> `⠙ seed ━━━━━━╸━━━ 52/92 0.40 req/s 0:00:30 eta 0:01:40`."""
    if _QUIET or total == 0 or (total is not None and done >= total):
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                               TimeElapsedColumn)
    from rich.text import Text

    def numbers(task):
        return rate(task.completed, task.fields["done_before"],
                    task.finished_time if task.finished else task.elapsed, task.total)

    class RateColumn(ProgressColumn):
        def render(self, task):  # noqa: D102
            speed, _ = numbers(task)
            return Text(f"{'?' if speed is None else f'{speed:.2f}'} {unit}/s", style="progress.data.speed")

    class EtaColumn(ProgressColumn):
        def render(self, task):  # noqa: D102
            _, left = numbers(task)
            s = None if left is None else int(left)
            hms = "-:--:--" if s is None else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
            return Text(f"eta {hms}", style="progress.remaining")

    console = Console(file=sys.stderr)
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  RateColumn(), TimeElapsedColumn(), EtaColumn(), console=console, get_time=clock) as p:
        yield Bar(p, p.add_task(desc, total=total, completed=done, done_before=done))


def info(msg: str) -> None:
    """A status line on stderr (hidden with --quiet)."""
    if not _QUIET:
        print(msg, file=sys.stderr, flush=True)
