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
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import deque
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


def _error(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:   # keep test output quiet
        pass

    def _send(self, status: int, payload, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except OSError:     # the client gave up (timeout) and closed the connection
            self.close_connection = True

    def do_POST(self) -> None:
        stub = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
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
