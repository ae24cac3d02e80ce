"""The LLM answer cache: SQLite in WAL mode, one row per answer, committed as answers arrive.

Key = sha256 of (backend, model, sampling parameters, prompt or messages, sample index). Tokens are
stored with each answer, so the spend of a run directory is the sum over its cache: a resumed run
knows what it has paid for and never pays for it again.
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

    def __len__(self) -> int:
        return self.spent()["answers"]

    def close(self) -> None:
        with self._lock:
            self._db.close()
