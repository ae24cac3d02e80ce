"""OpenAI's Batch API for `--llm openai:MODEL --batch`, through the official `openai` SDK.

The stage's requests become the Batch API's JSONL (`{"custom_id", "method": "POST", "url", "body"}`,
custom_id = the request's cache key, body = exactly what the online call would send), uploaded with
`files.create(purpose="batch")`; `batches.create(endpoint=/v1/chat/completions or /v1/completions,
completion_window="24h")` starts it. A batch goes validating -> in_progress -> finalizing ->
completed (or failed, expired, cancelling -> cancelled); the output file holds the answered lines, the
error file the others (`response.status_code` >= 400, or an `error` such as batch_expired), matched
by custom_id. Limits: 50,000 requests and 200 MB per input file.

The SDK retries connection errors, 408/409/429 and 5xx itself (`max_retries`, exponential backoff,
Retry-After); its typed errors become one-line LLMErrors here. The online path stays on the backend's
own httpx client (openai_compat.py): it handles servers that are not OpenAI (vLLM, llama.cpp) and
reasoning-model quirks the SDK does not, and its fault tolerance is measured by the proxy tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from ..errors import LLMError
from .base import Completion
from .batch import BatchLost, BatchProvider, BatchState, LineResult, items_sha256
from .executor import Job

ENDED = {"completed": "", "failed": "the batch failed validation", "expired": "the batch expired (24 h window)",
         "cancelled": "the batch was cancelled"}
RETRY_CODES = {408, 409, 429}


class OpenAIBatches(BatchProvider):
    name = "openai"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def __init__(self, llm):
        try:
            import openai
        except ImportError:
            raise LLMError("--batch with openai:MODEL needs the openai SDK: pip install 's3synth[openai]' "
                           "(or bash scripts/setup.sh)") from None
        self.openai, self.llm = openai, llm
        self.endpoint = "/v1/chat/completions" if llm.mode == "chat" else "/v1/completions"
        self.client = openai.OpenAI(api_key=llm._api_key or "no-key", base_url=llm._base_url,
                                    max_retries=llm.max_retries, timeout=max(llm.timeout, 300.0))

    # -- errors --------------------------------------------------------------------------------
    def _error(self, e: Exception, what: str) -> LLMError:
        """One line for an SDK error, with the way out; never the key."""
        o, llm = self.openai, self.llm
        status = getattr(e, "status_code", None)
        msg = llm._redact(" ".join(str(getattr(e, "message", None) or e).split())[:300])
        if isinstance(e, (o.AuthenticationError, o.PermissionDeniedError)):
            return LLMError(llm._config_error(status, msg))
        if isinstance(e, o.NotFoundError):
            return LLMError(llm._redact(f"{llm._where} answered HTTP 404 to {what}: {msg} - the server may have "
                                        "no Batch API (vLLM and llama.cpp have none): drop --batch"))
        if isinstance(e, o.APIConnectionError):
            return LLMError(llm._redact(f"cannot reach {llm._where} to {what} ({type(e).__name__}) - check "
                                        "base_url; batches submitted so far are recorded: run again to go on"))
        return LLMError(llm._redact(f"{llm._where} refused to {what}" + (f" (HTTP {status})" if status else "")
                                    + f": {msg} - batches submitted so far are recorded: run again to go on"))

    # -- the provider --------------------------------------------------------------------------
    def line(self, job: Job) -> dict:
        llm = self.llm
        if llm.mode == "completions" and job.request.is_chat:
            raise LLMError("mode='completions' cannot send chat messages; use mode='chat' or plain prompts")
        body = llm._body(job.request, job.seed)
        if llm._max_completion_tokens and "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        return {"custom_id": job.key, "method": "POST", "url": self.endpoint, "body": body}

    def submit(self, lines: list[dict]) -> tuple[str, str | None, str]:
        data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode("utf-8")
        try:
            f = self.client.files.create(file=("s3synth-batch.jsonl", data, "application/jsonl"), purpose="batch")
            b = self.client.batches.create(
                input_file_id=f.id, endpoint=self.endpoint, completion_window="24h",
                metadata={"created_by": "s3synth", "items_sha256": items_sha256([x["custom_id"] for x in lines])})
        except self.openai.OpenAIError as e:
            raise self._error(e, "create a batch") from None
        return b.id, f.id, b.status

    def find(self, items_sha256: str, known: set[str]) -> tuple[str, str | None, str] | None:
        """The most recent unrecorded batch (of the last 100) tagged with these custom_ids, unless it failed."""
        try:
            page = self.client.batches.list(limit=100)
        except self.openai.OpenAIError as e:
            raise self._error(e, "list batches") from None
        for b in page.data:
            meta = b.metadata or {}
            if (b.id not in known and meta.get("created_by") == "s3synth" and meta.get("items_sha256") == items_sha256
                    and b.status != "failed" and b.endpoint == self.endpoint):
                return b.id, b.input_file_id, b.status
        return None

    def poll(self, batch_id: str) -> BatchState:
        o = self.openai
        try:
            b = self.client.batches.retrieve(batch_id)
        except o.NotFoundError:
            raise BatchLost(f"{self.llm._where} does not know it (HTTP 404: another API key or "
                            "organisation?)") from None
        except (o.APIConnectionError, o.InternalServerError, o.RateLimitError) as e:
            return BatchState(status=f"not reachable ({type(e).__name__}), polling again", ended=False)
        except o.OpenAIError as e:
            raise self._error(e, f"retrieve batch {batch_id}") from None
        c = b.request_counts
        reason = ENDED.get(b.status, "")
        if b.status == "failed" and b.errors and b.errors.data:
            reason += ": " + "; ".join(f"{x.code}: {x.message}" for x in b.errors.data[:3])
        return BatchState(status=b.status, ended=b.status in ENDED, done=c.completed if c else 0,
                          failed=c.failed if c else 0, total=c.total if c else 0, reason=self.llm._redact(reason))

    def results(self, batch_id: str) -> Iterator[LineResult]:
        try:
            b = self.client.batches.retrieve(batch_id)
            texts = [self.client.files.content(fid).text for fid in (b.output_file_id, b.error_file_id) if fid]
        except self.openai.OpenAIError as e:
            raise self._error(e, f"download the results of batch {batch_id}") from None
        for text in texts:
            for raw in text.splitlines():
                if raw.strip():
                    yield self._line(json.loads(raw))

    def _line(self, d: dict) -> LineResult:
        from .openai_compat import _CONTEXT_TOO_LONG, _NO_MAX_TOKENS

        cid, resp, err = d.get("custom_id"), d.get("response"), d.get("error")
        if isinstance(resp, dict) and resp.get("status_code") == 200 and isinstance(resp.get("body"), dict):
            return LineResult(cid, "ok", resp["body"])
        if isinstance(resp, dict) and resp.get("status_code"):
            code, body = int(resp["status_code"]), resp.get("body")
            e = body.get("error") if isinstance(body, dict) else None
            said = (e.get("message") if isinstance(e, dict) else e) or body
            msg = self.llm._redact(" ".join(str(said).split())[:300])
            if code == 400 and _NO_MAX_TOKENS.search(msg) and not self.llm._max_completion_tokens:
                self.llm._max_completion_tokens = True      # the next batch sends max_completion_tokens
                return LineResult(cid, "retry", why="the model takes max_completion_tokens")
            if code in RETRY_CODES or code >= 500:
                return LineResult(cid, "retry", why=f"HTTP {code}: {msg}")
            if code == 400 and _CONTEXT_TOO_LONG.search(msg):
                return LineResult(cid, "fail", why=f"HTTP 400: {msg}")
            return LineResult(cid, "fail", why=f"HTTP {code}: {msg}")
        why = (err.get("code") or err.get("message")) if isinstance(err, dict) else "no response"
        return LineResult(cid, "retry", why=str(why))

    def completion(self, result: dict, job: Job) -> Completion:
        from .openai_compat import _Retry

        try:
            return self.llm._parse_data(result, self.llm._prompt_text(job.request))
        except _Retry as e:
            return Completion(text="", error=f"openai batch: {e}")

    def close(self) -> None:
        self.client.close()

