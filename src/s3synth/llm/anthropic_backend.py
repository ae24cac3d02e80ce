"""`--llm anthropic:MODEL`: Anthropic's Messages API through the official `anthropic` SDK, and with
`--batch` its Message Batches API (custom_id = the request's cache key, results matched by custom_id).

The key is read from `$ANTHROPIC_API_KEY` (or the variable named by `api_key_env`) and is never
written anywhere: not in the cache key, the manifest, config.toml or an error line. The SDK does the
retries (`max_retries`, exponential backoff honouring Retry-After, on connection errors, 408, 409,
429 and 5xx); its typed errors become our results: a wrong key, model or request raises one-line
LLMError at once (the first request goes alone, so that costs one request), a prompt too long for
the context and retries spent are a failed request (a reject), like the openai backend.

Requests: a system message goes to `system`, a plain prompt is one user message. No sampling
parameters are sent: the API version the SDK 2.x speaks (2026-10-21) refuses temperature, top_p and
top_k, and takes no seed, so `--temperature`/`--top-p` do not apply (they still key the cache) and
answers are not reproducible beyond the cache. Stop sequences that are only whitespace (the API
refuses them) are applied to the answer here instead. Thinking blocks are not requested;
an answer with no text block is a reject ("reasoning only" when it holds only thinking).

Not handled: images, tools, prompt caching, extended thinking, the Bedrock/Vertex clients.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import stop
from ..errors import LLMError
from .base import LLM, REASONING_ONLY, Budget, Completion, Request
from .batch import BatchLost, BatchProvider, BatchState, LineResult
from .cache import LLMCache
from .executor import Job

DEFAULT_BASE_URL = "https://api.anthropic.com"
_TOO_LONG = re.compile(r"prompt is too long|too many tokens|context (window|length)", re.IGNORECASE)
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicLLM(LLM):
    """A Claude model behind Anthropic's Messages API."""

    backend = "anthropic"
    default_prompt_style = "paper"

    @dataclass
    class Options:
        """Settings of `--llm anthropic:MODEL` (`-o KEY=VALUE`)."""

        base_url: str | None = None     # default $ANTHROPIC_BASE_URL, else Anthropic's
        api_key_env: str = "ANTHROPIC_API_KEY"   # the NAME of the variable holding the key
        concurrency: int = 8            # requests in flight
        timeout: float = 120.0          # seconds per request before the SDK retries
        max_retries: int = 5            # the SDK's retries per request

        def __post_init__(self):
            if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
                raise LLMError("anthropic options: concurrency must be >= 1, max_retries >= 0 and timeout > 0")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
                raise LLMError("anthropic option api_key_env takes the NAME of an environment variable holding "
                               "the key (e.g. ANTHROPIC_API_KEY), not the key")

    def __init__(self, model: str, *, cache: LLMCache | None = None, seed: int = 0, cache_mode: str = "use",
                 budget: Budget | None = None, **options):
        super().__init__(model, cache=cache, seed=seed, cache_mode=cache_mode, budget=budget, **options)
        o = self.options
        self._base_url = (o.base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        parts = urlsplit(self._base_url)
        self._where = parts.netloc.rpartition("@")[2] + parts.path
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMError(f"anthropic base_url must look like https://host[:port], not '{self._where or '?'}'")
        self._api_key = os.environ.get(o.api_key_env) or None
        self.batch_size = 4 * o.concurrency
        self._client = None
        self._answered = False
        self._lock = threading.Lock()
        self._batches = None

    def identity(self) -> dict:
        """Backend, model and server (host[:port]/path); never the key."""
        return {"backend": self.backend, "model": self.model, "base_url": self._where}

    def __repr__(self) -> str:
        return f"AnthropicLLM(model={self.model!r}, base_url={self._where!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    @property
    def sdk(self):
        try:
            import anthropic
        except ImportError:
            raise LLMError("--llm anthropic:MODEL needs the anthropic SDK: pip install 's3synth[anthropic]' "
                           "(or bash scripts/setup.sh)") from None
        return anthropic

    @property
    def client(self):
        if self._client is None:
            if not self._api_key:
                raise LLMError(f"--llm anthropic:{self.model} needs an API key in ${self.options.api_key_env} "
                               "(export it; it is never written anywhere)")
            self._client = self.sdk.Anthropic(api_key=self._api_key, base_url=self._base_url,
                                              max_retries=self.options.max_retries, timeout=self.options.timeout)
        return self._client

    # -- requests ------------------------------------------------------------------------------
    def params(self, req: Request) -> dict:
        """The Messages API parameters of `req` (online and in a batch line alike)."""
        p = req.params
        msgs = req.messages if req.is_chat else (("user", req.prompt),)
        system = "\n\n".join(c for r, c in msgs if r == "system")
        out: dict = {"model": self.model, "max_tokens": p.max_tokens,
                     "messages": [{"role": r, "content": c} for r, c in msgs if r != "system"]}
        if system:
            out["system"] = system
        stops = [s for s in p.stop if s.strip()]
        if stops:
            out["stop_sequences"] = stops
        return out

    def parse(self, message: dict, req: Request) -> Completion:
        """The Completion of a Messages API answer (a dict: the SDK's Message dumped, or a batch result)."""
        blocks = message.get("content") or []
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        usage = message.get("usage") or {}
        stop = message.get("stop_reason")
        pt, ct = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
        for s in req.params.stop:       # whitespace-only stops were not sent: cut here
            if not s.strip() and s in text:
                text = text[:text.index(s)]
        if stop == "refusal":
            return Completion(text="", prompt_tokens=pt, completion_tokens=ct, finish_reason=stop,
                              error="the model refused to answer (stop_reason=refusal)")
        if not text.strip():
            thinking = any(b.get("type") in ("thinking", "redacted_thinking") for b in blocks)
            why = f"{REASONING_ONLY}: the answer holds only thinking" if thinking else "empty answer"
            return Completion(text="", prompt_tokens=pt, completion_tokens=ct, finish_reason=stop,
                              error=f"{why} (stop_reason={stop})")
        return Completion(text=text, prompt_tokens=pt, completion_tokens=ct, finish_reason=FINISH.get(stop, stop))

    def config_error(self, e: Exception) -> LLMError:
        """One line for a refusal that no retry mends (wrong key, model, request)."""
        status = getattr(e, "status_code", None)
        msg = self._redact(" ".join(str(getattr(e, "message", None) or e).split())[:300])
        hint = {401: f"the API key in ${self.options.api_key_env}",
                403: f"that the key in ${self.options.api_key_env} may use model '{self.model}'",
                404: "the model name and base_url"}.get(status, "the model name and the request parameters")
        return LLMError(self._redact(f"{self._where} answered HTTP {status} for model '{self.model}': {msg} - "
                                     f"check {hint}"))

    def _one(self, req: Request) -> Completion:
        a = self.sdk
        try:
            m = self.client.messages.create(**self.params(req))
        except a.BadRequestError as e:
            if _TOO_LONG.search(str(getattr(e, "message", e))):
                self._answered = True
                return Completion(text="", error=self._redact(f"HTTP 400: {e.message}"[:300]))
            raise self.config_error(e) from None
        except (a.AuthenticationError, a.PermissionDeniedError, a.NotFoundError) as e:
            raise self.config_error(e) from None
        except a.APIConnectionError as e:
            if not self._answered:
                raise LLMError(f"cannot reach Anthropic's API at {self._where} ({type(e).__name__}) - check "
                               "base_url and the network") from None
            return Completion(text="", error=f"{self._where}: no answer after {self.options.max_retries + 1} "
                                             f"attempts ({type(e).__name__})")
        except a.APIStatusError as e:    # 429, 5xx, 529 overloaded: the SDK's retries are spent
            self._answered = True
            why = f"{self._where}: HTTP {e.status_code} after {self.options.max_retries + 1} attempts: {e.message}"
            return Completion(text="", error=self._redact(why[:300]))
        self._answered = True
        return self.parse(m.model_dump(), req)

    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)

        def job(j: int) -> None:
            if stop.stopping():     # a Ctrl-C: nothing new is sent (s3synth.stop)
                return
            out[j] = self._one(requests[j])
            self.emit(j, out[j])

        with self._lock:
            start = 0
            if requests and not self._answered:     # a wrong key or model costs one request, not a batch
                job(0)
                start = 1
            with ThreadPoolExecutor(self.options.concurrency) as ex:
                for f in [ex.submit(job, j) for j in range(start, len(requests))]:
                    f.result()
        stop.raise_if_stopping()    # the requests in flight at a Ctrl-C are answered and saved by now
        return out  # type: ignore[return-value]

    def batch_provider(self) -> AnthropicBatches:
        if self._batches is None:
            self._batches = AnthropicBatches(self)
        return self._batches

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class AnthropicBatches(BatchProvider):
    """Message Batches: lines {"custom_id", "params"}; a batch is in_progress, then canceling or ended;
    its results stream as {"custom_id", "result": {"type": succeeded | errored | canceled | expired}}.
    Limits: 100,000 requests and 256 MB per batch."""

    name = "anthropic"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def __init__(self, llm: AnthropicLLM):
        self.llm, self.a = llm, llm.sdk

    def _error(self, e: Exception, what: str) -> LLMError:
        a = self.a
        if isinstance(e, (a.AuthenticationError, a.PermissionDeniedError, a.BadRequestError)):
            return self.llm.config_error(e)
        status = getattr(e, "status_code", None)
        return LLMError(self.llm._redact(f"{self.llm._where} could not {what}" + (f" (HTTP {status})" if status else
                                                                                    f" ({type(e).__name__})")
                                         + " - batches submitted so far are recorded: run again to go on"))

    def line(self, job: Job) -> dict:
        return {"custom_id": job.key, "params": self.llm.params(job.request)}

    def submit(self, lines: list[dict]) -> tuple[str, str | None, str]:
        try:
            b = self.llm.client.messages.batches.create(requests=lines)
        except self.a.AnthropicError as e:
            raise self._error(e, "create a message batch") from None
        return b.id, None, b.processing_status

    def poll(self, batch_id: str) -> BatchState:
        a = self.a
        try:
            b = self.llm.client.messages.batches.retrieve(batch_id)
        except a.NotFoundError:
            raise BatchLost(f"{self.llm._where} does not know it (HTTP 404: another API key or workspace?)") from None
        except (a.APIConnectionError, a.InternalServerError, a.RateLimitError) as e:
            return BatchState(status=f"not reachable ({type(e).__name__}), polling again", ended=False)
        except a.AnthropicError as e:
            raise self._error(e, f"retrieve message batch {batch_id}") from None
        c = b.request_counts
        not_done = c.errored + c.canceled + c.expired
        reason = ""
        if b.processing_status == "ended" and (c.canceled or c.expired):
            reason = f"{c.expired} expired (24 h window), {c.canceled} cancelled"
        return BatchState(status=b.processing_status, ended=b.processing_status == "ended", done=c.succeeded,
                          failed=not_done, total=c.succeeded + not_done + c.processing, reason=reason)

    def results(self, batch_id: str) -> Iterator[LineResult]:
        try:
            rows = list(self.llm.client.messages.batches.results(batch_id))
        except self.a.AnthropicError as e:
            raise self._error(e, f"download the results of message batch {batch_id}") from None
        for r in rows:
            res = r.result
            if res.type == "succeeded":
                yield LineResult(r.custom_id, "ok", res.message.model_dump())
            elif res.type == "errored":
                err = res.error.error
                why = self.llm._redact(f"{err.type}: {' '.join(str(err.message).split())[:300]}")
                fatal = err.type in ("invalid_request_error", "authentication_error", "permission_error",
                                     "not_found_error", "request_too_large")
                yield LineResult(r.custom_id, "fail" if fatal else "retry", why=why)
            else:       # canceled, expired
                yield LineResult(r.custom_id, "retry", why=f"{res.type}")

    def completion(self, result: dict, job: Job) -> Completion:
        return self.llm.parse(result, job.request)

    def close(self) -> None:
        pass
