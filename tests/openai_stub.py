"""A small OpenAI-compatible HTTP server for tests, on 127.0.0.1 with a free port, in a background thread.

Answers POST /v1/chat/completions and /v1/completions deterministically with
"answer to: " + the last 30 characters of the prompt (or last message) + " #<seed>", records every
request it receives, and injects faults on demand:

    with OpenAIStub(delay=0.2) as stub:          # stub.url == "http://127.0.0.1:PORT/v1"
        stub.fail_next("429", 2)                  # the next 2 requests get a fault
        stub.fail_rate(0.3, ["500", "hang"])      # or a share of all requests, from a fixed seed
        stub.api_key = "sk-right"                 # 401 (OpenAI-style error JSON) for any other key
        stub.models = {"m"}                       # 404 model_not_found for any other model

Fault kinds: 429 (with Retry-After: `retry_after`), 500, 503, 400_context (prompt too long),
hang (sleeps `hang_s` before answering), truncated (cut JSON), not_json, empty_choices,
empty_content, 401, 404, cut_content (the answer's content cut off by max_tokens mid-way: a
structured output that is not valid JSON, finish_reason "length", as OpenAI documents).

A chat request with `response_format` {"type": "json_schema"} is answered with content that follows
the schema (objects with every property, arrays of `array_len` items, strings as above plus " item K").

It also serves OpenAI's Batch API as documented: POST /v1/files (multipart, purpose=batch), GET
/v1/files/{id}/content, POST /v1/batches, GET /v1/batches (newest first), GET /v1/batches/{id}, POST
/v1/batches/{id}/cancel. A batch
is `validating` -> `in_progress` -> `finalizing` -> `completed`, one state per `polls_per_state`
retrievals; each line is answered exactly like the online endpoint (same text for the same body), in
the output file as {"id", "custom_id", "response": {"status_code": 200, "request_id", "body"},
"error": null}. Knobs:

        stub.hold_batches = True        # batches stay in_progress (to kill a client while one runs)
        stub.line_errors = {2: 500}     # line 2 of the next batch goes to the error file with HTTP 500
        stub.expire_next = 3            # the next batch expires after answering its first 3 lines; the
                                        # rest go to the error file with error code batch_expired
        stub.batch_log                  # per created batch: {"id", "custom_ids"}; stub.retrievals[id]
"""

from __future__ import annotations

import email.parser
import json
import random
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer

FAULTS = ("429", "500", "503", "400_context", "hang", "truncated", "not_json", "empty_choices",
          "empty_content", "401", "404", "cut_content")


def schema_instance(schema: dict, text: str, array_len: int):
    """A value following `schema` (object, array, string, number, boolean), strings built from `text`."""
    t = schema.get("type")
    if t == "object":
        return {k: schema_instance(v, text, array_len) for k, v in schema.get("properties", {}).items()}
    if t == "array":
        return [schema_instance(schema.get("items", {}), f"{text} item {k + 1}", array_len) for k in range(array_len)]
    if t in ("number", "integer"):
        return 1
    if t == "boolean":
        return True
    return text


class OpenAIStub(LocalServer):
    def __init__(self, *, delay: float = 0.0, usage: bool = True, retry_after: str | None = "0.1",
                 hang_s: float = 1.0, seed: int = 0):
        self.delay = delay              # seconds each answer takes
        self.usage = usage              # send `usage` in answers
        self.retry_after = retry_after  # Retry-After header on 429 (None: no header)
        self.hang_s = hang_s
        self.api_key: str | None = None
        self.models: set[str] | None = None
        self.received: list[dict] = []  # {"path", "body" (dict or None), "auth", "t"} per request
        self.answered: list[dict] = []  # bodies of the requests answered with a full 200 answer
        self.hold_after: int | None = None   # requests after this many wait for `release` (to kill a client)
        self.release = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self._faults: deque[str] = deque()
        self._rate, self._rate_kinds, self._rng = 0.0, (), random.Random(seed)
        self._lock = threading.Lock()
        self.reasoning: str | None = None    # "think": content wraps a <think> block; "only": reasoning_content
        self.refuse_max_tokens = False       # 400 for a body with max_tokens, as OpenAI's reasoning models do
        # the Batch API
        self.files: dict[str, dict] = {}     # id -> {"purpose", "filename", "content": bytes}
        self.batches: dict[str, dict] = {}   # id -> the batch object (+ "_lines", "_polls", "_expire")
        self.batch_log: list[dict] = []      # {"id", "custom_ids"} per created batch
        self.retrievals: Counter = Counter()  # GET /v1/batches/{id} per id
        self.polls_per_state = 1
        self.hold_batches = False
        self.line_errors: dict[int, int] = {}     # for the next created batch: line index -> HTTP status
        self.expire_next: int | None = None
        self.array_len = 5                   # items of each array in a structured (json_schema) answer

    # -- knobs ---------------------------------------------------------------------------------
    def fail_next(self, kind: str, n: int = 1) -> None:
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.extend([kind] * n)

    def fail_rate(self, rate: float, kinds, seed: int = 0) -> None:
        assert all(k in FAULTS for k in kinds), kinds
        with self._lock:
            self._rate, self._rate_kinds, self._rng = rate, tuple(kinds), random.Random(seed)

    @property
    def bodies(self) -> list[dict]:
        with self._lock:
            return [r["body"] for r in self.received]

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    # -- behaviour -----------------------------------------------------------------------------
    def _next_fault(self) -> str | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._rate and self._rng.random() < self._rate:
                return self._rng.choice(self._rate_kinds)
        return None

    def _answer(self, path: str, body: dict) -> dict:
        chat = path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        text = f"answer to: {prompt[-30:]} #{body.get('seed')}"
        fmt = body.get("response_format") or {}
        if chat and fmt.get("type") == "json_schema":
            text = json.dumps(schema_instance(fmt["json_schema"]["schema"], text, self.array_len))
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        if chat and self.reasoning == "think":
            choice["message"]["content"] = f"<think>\nThe user wants a short answer.\n</think>\n\n{text}"
        elif chat and self.reasoning == "only":
            choice["message"].update(content="", reasoning_content="Let me think about this for a long time")
            choice["finish_reason"] = "length"
        out = {"id": "stub-1", "object": "chat.completion" if chat else "text_completion",
               "model": body.get("model"), "choices": [choice]}
        if self.usage:
            out["usage"] = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                            "total_tokens": len(prompt.split()) + len(text.split())}
        return out

    # -- the Batch API -------------------------------------------------------------------------
    def _new_file(self, content: bytes, purpose: str, filename: str) -> dict:
        fid = f"file-{len(self.files) + 1:04d}"
        self.files[fid] = {"purpose": purpose, "filename": filename, "content": content}
        return {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def _create_batch(self, body: dict) -> tuple[int, dict]:
        f = self.files.get(body.get("input_file_id"))
        if body.get("completion_window") != "24h":
            return 400, _error("completion_window must be 24h", "invalid_request_error", None)
        if body.get("endpoint") not in ("/v1/chat/completions", "/v1/completions"):
            return 400, _error(f"Unsupported endpoint {body.get('endpoint')}", "invalid_request_error", None)
        if f is None or f["purpose"] != "batch":
            return 400, _error("input_file_id must be a file uploaded with purpose batch", "invalid_request_error",
                               None)
        lines = [json.loads(x) for x in f["content"].decode().splitlines() if x.strip()]
        bid = f"batch_{len(self.batches) + 1:04d}"
        now = int(time.time())
        b = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
             "input_file_id": body["input_file_id"], "completion_window": "24h", "status": "validating",
             "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
             "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
             "expired_at": None, "cancelling_at": None, "cancelled_at": None,
             "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
             "metadata": body.get("metadata"), "_lines": lines, "_polls": 0, "_expire": self.expire_next,
             "_errors": dict(self.line_errors)}
        self.expire_next, self.line_errors = None, {}
        ids = [x.get("custom_id") for x in lines]
        bad = [i for i, x in enumerate(lines, 1) if x.get("method") != "POST" or x.get("url") != body["endpoint"]]
        if len(set(ids)) != len(ids) or bad:
            b["status"], b["failed_at"] = "failed", now
            b["errors"] = {"object": "list", "data": [
                {"code": "duplicate_custom_id" if len(set(ids)) != len(ids) else "invalid_url",
                 "message": "The batch input file has invalid lines", "param": None,
                 "line": bad[0] if bad else None}]}
        self.batches[bid] = b
        self.batch_log.append({"id": bid, "custom_ids": ids})
        return 200, _public(b)

    def _advance(self, b: dict) -> None:
        """One retrieval: the batch moves on one state every `polls_per_state` retrievals."""
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            return
        b["_polls"] += 1
        if b["_polls"] % self.polls_per_state:
            return
        now = int(time.time())
        n = len(b["_lines"])
        if b["status"] == "cancelling":
            self._finish(b, b["_expire"] or 0, "cancelled", "batch_cancelled")
        elif b["status"] == "validating":
            b["status"], b["in_progress_at"] = "in_progress", now
        elif b["status"] == "in_progress" and self.hold_batches:
            b["request_counts"]["completed"] = n // 2
        elif b["status"] == "in_progress" and b["_expire"] is not None:
            self._finish(b, b["_expire"], "expired", "batch_expired")
        elif b["status"] == "in_progress":
            b["status"], b["finalizing_at"] = "finalizing", now
            b["request_counts"]["completed"] = n
        elif b["status"] == "finalizing":
            self._finish(b, n, "completed", None)

    def _finish(self, b: dict, answered: int, status: str, unanswered_code: str | None) -> None:
        out, err = [], []
        for i, line in enumerate(b["_lines"]):
            rid = f"batch_req_{b['id']}_{i}"
            if i >= answered:
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None,
                            "error": {"code": unanswered_code, "message": "This request could not be executed "
                                      "before the completion window expired." if unanswered_code == "batch_expired"
                                      else "The batch was cancelled."}})
                continue
            code = b["_errors"].get(i)
            if code:
                err.append({"id": rid, "custom_id": line["custom_id"], "error": None, "response": {
                    "status_code": code, "request_id": f"req_{i}",
                    "body": _error("The server had an error" if code >= 500 else "Invalid value for 'messages'",
                                   "server_error" if code >= 500 else "invalid_request_error", None)}})
                continue
            body = self._answer(b["endpoint"], line["body"])
            self.answered.append(line["body"])      # (the caller holds the lock)
            out.append({"id": rid, "custom_id": line["custom_id"], "error": None,
                        "response": {"status_code": 200, "request_id": f"req_{i}", "body": body}})
        now = int(time.time())
        b["status"], b[f"{status}_at"] = status, now
        b["request_counts"].update(completed=len(out), failed=len(err))
        for key, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[key] = self._new_file(data, "batch_output", f"{b['id']}_{key}.jsonl")["id"]


def _public(b: dict) -> dict:
    return {k: v for k, v in b.items() if not k.startswith("_")}


def _multipart(content_type: str, raw: bytes) -> dict:
    """The fields of a multipart/form-data body: name -> (filename or None, bytes)."""
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out = {}
    for part in msg.get_payload() if msg.is_multipart() else ():
        out[part.get_param("name", header="content-disposition")] = (part.get_filename(),
                                                                     part.get_payload(decode=True))
    return out


def _error(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:   # keep test output quiet
        pass

    def _send(self, status: int, payload, headers: dict | None = None, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:     # the client gave up (timeout) and closed the connection
            self.close_connection = True

    def _authorized(self, stub: OpenAIStub) -> bool:
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if stub.api_key is not None and given != stub.api_key:
            self._send(401, _error(f"Incorrect API key provided: {given}.", "invalid_request_error",
                                   "invalid_api_key"))
            return False
        return True

    def _batch_api(self, stub: OpenAIStub, method: str, raw: bytes) -> None:
        with stub._lock:
            stub.received.append({"path": self.path, "body": None, "auth": self.headers.get("Authorization"),
                                  "t": time.monotonic(), "method": method})
        if not self._authorized(stub):
            return
        parts = self.path.split("?")[0].strip("/").split("/")     # v1, files|batches, id, (content|cancel)
        with stub._lock:
            if method == "POST" and parts == ["v1", "files"]:
                fields = _multipart(self.headers.get("Content-Type", ""), raw)
                if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
                    return self._send(400, _error("purpose must be batch and a file given", "invalid_request_error",
                                                  None))
                return self._send(200, stub._new_file(fields["file"][1], "batch", fields["file"][0] or "upload"))
            if method == "GET" and len(parts) == 4 and parts[1] == "files" and parts[3] == "content":
                f = stub.files.get(parts[2])
                if f is None:
                    return self._send(404, _error(f"No such File object: {parts[2]}", "invalid_request_error", None))
                return self._send(200, f["content"], content_type="application/octet-stream")
            if method == "POST" and parts == ["v1", "batches"]:
                return self._send(*stub._create_batch(json.loads(raw)))
            if method == "GET" and parts == ["v1", "batches"]:      # newest first, one page of `limit`
                limit = int(dict(x.split("=", 1) for x in self.path.partition("?")[2].split("&") if "=" in x)
                            .get("limit", 20))
                data = [_public(b) for b in reversed(stub.batches.values())][:limit]
                return self._send(200, {"object": "list", "data": data, "has_more": len(stub.batches) > limit,
                                        "first_id": data[0]["id"] if data else None,
                                        "last_id": data[-1]["id"] if data else None})
            b = stub.batches.get(parts[2]) if len(parts) >= 3 and parts[1] == "batches" else None
            if b is None:
                return self._send(404, _error(f"No batch found with id '{'/'.join(parts[2:])}'.",
                                              "invalid_request_error", None))
            if method == "GET" and len(parts) == 3:
                stub.retrievals[b["id"]] += 1
                stub._advance(b)
                return self._send(200, _public(b))
            if method == "POST" and parts[3:] == ["cancel"]:
                if b["status"] in ("validating", "in_progress", "finalizing"):
                    b["status"], b["cancelling_at"] = "cancelling", int(time.time())
                    b["_expire"] = b["request_counts"]["completed"]
                return self._send(200, _public(b))
        return self._send(404, _error(f"Unknown path {self.path}", "invalid_request_error", None))

    def do_GET(self) -> None:
        self._batch_api(self.owner, "GET", b"")

    def do_POST(self) -> None:
        stub = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith(("/v1/files", "/v1/batches")):
            return self._batch_api(stub, "POST", raw)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with stub._lock:
            stub.received.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                  "t": time.monotonic()})
            held = stub.hold_after is not None and len(stub.received) > stub.hold_after
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            if held:
                stub.release.wait(60)
            self._handle(stub, body)
        finally:
            with stub._lock:
                stub.in_flight -= 1

    def _handle(self, stub: OpenAIStub, body) -> None:
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            return self._send(404, _error(f"Unknown path {self.path}", "invalid_request_error", None))
        if not isinstance(body, dict):
            return self._send(400, _error("We could not parse the JSON body", "invalid_request_error", None))
        given = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        fault = stub._next_fault()
        if fault == "401" or (stub.api_key is not None and given != stub.api_key):
            return self._send(401, _error(f"Incorrect API key provided: {given}.", "invalid_request_error",
                                          "invalid_api_key"))
        if fault == "404" or (stub.models is not None and body.get("model") not in stub.models):
            return self._send(404, _error(f"The model `{body.get('model')}` does not exist", "invalid_request_error",
                                          "model_not_found"))
        if stub.refuse_max_tokens and "max_tokens" in body:
            return self._send(400, _error("Unsupported parameter: 'max_tokens' is not supported with this model. "
                                          "Use 'max_completion_tokens' instead.", "invalid_request_error",
                                          "unsupported_parameter"))
        if stub.delay:
            time.sleep(stub.delay)
        if fault == "429":
            headers = {"Retry-After": stub.retry_after} if stub.retry_after is not None else {}
            return self._send(429, _error("Rate limit reached", "requests", "rate_limit_exceeded"), headers)
        if fault in ("500", "503"):
            return self._send(int(fault), _error("The server had an error", "server_error", None))
        if fault == "400_context":
            return self._send(400, _error("This model's maximum context length is 8 tokens", "invalid_request_error",
                                          "context_length_exceeded"))
        if fault == "hang":
            time.sleep(stub.hang_s)
        answer = stub._answer(self.path, body)
        if fault == "truncated":
            return self._send(200, json.dumps(answer).encode()[:40])
        if fault == "not_json":
            return self._send(200, b"<html>Bad gateway</html>")
        if fault == "cut_content":
            choice = answer["choices"][0]
            key = "message" in choice
            full = choice["message"]["content"] if key else choice["text"]
            cut = full[:len(full) * 2 // 3]
            if key:
                choice["message"]["content"] = cut
            else:
                choice["text"] = cut
            choice["finish_reason"] = "length"
        if fault == "empty_choices":
            answer["choices"] = []
        if fault == "empty_content":
            choice = answer["choices"][0]
            if "message" in choice:
                choice["message"]["content"] = ""
            else:
                choice["text"] = ""
        if fault is None:
            with stub._lock:
                stub.answered.append(body)
        return self._send(200, answer)


OpenAIStub.handler = _Handler     # defined after the class it serves
