"""The executor seam: where the requests of an LLM stage that the cache cannot answer are run.

`LLM.generate` looks the requests up in the cache, then hands the rest to its executor in waves (a
wave holds what the budget allows) as `Job`s: the request, its cache key and its sampling seed. The
executor answers them in any order through `commit(index, completion)`, and `generate` writes each
answer to the run's cache as it arrives. An executor never writes the cache itself.

Executors register under the entry-point group `s3synth.executors` (`--executor NAME`) and declare
their settings as an `Options` dataclass (`--executor-option KEY=VALUE`), like LLM backends:

- `local` (default): the backend's own batch call in this process, `batch_size` requests at a time.
- `ray`: Ray Data jobs on a local or remote Ray cluster (`s3synth.llm.ray_executor`).

Not handled: an executor that splits one request over several workers (n > 1 samples per call).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LLMError
from ..plugins import load_plugin, parse_options

if TYPE_CHECKING:
    from .base import LLM, Completion, Request

Commit = Callable[[int, "Completion"], None]


@dataclass(frozen=True)
class Job:
    """One request to answer: `index` is its place in the `generate` call (what `commit` takes back)."""

    index: int
    request: Request
    key: str
    seed: int


@dataclass(frozen=True)
class Shard:
    """One worker's share of a backend (`LLM.shard`): `options` build one engine, each call takes up to
    `rows` requests, and a worker runs `engines` engines side by side (one per thread). `stream`: the
    engine hands over each answer as it is ready (`LLM.emit`), so a call can carry a worker's whole share
    of a wave (`rows` is then ignored) and still lose only the requests in flight when it dies."""

    options: dict
    rows: int
    engines: int = 1
    stream: bool = False


class Executor(ABC):
    """Runs the uncached requests of a stage. Subclasses set `name`, an `Options` dataclass, and implement
    `run`; `wave_size` says how many requests `generate` hands over at once (before the budget cuts)."""

    name = "base"
    local_engine = True     # the backend's engine runs in this process (False: on workers elsewhere)
    # a first Ctrl-C/SIGTERM during `run` lets the requests in flight finish and keeps their answers
    # (s3synth.stop); False: it stops at once (nothing in flight is lost)
    waits_for_in_flight = True

    @dataclass
    class Options:
        """No options."""

    def __init__(self, **options):
        self.options = parse_options(self.Options, options, f"executor '{self.name}'")

    def wave_size(self, llm: LLM) -> int:
        return llm.batch_size

    @abstractmethod
    def run(self, llm: LLM, jobs: Sequence[Job], commit: Commit) -> None:
        """Answer every job, calling `commit(job.index, completion)` once per job as soon as its answer
        is known, in any order. A request that fails for good is committed as Completion(error=...)."""

    def describe(self) -> dict:
        """What the manifest records about this executor (never part of a cache key or fingerprint)."""
        return {"name": self.name}

    def stop_sending(self) -> None:
        """Called in a thread at a first Ctrl-C or SIGTERM during `run`: tell engines that run elsewhere to
        send no new request (engines in this process see `s3synth.stop.stopping()` themselves)."""

    def close(self) -> None:
        """Release what the executor started (a local Ray, worker pools)."""


class LocalExecutor(Executor):
    """`--executor local`: the backend's batch call in this process, one batch of `batch_size` requests
    at a time; answers a backend hands over early (`LLM.emit`) are committed at once."""

    name = "local"

    def run(self, llm: LLM, jobs: Sequence[Job], commit: Commit) -> None:
        batch = [j.request for j in jobs]
        llm._emit = lambda j, c: commit(jobs[j].index, c)
        try:
            results = llm._generate_batch(batch, [j.seed for j in jobs])
        finally:
            llm._emit = None
        if len(results) != len(batch):
            raise LLMError(f"backend {llm.name} returned {len(results)} answers for {len(batch)} requests")
        for job, c in zip(jobs, results):
            commit(job.index, c)


def executor_class(name: str):
    return load_plugin("executors", name)


def make_executor(name: str = "local", **options) -> Executor:
    """Example: make_executor("ray", address="auto", actors=2); unknown options are refused in one line."""
    return executor_class(name)(**options)
