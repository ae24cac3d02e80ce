"""Provider batch jobs (`--batch`): the uncached requests of a stage go to the provider's batch API
(OpenAI's Batch API, Anthropic's Message Batches) at the batch price instead of one call each.

`BatchExecutor` is an executor (llm/executor.py): `LLM.generate` hands it every uncached request of a
stage that the budget allows (its worst case counted at the batch price), and it

1. commits at once what an earlier batch already answered (kept in the cache database),
2. finds the recorded batches that hold any of the requests and are not collected yet (a killed or
   re-run process polls them again instead of submitting a new one),
3. submits the rest as new batches (split by the provider's limits: requests and bytes per batch),
   each recorded in the cache database - its id, input file and the custom_ids (cache keys) it
   holds - before it is polled,
4. polls with backoff (a progress line on each change, at least every 5 minutes: state, done/failed
   counts, elapsed time), and once a batch has ended downloads its results, matches them by
   custom_id, keeps each answered line and commits its answer,
5. resubmits the requests that a batch left unanswered (expired, cancelled, failed, a server error
   on the line) in a new batch, or online with `--batch-fallback online`; never an answered one. A
   line refused for good (HTTP 4xx) is a failed request (a reject) like online. After `resubmits`
   rounds the rest fail with the batch's reason.

A backend offers batches through `batch_provider()` returning a `BatchProvider` (openai_compat.py,
anthropic_backend.py). A process killed between creating a batch and recording it: OpenAI batches carry
the fingerprint of their custom_ids in `metadata`, and a new submission of the same requests first
looks for such an unrecorded batch among the most recent 100 and polls it instead. Not handled: the
same window for Anthropic (message batches take no metadata: that batch is paid twice); a batch
recorded under another API key or organisation cannot be polled (the provider answers 404): its
requests are submitted again, and the line says so.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import BudgetExceeded, LLMError
from ..progress import info
from .executor import Commit, Executor, Job, LocalExecutor

if TYPE_CHECKING:
    from .base import LLM, Completion

FALLBACKS = ("batch", "online")


@dataclass
class BatchState:
    """One poll of a batch: the provider's `status`, whether it has ended (results readable, nothing
    more will be answered), and its counts."""

    status: str
    ended: bool
    done: int = 0
    failed: int = 0
    total: int = 0
    reason: str = ""        # why a batch ended without answering everything (failed, expired, ...)


@dataclass
class LineResult:
    """The outcome of one batch line: `kind` "ok" (`result` is the raw answer, kept), "fail" (refused
    for good: a reject with `why`) or "retry" (not answered: expired, cancelled, a server error)."""

    custom_id: str
    kind: str
    result: dict | None = None
    why: str = ""


class BatchLost(Exception):
    """The provider does not know a recorded batch (another key or organisation, or deleted)."""


class BatchProvider(ABC):
    """A backend's batch API. `name` is stored with each recorded batch; `max_requests` and `max_bytes`
    bound one batch (the provider's limits)."""

    name = "base"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    @abstractmethod
    def line(self, job: Job) -> dict:
        """The batch line of `job` (its custom_id is `job.key`)."""

    @abstractmethod
    def submit(self, lines: list[dict]) -> tuple[str, str | None, str]:
        """Create one batch of `lines`: (batch id, input file id or None, status)."""

    def find(self, items_sha256: str, known: set[str]) -> tuple[str, str | None, str] | None:
        """A batch of these requests that the provider holds but the cache does not record (created by a
        process killed before it could record it): (batch id, input file id, status), or None. Default:
        None (a provider that cannot tag its batches)."""
        return None

    @abstractmethod
    def poll(self, batch_id: str) -> BatchState:
        """The batch's state now; raises BatchLost when the provider does not know it."""

    @abstractmethod
    def results(self, batch_id: str) -> Iterator[LineResult]:
        """Every result line of an ended batch (answered and not), in any order."""

    @abstractmethod
    def completion(self, result: dict, job: Job) -> Completion:
        """The Completion of an answered line's raw result."""


class BatchExecutor(Executor):
    """`--batch`: the backend's batch API for every uncached request of a stage (see the module doc)."""

    name = "batch"
    waits_for_in_flight = False     # a stopped run finds its recorded batches and polls them again

    @dataclass
    class Options:
        """Settings of `--batch` (set by --batch-fallback, --batch-discount and --batch-poll)."""

        fallback: str = "batch"     # unanswered requests of an ended batch: a new batch, or online
        discount: float = 0.5       # the share of the price a batch takes off (for the budget)
        poll: float = 15.0          # seconds before the first poll; grows 1.5x per poll up to 30x (<= 10 min)
        resubmits: int = 2          # new batches for unanswered requests before they fail

        def __post_init__(self):
            if self.fallback not in FALLBACKS:
                raise LLMError(f"--batch-fallback {self.fallback!r}: must be one of {', '.join(FALLBACKS)}")
            if not 0 <= self.discount < 1:
                raise LLMError(f"--batch-discount {self.discount!r}: must be in [0, 1)")
            if self.poll <= 0 or self.resubmits < 0:
                raise LLMError("--batch-poll must be > 0 (seconds) and resubmits >= 0")

    def __init__(self, **options):
        super().__init__(**options)
        self._online = False
        self.submitted: list[str] = []      # batch ids this process created
        self.polled: list[str] = []         # batch ids this process polled (each once per poll)

    @property
    def price_factor(self) -> float:
        """What a request costs here against the online price (`LLM._affordable` reads it)."""
        return 1.0 if self._online else 1.0 - self.options.discount

    def wave_size(self, llm: LLM) -> int:
        return 1 << 30      # everything the budget allows goes into one round of batches

    def describe(self) -> dict:
        o = self.options
        return {"name": self.name, "fallback": o.fallback, "discount": o.discount}

    # -- the run -------------------------------------------------------------------------------------
    def run(self, llm: LLM, jobs: Sequence[Job], commit: Commit) -> None:
        provider_of = getattr(llm, "batch_provider", None)
        if provider_of is None:
            raise LLMError(f"the {llm.backend} backend has no batch API: --batch works with openai:MODEL and "
                           "anthropic:MODEL; drop --batch")
        if llm.cache is None or llm.cache_mode == "off":
            raise LLMError("--batch records its batch ids in the run's cache: drop --no-cache")
        provider: BatchProvider = provider_of()
        cache = llm.cache
        by_key = {j.key: j for j in jobs}
        # 1. answered by an earlier batch (collected before a kill, or by another stage)
        for key, (_bid, result) in cache.batch_results(list(by_key)).items():
            self._commit_ok(llm, provider, by_key.pop(key), result, commit)
        round_ = 0
        while by_key:
            # 2. recorded batches holding some of these requests; 3. new batches for the rest
            open_ = cache.open_batches(provider.name, list(by_key))
            covered = {k for ids in open_.values() for k in ids}
            new = [j for k, j in by_key.items() if k not in covered]
            if open_:
                info(f"batch: {len(open_)} recorded {provider.name} batch(es) hold {len(by_key) - len(new)} of "
                     f"these requests; polling them (nothing submitted again)")
            if new and round_ > 0 and self.options.fallback == "online":
                self._online_fallback(llm, new, commit)
                for j in new:
                    by_key.pop(j.key, None)
                new = []
            if new:
                open_.update(self._submit(llm, provider, new, commit, by_key))
            if not open_:
                continue
            # 4. poll until each has ended, then collect
            unanswered = self._poll_and_collect(llm, provider, open_, by_key, commit)
            # 5. what is left goes round again (a new batch or online), a limited number of times
            round_ += 1
            if by_key and round_ > self.options.resubmits and self.options.fallback != "online":
                for key, job in list(by_key.items()):
                    why = unanswered.get(key, "not answered by the batch")
                    commit(job.index, _failed(f"{provider.name} batch: {why} (after {round_} batches)"))
                    by_key.pop(key)

    def _commit_ok(self, llm, provider: BatchProvider, job: Job, result: dict, commit: Commit) -> None:
        c = provider.completion(result, job)
        if c.error is None:
            llm.stats.batch_calls += 1
        commit(job.index, c)

    def _submit(self, llm, provider: BatchProvider, jobs: list[Job], commit: Commit,
                by_key: dict) -> dict[str, list[str]]:
        """Submit `jobs` as batches within the provider's limits; each is recorded before anything else."""
        import json

        chunks: list[list[tuple[Job, dict]]] = [[]]
        size = 0
        for job in jobs:
            line = provider.line(job)
            n = len(json.dumps(line, ensure_ascii=False).encode("utf-8")) + 1
            if n > provider.max_bytes:
                commit(job.index, _failed(f"{provider.name} batch: the request is {n:,} bytes, over the "
                                          f"{provider.max_bytes:,} bytes a batch may hold"))
                by_key.pop(job.key, None)
                continue
            if chunks[-1] and (len(chunks[-1]) >= provider.max_requests or size + n > provider.max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append((job, line))
            size += n
        out = {}
        known = {b["id"] for b in llm.cache.batches()}
        for chunk in (c for c in chunks if c):
            keys = [j.key for j, _ in chunk]
            sha = items_sha256(keys)
            found = provider.find(sha, known)
            if found is not None:
                batch_id, file_id, status = found
                info(f"batch {batch_id}: found at {provider.name} with these {len(keys)} requests (created by a run "
                     "stopped before it could record it); recorded now, polled instead of a new one")
            else:
                batch_id, file_id, status = provider.submit([line for _, line in chunk])
                self.submitted.append(batch_id)
                info(f"batch {batch_id}: submitted {len(keys)} requests to {provider.name} ({status}); recorded "
                     "in the run's cache - a killed run polls it again")
            llm.cache.record_batch(batch_id, provider.name, file_id, keys, sha, status)
            known.add(batch_id)
            out[batch_id] = keys
        return out

    def _poll_and_collect(self, llm, provider: BatchProvider, open_: dict[str, list[str]], by_key: dict,
                          commit: Commit) -> dict[str, str]:
        """Poll every batch of `open_` until it has ended, collecting each as it ends. Returns the reason
        per request that is still unanswered."""
        cache, t0 = llm.cache, time.monotonic()
        wait = self.options.poll
        cap = min(600.0, 30 * self.options.poll)
        pending = dict(open_)
        unanswered: dict[str, str] = {}
        last: dict[str, tuple] = {}     # batch id -> (status, done, failed, when printed)
        while pending:
            time.sleep(wait)
            wait = min(cap, wait * 1.5)
            for bid in list(pending):
                self.polled.append(bid)
                try:
                    st = provider.poll(bid)
                except BatchLost as e:
                    info(f"batch {bid}: {e}; its unanswered requests are submitted again")
                    cache.update_batch(bid, "lost", collected=True)
                    unanswered.update({k: "the batch was lost" for k in pending.pop(bid) if k in by_key})
                    continue
                seen = (st.status, st.done, st.failed)
                now = time.monotonic()
                if seen != last.get(bid, (None,))[:3] or now - last[bid][3] >= 300:   # on a change, else every 5 min
                    if seen != last.get(bid, (None,))[:3]:
                        cache.update_batch(bid, st.status)
                    last[bid] = (*seen, now)
                    info(f"batch {bid}: {st.status}, {st.done}/{st.total or '?'} done, {st.failed} failed, "
                         f"{time.monotonic() - t0:.0f} s")
                if not st.ended:
                    continue
                keys = pending.pop(bid)
                unanswered.update(self._collect(llm, provider, bid, st, keys, by_key, commit))
                cache.update_batch(bid, st.status, collected=True)
        return unanswered

    def _collect(self, llm, provider: BatchProvider, bid: str, st: BatchState, keys: list[str], by_key: dict,
                 commit: Commit) -> dict[str, str]:
        ok, retry = [], {}
        seen = set()
        for r in provider.results(bid):
            seen.add(r.custom_id)
            if r.kind == "ok":
                ok.append((r.custom_id, r.result))
            elif r.kind == "fail":
                job = by_key.pop(r.custom_id, None)
                if job is not None:
                    commit(job.index, _failed(f"{provider.name} batch: {r.why}"))
            else:
                retry[r.custom_id] = r.why
        llm.cache.put_batch_results(bid, ok)     # kept before the answers: a kill here loses nothing
        for key, result in ok:
            job = by_key.pop(key, None)
            if job is not None:
                self._commit_ok(llm, provider, job, result, commit)
        why = st.reason or f"batch {st.status}"
        for key in keys:
            if key not in seen:
                retry[key] = why
        if retry:
            info(f"batch {bid}: {st.status}; {len(retry)} of {len(keys)} requests unanswered ({why}) - "
                 + ("asked online" if self.options.fallback == "online" else "submitted again"))
        return {k: v for k, v in retry.items() if k in by_key}

    def _online_fallback(self, llm, jobs: list[Job], commit: Commit) -> None:
        """`--batch-fallback online`: the backend's own calls for `jobs`, at the online price (budget re-checked)."""
        self._online = True
        try:
            n = llm._affordable([j.request for j in jobs], True)
            LocalExecutor().run(llm, jobs[:n], commit)
        finally:
            self._online = False
        if n < len(jobs):
            raise BudgetExceeded(f"budget nearly reached: {len(jobs) - n} requests left unanswered by a batch "
                                 "do not fit at the online price; everything so far is saved - run again with "
                                 "a larger budget to go on")


def items_sha256(keys: Sequence[str]) -> str:
    """A fingerprint of the set of custom_ids of a batch (order-free)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _failed(why: str) -> Completion:
    from .base import Completion

    return Completion(text="", error=why)
