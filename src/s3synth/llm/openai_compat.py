"""OpenAI-compatible HTTP backend: OpenAI, vLLM, llama.cpp server, Ollama, LM Studio, TGI, ...

POSTs `{base_url}/chat/completions` (mode="chat") or `{base_url}/completions` (mode="completions")
with httpx, `concurrency` requests at a time on a private event loop, with retries (full-jitter
exponential backoff, Retry-After) and optional requests/tokens-per-minute limits.

Failure policy: a request that fails for good comes back as `Completion(error=...)`; configuration
errors (HTTP 400/401/403/404, or a server that cannot be reached at all) raise `LLMError` at once.
The first request to a server goes alone, so a wrong key, model or URL costs one request, not a batch.
A 400 that says the prompt is too long for the context is a per-request failure, not a config error.
After a first Ctrl-C or SIGTERM (s3synth.stop) no request or retry is sent; those in flight finish
(within `timeout`) and are handed over, then the batch call raises the stop.

Reasoning models (Qwen3, DeepSeek-R1, ... behind vLLM, SGLang or a hosted API): an answer whose content
holds a `<think>...</think>` block is cleaned to what follows it; one with nothing after it, a block cut
off by max_tokens, or only `reasoning_content` is a failed request with a reason starting "reasoning
only" (a reject, never an empty example). A model that refuses `max_tokens` (a 400 naming
max_completion_tokens) is asked again with `max_completion_tokens`, and so is every later request.

A request whose GenParams carry a `response_schema` is sent with `response_format` (json_schema, strict)
in chat mode; the completions endpoint has no such parameter, so there the prompt's own list format applies.

Not handled: streaming, n > 1, tools/function calls, logprobs, array-valued message content,
HTTP-date Retry-After values, Azure auth (`api-key` header), x-ratelimit-* headers. Token counts
are estimated as ceil(chars / 4) when the server sends no `usage`. One instance serialises its calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit, urlunsplit

import httpx

from .. import stop
from ..errors import LLMError
from .base import LLM, REASONING_ONLY, Budget, Completion, Request
from .cache import LLMCache
from .executor import Shard

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MODES = ("chat", "completions")
RETRYABLE = {408, 409, 429}
RETRY_AFTER_CAP = 60.0
# extra_body keys that, set to True, send the request's GenParams.repeat_penalty under that name
# (llama.cpp server and Ollama say repeat_penalty, vLLM says repetition_penalty; OpenAI has neither).
PENALTY_KEYS = ("repeat_penalty", "repetition_penalty")
# a 400 from a model that takes max_completion_tokens instead (OpenAI's reasoning models say so)
_NO_MAX_TOKENS = re.compile(r"max_tokens.{0,80}(?:not supported|unsupported)|unsupported parameter.{0,40}max_tokens"
                            r"|use .?max_completion_tokens", re.I | re.S)
_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)


def strip_think(text: str) -> tuple[str, str | None]:
    """The answer after a reasoning model's `<think>...</think>` block, or ("", why) when nothing follows it.

    Example: strip_think("<think>they ask for a review</think>\n\nA fine film.") -> ("A fine film.", None)"""
    closes = list(_THINK_CLOSE.finditer(text))
    if not closes:
        return "", "the <think> block never closed (cut off by max_tokens?)"
    rest = text[closes[-1].end():].strip()
    return (rest, None) if rest else ("", "nothing after the </think> block")


_CONTEXT_TOO_LONG = re.compile(r"context[ _]length|maximum context|too many tokens|prompt is too long", re.I)


def response_format(schema_json: str) -> dict:
    """OpenAI's `response_format` for Structured Outputs: the schema (JSON text) under strict adherence.

    Example: response_format('{"type": "object", ...}') -> {"type": "json_schema", "json_schema":
    {"name": "answers", "strict": True, "schema": {"type": "object", ...}}}"""
    return {"type": "json_schema", "json_schema": {"name": "answers", "strict": True,
                                                   "schema": json.loads(schema_json)}}


def estimate_tokens(text: str) -> int:
    """Rough token count when the server reports none: ceil(chars / 4)."""
    return math.ceil(len(text) / 4)


class TokenBucket:
    """Async token bucket refilled at `per_minute / 60` per second, holding at most one second's worth.

    A take larger than the bucket waits until it is full and leaves it in debt, so the long-run
    rate holds. The lock is rebuilt when the event loop changes.
    """

    def __init__(self, per_minute: float):
        if per_minute <= 0:
            raise ValueError(f"a rate limit must be positive, not {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self.waits = 0              # how often a take had to sleep (for tests and diagnostics)
        self._lock: asyncio.Lock | None = None
        self._loop = None

    async def take(self, n: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            need = min(n, self.capacity)
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= need:
                    break
                self.waits += 1
                await asyncio.sleep((need - self.level) / self.rate)
            self.level -= n


class _Retry(Exception):
    """One failed attempt that is worth retrying."""

    def __init__(self, why: str, retry_after: float | None = None, connect: bool = False):
        super().__init__(why)
        self.retry_after, self.connect = retry_after, connect


class OpenAICompatLLM(LLM):
    """A model behind an OpenAI-compatible HTTP API. The key is read from `$api_key_env` (may be unset)."""

    backend = "openai"

    @dataclass
    class Options:
        """Settings of `--llm openai:MODEL` (`-o KEY=VALUE`; the older flags are aliases)."""

        base_url: str | None = None     # --base-url; default $OPENAI_BASE_URL, else OpenAI's
        api_key_env: str | None = "OPENAI_API_KEY"   # --api-key-env: the NAME of the variable holding the key
        mode: str = "chat"              # --llm-mode: chat | completions endpoint
        concurrency: int = 8            # --concurrency: requests in flight
        timeout: float = 60.0           # --llm-timeout: seconds per request before a retry
        max_retries: int = 5
        rpm: float | None = None        # requests per minute
        tpm: float | None = None        # tokens per minute
        extra_body: dict | None = None  # merged into every request body (a None value removes a key)
        backoff_base: float = 0.5
        backoff_cap: float = 20.0

        def __post_init__(self):
            if self.mode not in MODES:
                raise LLMError(f"openai option mode {self.mode!r}: must be one of {', '.join(MODES)}")
            if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
                raise LLMError("openai options: concurrency must be >= 1, max_retries >= 0 and timeout > 0")
            if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
                # never echo it: it may be the key itself
                raise LLMError("--api-key-env takes the NAME of an environment variable holding the key "
                               "(e.g. OPENAI_API_KEY), not the key")
            for name in ("rpm", "tpm"):
                if getattr(self, name) is not None and getattr(self, name) <= 0:
                    raise LLMError(f"openai option {name} {getattr(self, name)!r}: must be > 0")

    def __init__(self, model: str, *, cache: LLMCache | None = None, seed: int = 0, cache_mode: str = "use",
                 budget: Budget | None = None, **options):
        super().__init__(model, cache=cache, seed=seed, cache_mode=cache_mode, budget=budget, **options)
        o = self.options
        base_url, api_key_env, mode, concurrency = o.base_url, o.api_key_env, o.mode, o.concurrency
        timeout, max_retries, rpm, tpm, extra_body = o.timeout, o.max_retries, o.rpm, o.tpm, o.extra_body
        backoff_base, backoff_cap = o.backoff_base, o.backoff_cap
        base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip()
        parts = urlsplit(base_url)
        netloc = parts.netloc.rpartition("@")[2]     # never show user:password@
        self._where = netloc + parts.path.rstrip("/")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMError(f"base_url must look like http(s)://host[:port]/v1, not '{self._where or '?'}'")
        endpoint = "/chat/completions" if mode == "chat" else "/completions"
        self._url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + endpoint, parts.query, ""))
        self._base_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))
        self._secrets = [s for s in (parts.password,) if s]
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if self._api_key:
            self._secrets.append(self._api_key)
        self.mode = mode
        self.concurrency = concurrency
        self.batch_size = 4 * concurrency
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_base, self.backoff_cap = float(backoff_base), float(backoff_cap)
        self.extra_body = dict(extra_body or {})
        self._rpm = TokenBucket(rpm) if rpm else None
        self._tpm = TokenBucket(tpm) if tpm else None
        self.http_stats: dict = {"attempts": 0, "retries": 0, "status": {}}
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._sem: asyncio.Semaphore | None = None
        self._answered = False      # has the server answered over HTTP yet (see the probe in _run)
        self._max_completion_tokens = False     # the model refused max_tokens: send max_completion_tokens
        self._batches = None        # the Batch API client (`--batch`), made on first use
        self.supports_schema = mode == "chat"   # response_format json_schema is a chat completions parameter

    def in_flight_wait(self) -> float:
        """A request in flight at a Ctrl-C ends within the request timeout (no retry is sent)."""
        return min(self.timeout, stop.MAX_WAIT_S)

    def shard(self, actors: int, cpus_per_actor: float | None) -> Shard:
        """One client per worker with `concurrency // actors` requests in flight (at least 1) and its share
        of rpm and tpm, so the concurrency and the rate limits hold over all workers together (more actors
        than `concurrency`: one request each). Answers stream back as they arrive (`emit`): a worker that
        dies loses only its requests in flight."""
        per = max(1, self.options.concurrency // max(1, actors))
        o = dataclasses.asdict(self.options)
        o["concurrency"] = per
        for name in ("rpm", "tpm"):
            if o[name]:
                o[name] = o[name] / max(1, actors)
        return Shard(options=o, rows=self.batch_size, engines=1, stream=True)

    # -- identity ------------------------------------------------------------------------------
    def identity(self) -> dict:
        """Backend, model, server (host[:port]/path, no credentials or query) and mode; never the key."""
        ident = {"backend": self.backend, "model": self.model, "base_url": self._where, "mode": self.mode}
        if self.extra_body:
            ident["extra_body"] = self.extra_body
        return ident

    def __repr__(self) -> str:
        return (f"OpenAICompatLLM(model={self.model!r}, base_url={self._where!r}, mode={self.mode!r}, "
                f"concurrency={self.concurrency})")

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    # -- request bodies ------------------------------------------------------------------------
    def _body(self, req: Request, seed: int) -> dict:
        p = req.params
        body: dict = {"model": self.model}
        if self.mode == "chat":
            msgs = req.messages if req.is_chat else (("user", req.prompt),)
            body["messages"] = [{"role": role, "content": content} for role, content in msgs]
        else:
            body["prompt"] = req.prompt
        body.update(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p, seed=seed, n=1)
        if p.stop:
            body["stop"] = list(p.stop)
        if p.response_schema is not None and self.mode == "chat":
            body["response_format"] = response_format(p.response_schema)
        for k, v in self.extra_body.items():
            if v is None:
                body.pop(k, None)
            elif k in PENALTY_KEYS and v is True:
                body[k] = p.repeat_penalty
            else:
                body[k] = v
        return body

    @staticmethod
    def _prompt_text(req: Request) -> str:
        return req.prompt if not req.is_chat else "\n".join(str(c) for _, c in req.messages)

    # -- the batch call ------------------------------------------------------------------------
    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        if self.mode == "completions" and any(r.is_chat for r in requests):
            raise LLMError("mode='completions' cannot send chat messages; use mode='chat' or plain prompts")
        jobs = [(self._prompt_text(r), self._body(r, s)) for r, s in zip(requests, seeds)]
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
            return self._run_sync(self._run(jobs))

    def _run_sync(self, coro):
        """Run `coro` on the private loop (in a helper thread when this thread already runs a loop)."""
        assert self._loop is not None
        try:
            asyncio.get_running_loop()
        except RuntimeError:        # the usual case: no loop running in this thread
            return self._loop.run_until_complete(coro)
        with ThreadPoolExecutor(1) as ex:
            return ex.submit(self._loop.run_until_complete, coro).result()

    async def _run(self, jobs: list[tuple[str, dict]]) -> list[Completion]:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._client = httpx.AsyncClient(
                timeout=self.timeout, headers=headers,
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency))
        self._sem = asyncio.Semaphore(self.concurrency)
        out: list[Completion] = []

        async def one(j: int, job) -> Completion | None:
            c = await self._request(*job)
            if c is not None:       # None: not sent, the run is stopping
                self.emit(j, c)     # cached at once by the base class
            return c

        first = 0
        if jobs and not self._answered:     # probe: a wrong key/model/URL costs one request, not a batch
            out.append(await one(0, jobs[0]))
            first = 1
        tasks = [asyncio.ensure_future(one(j, job)) for j, job in enumerate(jobs[first:], start=first)]
        try:
            out.extend(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        stop.raise_if_stopping()    # the requests in flight at a Ctrl-C are answered and saved by now
        return out

    async def _request(self, prompt_text: str, body: dict) -> Completion | None:
        """One request with retries; Completion(error=...) once they are spent; None when the run stops
        (s3synth.stop) before it is sent or retried."""
        cost = estimate_tokens(prompt_text) + int(body.get("max_tokens") or 0)
        last, connect_only, wait = "no attempt made", True, 0.0
        for attempt in range(self.max_retries + 1):
            if attempt:
                if stop.stopping():
                    return None
                self.http_stats["retries"] += 1
                await asyncio.sleep(wait)
            try:
                return await self._attempt(prompt_text, body, cost)
            except _Retry as e:
                last, connect_only = str(e), connect_only and e.connect
                wait = e.retry_after if e.retry_after is not None else self._backoff(attempt + 1)
        if connect_only and not self._answered:
            raise LLMError(f"cannot reach the OpenAI-compatible server at {self._where} ({last}) - "
                           "check base_url and that the server is running")
        return Completion(text="", error=self._redact(f"{self._where}: failed after {self.max_retries + 1} "
                                                      f"attempts: {last}"))

    def _backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**(retry-1))]."""
        return self._rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * 2 ** (retry - 1)))

    async def _attempt(self, prompt_text: str, body: dict, cost: int) -> Completion | None:
        assert self._client is not None and self._sem is not None
        if self._max_completion_tokens and "max_tokens" in body:
            body = dict(body)
            body["max_completion_tokens"] = body.pop("max_tokens")
        async with self._sem:
            if self._rpm:
                await self._rpm.take(1)
            if self._tpm:
                await self._tpm.take(cost)
            if stop.stopping():     # a Ctrl-C came while this request waited for its turn: never sent
                return None
            self.http_stats["attempts"] += 1
            try:
                r = await self._client.post(self._url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                raise _Retry(self._redact(f"connection failed: {type(e).__name__}: {e}"), connect=True) from None
            except httpx.TimeoutException:
                raise _Retry(f"no answer within {self.timeout:g} s") from None
            except httpx.TransportError as e:
                raise _Retry(self._redact(f"transport error: {type(e).__name__}: {e}")) from None
        code = r.status_code
        status = self.http_stats["status"]
        status[code] = status.get(code, 0) + 1
        if not 200 <= code < 300:
            msg = self._server_message(r)
            if code == 400 and "max_tokens" in body and _NO_MAX_TOKENS.search(msg):
                self._max_completion_tokens = True      # remembered for every later request of this run
                self._answered = True
                raise _Retry("the model takes max_completion_tokens, not max_tokens; asking again with it",
                             retry_after=0.0)
            if code == 400 and _CONTEXT_TOO_LONG.search(msg):
                self._answered = True
                return Completion(text="", error=f"HTTP 400: {msg}")
            if code in (400, 401, 403, 404):
                raise LLMError(self._config_error(code, msg))
            self._answered = True
            if code in RETRYABLE or code >= 500:
                raise _Retry(f"HTTP {code}: {msg}", retry_after=_retry_after(r))
            return Completion(text="", error=f"HTTP {code}: {msg}")    # refused for good (413, 422, ...)
        self._answered = True
        return self._parse(r, prompt_text)

    def _parse(self, r: httpx.Response, prompt_text: str) -> Completion:
        try:
            data = r.json()
        except ValueError:
            raise _Retry(f"malformed JSON in the answer ({len(r.content)} bytes)") from None
        return self._parse_data(data, prompt_text)

    def _parse_data(self, data, prompt_text: str) -> Completion:
        """The Completion of one answer body (online, or a line of a batch's output file)."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            err = data.get("error") if isinstance(data, dict) else None
            raise _Retry("answer has no choices" + (self._redact(f": {err}")[:200] if err else ""))
        choice = choices[0]
        reasoning = None
        if self.mode == "chat":
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
            if isinstance(message, dict):
                reasoning = message.get("reasoning_content") or message.get("reasoning")
        else:
            text = choice.get("text")
        finish = choice.get("finish_reason")
        if isinstance(text, str) and _THINK_OPEN.search(text):
            text, why = strip_think(text)
            if why:
                return Completion(text="", error=f"{REASONING_ONLY}: {why} (finish_reason={finish}); raise "
                                                 "the stage's max_tokens or turn the model's thinking off")
        if (not isinstance(text, str) or not text.strip()) and reasoning:
            return Completion(text="", error=f"{REASONING_ONLY}: the answer holds only reasoning_content "
                                             f"(finish_reason={finish}); raise the stage's max_tokens or turn "
                                             "the model's thinking off")
        if not isinstance(text, str) or not text:
            raise _Retry(f"empty completion text (finish_reason={finish})")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return Completion(text=text,
                          prompt_tokens=pt if isinstance(pt, int) else estimate_tokens(prompt_text),
                          completion_tokens=ct if isinstance(ct, int) else estimate_tokens(text),
                          finish_reason=finish)

    def _server_message(self, r: httpx.Response) -> str:
        """The server's error message on one line (OpenAI, vLLM, TGI and plain-text shapes)."""
        try:
            data = r.json()
        except ValueError:
            data = None
        msg = None
        if isinstance(data, dict):
            err = data.get("error")
            msg = err.get("message") or err.get("code") if isinstance(err, dict) else err
            msg = msg or data.get("message") or data.get("detail")
        msg = " ".join(str(msg if msg else (r.text or r.reason_phrase or "no message")).split())
        return self._redact(msg[:300])

    def _config_error(self, code: int, msg: str) -> str:
        key = f"${self.api_key_env}" if self.api_key_env else "the API key"
        hint = {
            400: "the model name, mode ('chat' or 'completions') and extra_body parameters",
            401: f"the API key in {key}" + ("" if self._api_key else " (it is not set)"),
            403: f"that the key in {key} may use model '{self.model}'",
            404: "the model name, the mode and base_url (it usually ends in /v1)",
        }[code]
        return self._redact(f"{self._where} answered HTTP {code} for model '{self.model}' ({self.mode} mode): "
                            f"{msg} - check {hint}")

    # -- provider batch jobs (--batch) ---------------------------------------------------------
    def batch_provider(self):
        """OpenAI's Batch API through the official SDK (llm/openai_batch.py)."""
        from .openai_batch import OpenAIBatches

        if self._batches is None:
            self._batches = OpenAIBatches(self)
        return self._batches

    def close(self) -> None:
        """Close the HTTP clients and the private event loop."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        with self._lock:
            if self._loop is not None and not self._loop.is_closed():
                if self._client is not None:
                    self._run_sync(self._client.aclose())
                self._loop.close()
            self._client = self._loop = None


def _retry_after(r: httpx.Response) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (numbers only), capped at 60 s."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = r.headers.get(name)
        if value is not None:
            try:
                return min(RETRY_AFTER_CAP, max(0.0, float(value) / scale))
            except ValueError:
                continue
    return None
