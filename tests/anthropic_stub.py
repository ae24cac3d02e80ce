"""A loopback stub of Anthropic's Messages and Message Batches APIs for tests (127.0.0.1, free port),
following the documented shapes: POST /v1/messages (the key as x-api-key or `Authorization: Bearer`,
as the SDK 2.x sends it; an anthropic-version header), POST /v1/messages/batches, GET
/v1/messages/batches/{id}, GET .../{id}/results (JSONL), POST .../{id}/cancel.

    with AnthropicStub() as stub:       # stub.base_url == "http://127.0.0.1:PORT" (the SDK adds /v1/...)
        stub.api_key = "sk-ant-right"   # 401 authentication_error for any other key
        stub.fail_next("overloaded", 2) # the next 2 messages get 529 overloaded_error (or "429", "500")
        stub.hold_batches = True        # batches stay in_progress
        stub.line_errors = {1: "api_error"}   # line 1 of the next batch errors (or "invalid_request_error")
        stub.expire_next = 2            # the next batch answers 2 lines; the rest are `expired`
        stub.hold_after = 3             # online messages after the first 3 wait for `stub.release` (set())

An answer is "answer to: " + the last 30 characters of the last user message + " #<n words>", the
same online and in a batch. Sampling parameters (temperature, top_p, top_k) are refused with 400
"Extra inputs are not permitted", as API version 2026-10-21 does. A batch is in_progress for
`polls_per_state` retrievals, then ended (with `results_url`); request_counts are processing until it
ends, as documented.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer

_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
STATUS = {"invalid_request_error": 400, "authentication_error": 401, "not_found_error": 404,
          "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def _err(type_: str, message: str) -> dict:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_stub"}


class AnthropicStub(LocalServer):
    def __init__(self):
        self.api_key: str | None = None
        self.models: set[str] | None = None
        self.received: list[dict] = []      # {"method", "path", "body", "key", "version"}
        self.messages: list[dict] = []      # bodies of the online messages answered
        self.batches: dict[str, dict] = {}
        self.batch_log: list[dict] = []     # {"id", "custom_ids"} per created batch
        self.retrievals: Counter = Counter()
        self.polls_per_state = 1
        self.hold_batches = False
        self.line_errors: dict[int, str] = {}
        self.expire_next: int | None = None
        self._faults: deque[str] = deque()
        self._lock = threading.Lock()
        self.hold_after: int | None = None
        self.release = threading.Event()

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/v1")

    def fail_next(self, kind: str, n: int = 1) -> None:
        assert kind in ("overloaded", "429", "500"), kind
        with self._lock:
            self._faults.extend([kind] * n)

    def answer(self, params: dict, msg_id: str) -> dict:
        last = params["messages"][-1]["content"]
        text = f"answer to: {last[-30:]} #{len(last.split())}"
        stop = "end_turn"
        for s in params.get("stop_sequences") or ():
            if s in text:
                text, stop = text[:text.index(s)], "stop_sequence"
        words = sum(len(str(m["content"]).split()) for m in params["messages"]) + len(str(params.get("system",
                                                                                                   "")).split())
        return {"id": msg_id, "type": "message", "role": "assistant", "model": params["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": words, "output_tokens": len(text.split())}}

    def check_params(self, p) -> str | None:
        if not isinstance(p, dict) or not isinstance(p.get("messages"), list) or not p["messages"]:
            return "messages: field required"
        if not isinstance(p.get("max_tokens"), int) or p["max_tokens"] < 1:
            return "max_tokens: field required"
        if any(m.get("role") not in ("user", "assistant") for m in p["messages"]):
            return "messages: roles must be user or assistant (system goes to the top-level system field)"
        if any(not s.strip() for s in p.get("stop_sequences") or ()):
            return "stop_sequences: each stop sequence must contain non-whitespace"
        for k in ("temperature", "top_p", "top_k"):
            if k in p:
                return f"{k}: Extra inputs are not permitted"
        if self.models is not None and p.get("model") not in self.models:
            return None   # answered as 404 by the caller
        return None

    # -- batches -------------------------------------------------------------------------------
    def _public(self, b: dict) -> dict:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    def create_batch(self, body) -> tuple[int, dict]:
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            return 400, _err("invalid_request_error", "requests: field required")
        ids = [r.get("custom_id") for r in reqs]
        if len(set(ids)) != len(ids) or not all(isinstance(i, str) and _ID.match(i) for i in ids):
            return 400, _err("invalid_request_error", "custom_id must be unique and match ^[a-zA-Z0-9_-]{1,64}$")
        for r in reqs:
            why = self.check_params(r.get("params"))
            if why:
                return 400, _err("invalid_request_error", f"requests.{ids.index(r['custom_id'])}.params.{why}")
        now = time.time()
        bid = f"msgbatch_{len(self.batches) + 1:04d}"
        b = {"id": bid, "type": "message_batch", "processing_status": "in_progress",
             "request_counts": {"processing": len(reqs), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
             "ended_at": None, "created_at": _iso(now), "expires_at": _iso(now + 86400), "archived_at": None,
             "cancel_initiated_at": None, "results_url": None,
             "_reqs": reqs, "_polls": 0, "_expire": self.expire_next, "_errors": dict(self.line_errors),
             "_results": None}
        self.expire_next, self.line_errors = None, {}
        self.batches[bid] = b
        self.batch_log.append({"id": bid, "custom_ids": ids})
        return 200, self._public(b)

    def advance(self, b: dict) -> None:
        if b["processing_status"] == "ended":
            return
        b["_polls"] += 1
        if b["_polls"] <= self.polls_per_state or (self.hold_batches and b["processing_status"] == "in_progress"):
            return
        answered = len(b["_reqs"]) if b["_expire"] is None else b["_expire"]
        gone = "canceled" if b["processing_status"] == "canceling" else "expired"
        rows, counts = [], {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for i, r in enumerate(b["_reqs"]):
            if i >= answered:
                result = {"type": gone}
            elif b["_errors"].get(i):
                result = {"type": "errored", "error": _err(b["_errors"][i], "The stub failed this request")}
            else:
                result = {"type": "succeeded", "message": self.answer(r["params"], f"msg_{b['id']}_{i}")}
                self.messages.append(r["params"])
            counts[result["type"]] += 1
            rows.append({"custom_id": r["custom_id"], "result": result})
        b.update(processing_status="ended", request_counts=counts, ended_at=_iso(time.time()),
                 results_url=f"{self.base_url}/v1/messages/batches/{b['id']}/results", _results=rows)


class _Handler(BaseHTTPRequestHandler):
    owner: AnthropicStub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, payload, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("request-id", "req_stub")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _route(self, method: str) -> None:
        stub = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?")[0].rstrip("/")
        key = self.headers.get("x-api-key") or (self.headers.get("Authorization") or "").removeprefix("Bearer ") or None
        with stub._lock:
            stub.received.append({"method": method, "path": path, "body": body, "key": key,
                                  "version": self.headers.get("anthropic-version")})
            fault = stub._faults.popleft() if stub._faults and path == "/v1/messages" else None
            held = (stub.hold_after is not None and path == "/v1/messages"
                    and sum(r["path"] == path for r in stub.received) > stub.hold_after)
        if not self.headers.get("anthropic-version"):
            return self._send(400, _err("invalid_request_error", "anthropic-version: header is required"))
        if stub.api_key is not None and key != stub.api_key:
            return self._send(401, _err("authentication_error", "invalid x-api-key"))
        if method == "POST" and path == "/v1/messages":
            if fault:
                kind = {"overloaded": "overloaded_error", "429": "rate_limit_error", "500": "api_error"}[fault]
                return self._send(STATUS[kind], _err(kind, "Overloaded" if fault == "overloaded" else "try again"))
            why = stub.check_params(body)
            if why:
                return self._send(400, _err("invalid_request_error", why))
            if stub.models is not None and body["model"] not in stub.models:
                return self._send(404, _err("not_found_error", f"model: {body['model']}"))
            if held:
                stub.release.wait(60)
            with stub._lock:
                stub.messages.append(body)
                n = len(stub.messages)
            return self._send(200, stub.answer(body, f"msg_{n:05d}"))
        parts = path.strip("/").split("/")       # v1 messages batches [id] [results|cancel]
        if parts[:3] != ["v1", "messages", "batches"]:
            return self._send(404, _err("not_found_error", f"Not found: {path}"))
        with stub._lock:
            if method == "POST" and len(parts) == 3:
                return self._send(*stub.create_batch(body))
            b = stub.batches.get(parts[3]) if len(parts) > 3 else None
            if b is None:
                return self._send(404, _err("not_found_error", f"Message batch not found: {'/'.join(parts[3:])}"))
            if method == "GET" and len(parts) == 4:
                stub.retrievals[b["id"]] += 1
                stub.advance(b)
                return self._send(200, stub._public(b))
            if method == "GET" and parts[4:] == ["results"]:
                if b["_results"] is None:
                    return self._send(400, _err("invalid_request_error", "the batch is still in progress"))
                data = "".join(json.dumps(r) + "\n" for r in b["_results"]).encode()
                return self._send(200, data, content_type="application/binary")
            if method == "POST" and parts[4:] == ["cancel"]:
                if b["processing_status"] == "in_progress":
                    b["processing_status"], b["cancel_initiated_at"] = "canceling", _iso(time.time())
                    b["_expire"] = 0
                return self._send(200, stub._public(b))
        return self._send(404, _err("not_found_error", f"Not found: {path}"))

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


AnthropicStub.handler = _Handler
