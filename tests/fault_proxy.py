"""A fault-injecting HTTP proxy for tests, on 127.0.0.1 with a free port, in background threads.

It forwards requests to an upstream OpenAI-compatible server and, for a share `rate` of the POSTs
(drawn from a seeded RNG in arrival order; the kinds taken in turn, so every kind comes up) or for
the next ones queued with `fail_next`, answers with a fault instead:

    with FaultProxy("http://127.0.0.1:8080", rate=0.2, hang_s=6.0, seed=1) as proxy:
        proxy.url       # "http://127.0.0.1:PORT/v1": give it to the client as its base URL
        proxy.log       # one dict per request: path, body, key, fault, forwarded, ok, status, text
        proxy.ok_bodies()   # bodies of the requests whose full, valid answer reached a connected client

Fault kinds (POST only; GETs such as /v1/models are always forwarded):
  429          answered at once with `Retry-After: retry_after`, not forwarded
  500, 503     answered at once with an OpenAI-style error, not forwarded
  hang         nothing is forwarded or answered for `hang_s` seconds (past the client's timeout),
               then the connection is dropped
  truncated    forwarded; the upstream's 200 answer is cut to half its bytes
  not_json     forwarded; an HTML page with status 200 replaces the answer
  401          not forwarded; 401 whose message echoes the key sent, as OpenAI's does (never random)

`ok` is True only for a 200 answer with a non-empty choice that was written whole to a client that
was still connected (a client that timed out or was killed is detected and logged as not ok).
`hold_after = N` makes every request after the N-th wait for `release` (set) before going on, so a
test can kill a client at a known point; held requests whose client is gone are never forwarded.
"""

from __future__ import annotations

import http.client
import json
import random
import select
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from local_server import LocalServer

FAULTS = ("429", "500", "503", "hang", "truncated", "not_json", "401")
RANDOM_FAULTS = ("429", "500", "503", "hang", "truncated", "not_json")


class FaultProxy(LocalServer):
    def __init__(self, upstream: str, *, rate: float = 0.0, kinds=RANDOM_FAULTS, seed: int = 0,
                 hang_s: float = 5.0, retry_after: str = "1", upstream_timeout: float = 300.0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        assert all(k in FAULTS for k in kinds), kinds
        self.rate, self.kinds, self._rng = rate, tuple(kinds), random.Random(seed)
        self.hang_s, self.retry_after, self.upstream_timeout = hang_s, retry_after, upstream_timeout
        self.log: list[dict] = []
        self.hold_after: int | None = None
        self.release = threading.Event()
        self._faults: deque[str] = deque()
        self._posts = 0
        self._n_random = 0
        self._lock = threading.Lock()

    # -- knobs and read-outs ---------------------------------------------------------------------
    def fail_next(self, kind: str, n: int = 1) -> None:
        assert kind in FAULTS, kind
        with self._lock:
            self._faults.extend([kind] * n)

    def _decide(self) -> tuple[str | None, bool]:
        """(fault for the next POST, whether it must wait for `release`)."""
        with self._lock:
            self._posts += 1
            held = self.hold_after is not None and self._posts > self.hold_after
            if self._faults:
                return self._faults.popleft(), held
            if self.rate and self._rng.random() < self.rate:
                self._n_random += 1
                return self.kinds[(self._n_random - 1) % len(self.kinds)], held
            return None, held

    def entries(self, path_suffix: str = "completions") -> list[dict]:
        with self._lock:
            return [dict(e) for e in self.log if e["path"].endswith(path_suffix)]

    def ok_bodies(self) -> list[dict]:
        return [e["body"] for e in self.entries() if e["ok"]]

    def pending(self) -> int:
        """Requests received and not finished (answered, faulted or dropped)."""
        with self._lock:
            return sum(1 for e in self.log if not e["done"])

    def figures(self) -> dict:
        """Counts for a report: requests, faults by kind, forwarded, ok."""
        es = self.entries()
        faults: dict[str, int] = {}
        for e in es:
            if e["fault"]:
                faults[e["fault"]] = faults.get(e["fault"], 0) + 1
        return {"requests": len(es), "faults": sum(faults.values()), "by_kind": dict(sorted(faults.items())),
                "forwarded": sum(e["forwarded"] for e in es), "ok": sum(e["ok"] for e in es)}

    def stop(self) -> None:
        self.release.set()
        super().stop()


def _error(message: str, type_: str, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def _answer_text(data) -> str | None:
    """The text of the first choice of a completion or chat completion, None when there is none."""
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) and text else None


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:   # keep test output quiet
        pass

    def _client_gone(self) -> bool:
        """True when the client has closed its end (timed out or killed) while we worked."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send(self, status: int, data: bytes, headers: dict | None = None,
              content_type: str = "application/json") -> bool:
        if self._client_gone():
            self.close_connection = True
            return False
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:
            self.close_connection = True
            return False

    def _forward(self, method: str, raw: bytes | None) -> tuple[int, bytes, str]:
        p = self.owner
        conn = http.client.HTTPConnection(p.upstream_host, p.upstream_port, timeout=p.upstream_timeout)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
            conn.request(method, self.path, body=raw, headers=headers)
            r = conn.getresponse()
            return r.status, r.read(), r.getheader("Content-Type") or "application/json"
        finally:
            conn.close()

    def do_GET(self) -> None:
        status, data, ctype = self._forward("GET", None)
        self._send(status, data, content_type=ctype)

    def do_POST(self) -> None:
        p = self.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        fault, held = p._decide()
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        entry = {"path": self.path, "body": body, "key": key, "fault": fault, "held": held, "forwarded": False,
                 "ok": False, "status": None, "text": None, "done": False, "t": time.monotonic()}
        with p._lock:
            p.log.append(entry)
        try:
            self._handle(p, entry, raw, fault, held)
        finally:
            with p._lock:
                entry["done"] = True

    def _handle(self, p: FaultProxy, entry: dict, raw: bytes, fault: str | None, held: bool) -> None:
        if held:
            p.release.wait(600)
            if self._client_gone():
                self.close_connection = True
                return
        if fault == "hang":
            time.sleep(p.hang_s)
            self.close_connection = True
            return
        if fault == "401":
            entry["status"] = 401
            self._send(401, _error(f"Incorrect API key provided: {entry['key']}.", "invalid_request_error",
                                   "invalid_api_key"))
            return
        if fault in ("429", "500", "503"):
            entry["status"] = int(fault)
            headers = {"Retry-After": p.retry_after} if fault == "429" else None
            self._send(int(fault), _error("injected fault", "server_error", None), headers)
            return
        try:
            status, data, ctype = self._forward("POST", raw)
        except OSError as e:
            entry["status"] = 502
            self._send(502, _error(f"upstream failed: {e}", "server_error", None))
            return
        entry.update(forwarded=True, status=status)
        if fault == "truncated" and status == 200:
            self._send(200, data[: len(data) // 2])
            return
        if fault == "not_json" and status == 200:
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
            return
        text = None
        if status == 200:
            try:
                text = _answer_text(json.loads(data))
            except ValueError:
                text = None
        delivered = self._send(status, data, content_type=ctype)
        with p._lock:
            entry.update(ok=delivered and text is not None, text=text)


FaultProxy.handler = _Handler     # defined after the class it serves
