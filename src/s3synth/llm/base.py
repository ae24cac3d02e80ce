"""The LLM seam. A backend implements one private batch call; the base class owns the cache,
per-request seeds, token accounting, budgets and progress.

Backends register under the entry-point group `s3synth.llms` and are named `backend:model` on the
command line (`embedded`, `openai:gpt-4o-mini`, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Sequence

from .. import stop
from ..errors import BudgetExceeded, LLMError
from ..plugins import parse_options
from ..progress import bar
from .cache import LLMCache
from .executor import Executor, Job, LocalExecutor, Shard


@dataclass(frozen=True)
class GenParams:
    max_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    repeat_penalty: float = 1.15   # local backends (llama.cpp, transformers); >= 1.1 keeps small models from looping
    stop: tuple = ()
    # a JSON schema (as JSON text) the answer should follow, for backends with `supports_schema`
    # (OpenAI response_format, vLLM structured outputs); others ignore it and the prompt's own format
    # instruction (a numbered list) applies. Left out of the cache key when None, so keys of requests
    # without one are those of earlier versions.
    response_schema: str | None = None


@dataclass(frozen=True)
class Request:
    """One generation: a plain completion `prompt`, or chat `messages` as ((role, content), ...)."""

    prompt: str | None = None
    messages: tuple | None = None
    params: GenParams = field(default_factory=GenParams)
    sample_index: int = 0

    def __post_init__(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a Request needs exactly one of prompt or messages")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def payload(self) -> dict:
        params = asdict(self.params)
        if params.get("response_schema") is None:   # unset: the key of a request of earlier versions
            params.pop("response_schema", None)
        return {"prompt": self.prompt, "messages": [list(m) for m in self.messages] if self.messages else None,
                "params": params, "sample_index": self.sample_index}

    @classmethod
    def from_payload(cls, d: dict) -> Request:
        """The request whose `payload()` is `d` (how a request travels to another process)."""
        params = dict(d["params"])
        params["stop"] = tuple(params.get("stop") or ())
        msgs = d.get("messages")
        return cls(prompt=d.get("prompt"), messages=tuple(tuple(m) for m in msgs) if msgs else None,
                   params=GenParams(**params), sample_index=d.get("sample_index", 0))


def estimate_prompt_tokens(request: Request) -> int:
    """Rough prompt size before a call: ceil(chars / 4) of the prompt or the joined message contents."""
    text = request.prompt if request.prompt is not None else "\n".join(str(c) for _, c in request.messages)
    return math.ceil(len(text) / 4)


# Completion.error prefix of a reasoning model's answer with no text after its thinking (a reject reason)
REASONING_ONLY = "reasoning only"


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached: bool = False
    error: str | None = None        # set when the request failed for good; the example is a reject


@dataclass
class LLMStats:
    requests: int = 0        # asked for by the pipeline
    cache_hits: int = 0
    calls: int = 0           # answers received from the backend in this process
    failures: int = 0
    prompt_tokens: int = 0   # new tokens paid in this process
    completion_tokens: int = 0
    used_prompt_tokens: int = 0      # tokens of every answer served (cached or new): what a method uses
    used_completion_tokens: int = 0
    batch_calls: int = 0     # of `calls`: answers that came from a provider batch job (`--batch`)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Budget:
    """Hard limits over the whole run directory (counted from its cache, so they hold across resumes).

    `batch_discount` is the share of the price that provider batch jobs take off (0.5: half price); the
    answers of a run directory that came from batches are counted at `1 - batch_discount` of the price."""

    max_tokens: int | None = None
    max_cost: float | None = None
    price_in: float = 0.0     # money per million prompt tokens
    price_out: float = 0.0    # money per million completion tokens
    batch_discount: float = 0.5

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def spent_cost(self, spent: dict) -> float:
        """Money of a spend dict (`LLMCache.spent()`, with `batch_spent()` merged in where batches ran)."""
        bpt, bct = spent.get("batch_prompt_tokens", 0), spent.get("batch_completion_tokens", 0)
        return (self.cost(spent["prompt_tokens"] - bpt, spent["completion_tokens"] - bct)
                + (1 - self.batch_discount) * self.cost(bpt, bct))

    def allows(self, prompt_tokens: int, completion_tokens: int, money: float | None = None) -> bool:
        """True when this total spend stays within every limit (`money`: its cost when not at full price)."""
        money = self.cost(prompt_tokens, completion_tokens) if money is None else money
        return ((self.max_tokens is None or prompt_tokens + completion_tokens <= self.max_tokens) and
                (self.max_cost is None or money <= self.max_cost))

    def describe(self, spent: dict) -> str:
        """Example: "9,950 of 10,000 tokens" (and the money when a cost budget is set)."""
        pt, ct = spent["prompt_tokens"], spent["completion_tokens"]
        parts = [f"{pt + ct:,} of {self.max_tokens:,} tokens"] if self.max_tokens is not None else []
        if self.max_cost is not None:
            parts.append(f"{self.spent_cost(spent):.4f} of {self.max_cost} in money")
        return ", ".join(parts)

    def exceeded(self, spent: dict) -> str | None:
        total = spent["prompt_tokens"] + spent["completion_tokens"]
        if self.max_tokens is not None and total >= self.max_tokens:
            return f"token budget reached ({total:,} of {self.max_tokens:,} tokens)"
        if self.max_cost is not None and self.spent_cost(spent) >= self.max_cost:
            return f"cost budget reached ({self.spent_cost(spent):.4f} of {self.max_cost})"
        return None


class LLM(ABC):
    """Base class of every backend. Subclasses set `backend`, implement `_generate_batch`, and declare
    their settings as a dataclass `Options` (what `--llm-option KEY=VALUE` may set)."""

    backend = "base"
    batch_size = 8          # requests handed to `_generate_batch` at once (and cached together)
    default_prompt_style = "paper"   # `--prompt-style auto`: "paper" (chat templates) or "fewshot" (small models)
    supports_schema = False          # honours GenParams.response_schema (JSON under a schema) on chat requests

    @dataclass
    class Options:
        """No options."""

    def __init__(self, model: str, *, cache: LLMCache | None = None, seed: int = 0,
                 cache_mode: str = "use", budget: Budget | None = None, **options):
        if cache_mode not in ("use", "off", "only"):
            raise ValueError(f"cache_mode must be use, off or only, not {cache_mode!r}")
        self.options = parse_options(self.Options, options, f"LLM backend '{self.backend}'")
        self.model = model
        self.cache = cache
        self.seed = seed
        self.cache_mode = cache_mode
        self.budget = budget or Budget()
        self.stats = LLMStats()
        self._emit = None
        self.executor: Executor = LocalExecutor()   # where uncached requests run (`--executor`)

    # -- identity -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.backend}:{self.model}"

    def identity(self) -> dict:
        """What identifies the answers of this backend in the cache key (override to add e.g. a file hash)."""
        return {"backend": self.backend, "model": self.model}

    def key(self, request: Request) -> str:
        blob = json.dumps({"llm": self.identity(), **request.payload()}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def request_seed(self, key: str) -> int:
        """A sampling seed per request, from the run seed and the request key (prompt + sample index)."""
        return int(hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF

    # -- the one thing a backend implements -----------------------------------------------------
    @abstractmethod
    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        """Answer every request (same order). A request that fails for good returns Completion(error=...)."""

    def emit(self, j: int, completion: Completion) -> None:
        """Hand over the answer to request `j` of the current batch as soon as it is ready (optional):
        it is cached at once, so an answer received just before a crash is not paid for again."""
        if self._emit is not None:
            self._emit(j, completion)

    def close(self) -> None:
        """Release resources (models, connections)."""

    def in_flight_wait(self) -> float:
        """Seconds a first Ctrl-C or SIGTERM waits for the requests in flight before the run stops anyway
        (s3synth.stop): a backend with a request timeout overrides this with it. Capped at stop.MAX_WAIT_S."""
        return stop.MAX_WAIT_S

    def shard(self, actors: int, cpus_per_actor: float | None) -> Shard:
        """How a distributed executor runs this backend on `actors` workers side by side (each with
        `cpus_per_actor` cores): the options of one engine, the requests per call and the engines per
        worker. Override so that limits meant for the whole run (rate limits, concurrency) hold over
        every worker together. Default: the same options, `batch_size` requests per call, one engine."""
        return Shard(options=asdict(self.options), rows=self.batch_size, engines=1)

    # a backend that loads weights by folder or Hub name (transformers, vllm) names its folder option here,
    # e.g. "--llm vllm:DIR", and has a `revision` option; None: no weights to fetch
    weights_hint: str | None = None
    _source = None

    def fetch(self) -> None:
        """Make the model's files local before a run writes anything: a backend with `weights_hint` downloads
        a Hub model once into the Hugging Face cache here, or finds it there, and raises S3Error when it can
        do neither. Others have nothing to fetch."""
        if self.weights_hint and self._source is None:
            from ..hub import resolve
            self._source = resolve(self.model, revision=self.options.revision, what="generator",
                                   folder_hint=self.weights_hint)

    @property
    def model_source(self):
        """The `s3synth.hub.ModelSource` of the weights (after `fetch`), or None for a backend without
        local weights; the run records it in manifest.json."""
        return self._source

    def source_identity(self) -> dict:
        """The part of `identity` for fetched weights: {"sha": commit} for a Hub model (its answers are
        keyed by the commit they came from), {} for a folder or a backend without weights."""
        self.fetch()
        return {"sha": self._source.sha} if self._source is not None and self._source.from_hub else {}

    # -- shared machinery ----------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], desc: str = "generate") -> list[Completion]:
        """Answers for `requests` in order: from the cache where present, else from the backend.

        The rest go to `self.executor` (`--executor`: local batches in this process, or Ray) in waves
        that fit the budget; each new answer is written to the cache as it arrives, in any order, so a
        killed run loses at most the requests in flight. On a first Ctrl-C or SIGTERM nothing new is sent
        and those in flight are waited for (`in_flight_wait`) and saved, then the stop is raised
        (s3synth.stop). Raises BudgetExceeded (after saving) once a budget is reached.
        """
        requests = list(requests)
        self.stats.requests += len(requests)
        keys = [self.key(r) for r in requests]
        use_cache = self.cache is not None and self.cache_mode != "off"
        found = self.cache.get_many(keys) if use_cache else {}
        out: list[Completion | None] = [None] * len(requests)
        todo: list[int] = []
        seen: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in found:
                f = found[k]
                out[i] = Completion(text=f["text"], prompt_tokens=f["prompt_tokens"],
                                    completion_tokens=f["completion_tokens"], finish_reason=f["finish_reason"],
                                    cached=True)
                self.stats.cache_hits += 1
                self.stats.used_prompt_tokens += f["prompt_tokens"]
                self.stats.used_completion_tokens += f["completion_tokens"]
            elif k in seen:       # the same request twice in one call: answer once
                continue
            else:
                seen[k] = i
                todo.append(i)
        if todo and self.cache_mode == "only":
            raise LLMError(f"--cache-only: {len(todo)} of {len(requests)} answers for '{desc}' are not in the cache")
        executor = self.executor
        hits = sum(o is not None for o in out)     # the bar starts at the cached answers; its rate leaves them out
        with bar(hits + len(todo), f"{desc} ({hits} cached)" if hits else desc, "req", done=hits) as b:
            start = 0
            while start < len(todo):      # one wave: what the executor takes at once, cut to the budget
                n = self._affordable([requests[i] for i in todo[start:start + executor.wave_size(self)]], use_cache)
                idx = todo[start:start + n]
                start += n
                pending = set(idx)

                def record(i: int, c: Completion, pending=pending) -> None:
                    if i not in pending:    # answered already (or not part of this wave)
                        return
                    pending.discard(i)
                    out[i] = c
                    b.advance(1)
                    if c.error is not None:
                        self.stats.failures += 1
                        return
                    self.stats.calls += 1
                    self.stats.prompt_tokens += c.prompt_tokens
                    self.stats.completion_tokens += c.completion_tokens
                    self.stats.used_prompt_tokens += c.prompt_tokens
                    self.stats.used_completion_tokens += c.completion_tokens
                    if use_cache:   # committed at once: a killed run keeps every answer it received
                        self.cache.put_many([(keys[i], self.backend, self.model, requests[i].payload(), c.text,
                                              c.prompt_tokens, c.completion_tokens, c.finish_reason)])

                # a first Ctrl-C/SIGTERM: nothing new is sent, those in flight finish and are saved, then it stops
                careful = (stop.waiting_for_in_flight(self.in_flight_wait(), executor.stop_sending)
                           if executor.waits_for_in_flight else contextlib.nullcontext())
                with careful:
                    executor.run(self, [Job(i, requests[i], keys[i], self.request_seed(keys[i])) for i in idx], record)
                if pending:
                    raise LLMError(f"the {executor.name} executor returned no answer for {len(pending)} of "
                                   f"{len(idx)} requests of '{desc}'")
        for i, k in enumerate(keys):   # fill in duplicates within the call
            if out[i] is None:
                src = out[seen[k]]
                out[i] = Completion(text=src.text, prompt_tokens=src.prompt_tokens,
                                    completion_tokens=src.completion_tokens, finish_reason=src.finish_reason,
                                    cached=True, error=src.error)
        return out  # type: ignore[return-value]

    def _affordable(self, batch: Sequence[Request], use_cache: bool) -> int:
        """How many requests of `batch` to send now: all of them without a budget; with one, those whose
        worst case (estimated prompt tokens + max_tokens) still fits what is left. Raises BudgetExceeded
        when the budget is reached or not even the next request fits. Spend is the run directory's cache
        (this process's answers with --no-cache), so a run overshoots only where a server counts more
        prompt tokens than `estimate_prompt_tokens` guessed, within one batch. Requests that the executor
        sends as a provider batch job (`price_factor` < 1) are counted at the batch price."""
        b = self.budget
        if b.max_tokens is None and b.max_cost is None:
            return len(batch)
        if use_cache and self.cache is not None:
            spent = {**self.cache.spent(), **self.cache.batch_spent()}
        else:
            spent = {"prompt_tokens": self.stats.prompt_tokens, "completion_tokens": self.stats.completion_tokens}
        why = b.exceeded(spent)
        if why:
            raise BudgetExceeded(f"{why}; everything so far is saved - run again with a larger budget to go on")
        pt, ct, n = spent["prompt_tokens"], spent["completion_tokens"], 0
        money, factor = b.spent_cost(spent), getattr(self.executor, "price_factor", 1.0)
        for r in batch:
            rp, rc = estimate_prompt_tokens(r), r.params.max_tokens
            pt, ct, money = pt + rp, ct + rc, money + factor * b.cost(rp, rc)
            if not b.allows(pt, ct, money):
                break
            n += 1
        if n == 0:
            r = batch[0]
            raise BudgetExceeded(
                f"budget nearly reached ({b.describe(spent)}) and the next request may take up to "
                f"{estimate_prompt_tokens(r) + r.params.max_tokens:,} tokens; everything so far is saved - "
                "run again with a larger budget to go on")
        return n
