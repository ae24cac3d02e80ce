"""The LLM answer cache: SQLite in WAL mode, one row per answer, committed as answers arrive.

Key = sha256 of (backend, model, sampling parameters, prompt or messages, sample index). Tokens are
stored with each answer, so the spend of a run directory is the sum over its cache: a resumed run
knows what it has paid for and never pays for it again.

Provider batch jobs (`--batch`) are recorded here too, before they are polled: `batches` (one row per
provider batch: its id, input file, state), `batch_items` (which requests, by cache key = the batch
line's custom_id, each batch holds) and `batch_results` (the raw result of every answered line, kept
before its answer is committed; an answer whose key is here was paid at the batch price). A killed run finds
its batches here and polls them again instead of submitting new ones.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    input_file TEXT,
    requests INTEGER NOT NULL,
    items_sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    collected INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE INDEX IF NOT EXISTS batch_items_by_key ON batch_items (custom_id);
CREATE TABLE IF NOT EXISTS batch_results (
    custom_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    result TEXT NOT NULL
);
"""


class LLMCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.commit()

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = ",".join("?" * len(chunk))
                for row in self._db.execute(
                    f"SELECT key, text, prompt_tokens, completion_tokens, finish_reason FROM answers WHERE key IN ({q})",
                    chunk,
                ):
                    out[row[0]] = {"text": row[1], "prompt_tokens": row[2], "completion_tokens": row[3],
                                   "finish_reason": row[4]}
        return out

    def put_many(self, rows: list[tuple[str, str, str, dict, str, int, int, str | None]]) -> None:
        """rows: (key, backend, model, request dict, text, prompt_tokens, completion_tokens, finish_reason)."""
        now = time.time()
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO answers VALUES (?,?,?,?,?,?,?,?,?)",
                [(k, b, m, json.dumps(r, ensure_ascii=False), t, pt, ct, fr, now)
                 for k, b, m, r, t, pt, ct, fr in rows],
            )
            self._db.commit()

    def spent(self) -> dict:
        """Tokens and answers stored so far (what this run directory has paid for)."""
        with self._lock:
            n, pt, ct = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0) FROM answers"
            ).fetchone()
        return {"answers": n, "prompt_tokens": pt, "completion_tokens": ct}

    def batch_spent(self) -> dict:
        """Tokens of the stored answers that came from provider batches (paid at the batch price)."""
        with self._lock:
            pt, ct = self._db.execute(
                "SELECT COALESCE(SUM(a.prompt_tokens),0), COALESCE(SUM(a.completion_tokens),0) FROM answers a "
                "JOIN batch_results r ON r.custom_id = a.key").fetchone()
        return {"batch_prompt_tokens": pt, "batch_completion_tokens": ct}

    # -- provider batch jobs (`--batch`) ------------------------------------------------------------
    def record_batch(self, batch_id: str, provider: str, input_file: str | None, custom_ids: list[str],
                     items_sha256: str, status: str) -> None:
        """Record a submitted batch and the requests it holds (before it is polled)."""
        now = time.time()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (?,?,?,?,?,?,0,?,?)",
                             (batch_id, provider, input_file, len(custom_ids), items_sha256, status, now, now))
            self._db.executemany("INSERT OR IGNORE INTO batch_items VALUES (?,?)",
                                 [(batch_id, k) for k in custom_ids])
            self._db.commit()

    def open_batches(self, provider: str, keys: list[str]) -> dict[str, list[str]]:
        """Batches of `provider` not collected yet that hold any of `keys`: batch id -> all its custom_ids."""
        ids: set[str] = set()
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = ",".join("?" * len(chunk))
                ids.update(r[0] for r in self._db.execute(
                    f"SELECT DISTINCT i.batch_id FROM batch_items i JOIN batches b ON b.id = i.batch_id "
                    f"WHERE b.collected = 0 AND b.provider = ? AND i.custom_id IN ({q})", [provider, *chunk]))
            out = {}
            for bid in sorted(ids, key=lambda b: self._db.execute("SELECT created FROM batches WHERE id=?",
                                                                  (b,)).fetchone()[0]):
                out[bid] = [r[0] for r in self._db.execute(
                    "SELECT custom_id FROM batch_items WHERE batch_id = ? ORDER BY rowid", (bid,))]
        return out

    def update_batch(self, batch_id: str, status: str, collected: bool = False) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET status = ?, collected = ?, updated = ? WHERE id = ?",
                             (status, int(collected), time.time(), batch_id))
            self._db.commit()

    def put_batch_results(self, batch_id: str, results: list[tuple[str, dict]]) -> None:
        """Keep the answered lines of a batch (custom_id, raw result), before their answers are committed."""
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO batch_results VALUES (?,?,?)",
                                 [(k, batch_id, json.dumps(r, ensure_ascii=False)) for k, r in results])
            self._db.commit()

    def batch_results(self, keys: list[str]) -> dict[str, tuple[str, dict]]:
        """custom_id -> (batch id, raw result) for the answered batch lines among `keys`."""
        out = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = ",".join("?" * len(chunk))
                for k, bid, r in self._db.execute(
                        f"SELECT custom_id, batch_id, result FROM batch_results WHERE custom_id IN ({q})", chunk):
                    out[k] = (bid, json.loads(r))
        return out

    def batches(self) -> list[dict]:
        """Every recorded batch (for the manifest): id, provider, requests, status, collected."""
        with self._lock:
            rows = self._db.execute("SELECT id, provider, input_file, requests, status, collected, created "
                                    "FROM batches ORDER BY created").fetchall()
        return [{"id": r[0], "provider": r[1], "input_file": r[2], "requests": r[3], "status": r[4],
                 "collected": bool(r[5])} for r in rows]

    def __len__(self) -> int:
        return self.spent()["answers"]

    def close(self) -> None:
        with self._lock:
            self._db.close()
