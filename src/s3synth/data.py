"""Examples and the loading and validation of real data (JSON Lines, CSV, Parquet).

Every problem in an input file becomes a `DataError` that names the file, the line and the field.
Not handled: nested JSON other than SQuAD's `answers` dict; files over a few GB (loaded in memory).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError

if TYPE_CHECKING:
    from .tasks import Task


@dataclass
class Example:
    """One labelled example of any task kind.

    - single: `text` + `label`
    - pair:   `text` (hypothesis / question) + `context` (premise / sentence) + `label`
    - qa:     `text` (question) + `context` + `answer` {"text", "start"} (char offset; "alternatives": the
              other gold answers, when the data gives several); `label` is None
    `meta` carries provenance: stage, round, source_id (the gold error it was extrapolated from).
    """

    text: str
    label: str | None = None
    context: str | None = None
    answer: dict | None = None
    id: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None and v != {}}

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(
            text=d["text"],
            label=d.get("label"),
            context=d.get("context"),
            answer=d.get("answer"),
            id=d.get("id", ""),
            meta=dict(d.get("meta") or {}),
        )


@dataclass
class Prediction:
    """A learner's output for one example."""

    label: str | None = None            # classification
    probs: dict | None = None           # classification: label -> probability
    answer: str | None = None           # QA: predicted answer text
    score: float | None = None          # QA: span score; classification: probability of `label`


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- raw rows

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
DATA_SUFFIXES = (*JSON_SUFFIXES, ".csv", ".parquet")      # the data files `load_examples` reads


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) pairs; line numbers are 1-based (CSV: the header is line 1)."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a .jsonl, .csv or .parquet file")
    suffix = "".join(path.suffixes[-1:]).lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
                              "re-save the file as UTF-8", line=line) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix not in JSON_SUFFIXES:
        raise DataError(path, f"unknown file type '{suffix or path.name}'; use .jsonl, .csv or .parquet")
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"malformed JSON ({e.msg} at column {e.colno})", line=i) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object per line, got {type(obj).__name__}", line=i)
        rows.append((i, obj))
    return rows


def _read_csv(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DataError(path, "more values than header columns", line=reader.line_num)
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise DataError(path, f"malformed CSV ({e})", line=reader.line_num) from None
    return rows


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the install
        raise DataError(path, "reading Parquet needs pyarrow: pip install 's3synth[data]'") from None
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise DataError(path, f"not a readable Parquet file ({e})") from None
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


# ---------------------------------------------------------------- validation

def _field(path: Path, line: int, row: dict, name: str, *, required: bool = True) -> Any:
    if name not in row or row[name] is None or (isinstance(row[name], str) and not row[name].strip()):
        if required:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise DataError(path, f"missing or empty (fields present: {present})", line=line, field=name)
        return None
    return row[name]


def _text(path: Path, line: int, row: dict, name: str) -> str:
    v = _field(path, line, row, name)
    if not isinstance(v, str):
        raise DataError(path, f"expected text, got {type(v).__name__} {v!r}", line=line, field=name)
    return v


def _qa_answer(path: Path, line: int, row: dict, task: "Task", context: str) -> dict:
    """Accept SQuAD `answers: {text: [...], answer_start: [...]}` or flat `answer` (+ `answer_start`)."""
    fname = task.fields.get("answers", "answers")
    if fname in row and isinstance(row[fname], dict):
        ans = row[fname]
        texts, starts = ans.get("text") or [], ans.get("answer_start") or []
        if not texts:
            raise DataError(path, "no answer text", line=line, field=f"{fname}.text")
        text = texts[0]
        start = starts[0] if starts else None
        others = []
        for k, t in enumerate(texts[1:], start=1):
            if not isinstance(t, str) or not t.strip():
                raise DataError(path, f"answer {k + 1} is empty or not text", line=line, field=f"{fname}.text")
            if t != text and t not in others:
                others.append(t)
    else:
        others = []
        fname = task.fields.get("answer", "answer")
        text = _text(path, line, row, fname)
        start = row.get(task.fields.get("answer_start", "answer_start"))
    if not isinstance(text, str) or not text.strip():
        raise DataError(path, "answer text is empty", line=line, field=fname)
    if start is not None:
        try:
            start = int(start)
        except (TypeError, ValueError):
            raise DataError(path, f"answer_start {start!r} is not an integer", line=line, field=fname) from None
        if context[start:start + len(text)] != text:
            found = context.find(text)
            if found < 0:
                raise DataError(path, f"answer {text!r} is not in its context", line=line, field=fname)
            start = found
    else:
        start = context.find(text)
        if start < 0:
            raise DataError(path, f"answer {text!r} is not in its context", line=line, field=fname)
    # the other gold answers (SQuAD dev sets give up to several per question) are kept for scoring
    return {"text": text, "start": start, **({"alternatives": others} if others else {})}


def parse_label(task: "Task", value: Any, *, path: Path, line: int, field_name: str) -> str:
    """Map a label given as name, label word or integer id to the task's label name."""
    by_key: dict[str, str] = {}
    for lab in task.labels:
        by_key[lab.name.lower()] = lab.name
        by_key[lab.word.lower()] = lab.name
        by_key[str(lab.id)] = lab.name
    if isinstance(value, bool):
        value = int(value)
    key = str(value).strip().lower()
    if key not in by_key:
        names = ", ".join(f"{lab.name} ({lab.id})" for lab in task.labels)
        raise DataError(path, f"unknown label {value!r}; expected one of: {names}", line=line, field=field_name)
    return by_key[key]


def load_examples(path: str | Path, task: "Task", *, id_prefix: str | None = None) -> list[Example]:
    """Load and validate a data file for `task`. Raises `DataError` on the first problem found.

    Example: a `rte` row {"premise": P, "hypothesis": H, "label": 0} -> Example(text=H, context=P, label="entailment")
    """
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(path, "the file holds no examples")
    f = task.fields
    prefix = id_prefix or path.stem
    out: list[Example] = []
    for line, row in rows:
        text = _text(path, line, row, f["text"])
        ex_id = str(row.get("id") or f"{prefix}-{line}")
        if task.kind == "single":
            label = parse_label(task, _field(path, line, row, f["label"]), path=path, line=line, field_name=f["label"])
            out.append(Example(text=text, label=label, id=ex_id))
        elif task.kind == "pair":
            context = _text(path, line, row, f["context"])
            label = parse_label(task, _field(path, line, row, f["label"]), path=path, line=line, field_name=f["label"])
            out.append(Example(text=text, context=context, label=label, id=ex_id))
        else:  # qa
            context = _text(path, line, row, f["context"])
            answer = _qa_answer(path, line, row, task, context)
            out.append(Example(text=text, context=context, answer=answer, id=ex_id))
    return out


def load_contexts(path: str | Path, task: "Task") -> list[dict]:
    """A context pool for pair/QA seed synthesis: rows with the context field (and an answer for QA)."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(path, "the file holds no contexts")
    f = task.fields
    pool = []
    for line, row in rows:
        context = _text(path, line, row, f["context"])
        if task.kind == "qa":
            pool.append({"context": context, "answer": _qa_answer(path, line, row, task, context)})
        else:
            pool.append({"context": context})
    return pool


# ---------------------------------------------------------------- splitting

def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A random subsample of size n (all of them when n is None or >= len)."""
    if n is None or n >= len(examples):
        return list(examples)
    rng = random.Random(f"subsample:{seed}")
    idx = sorted(rng.sample(range(len(examples)), n))
    return [examples[i] for i in idx]


def stratified_split(examples: list[Example], frac: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Split into (rest, held_out) with about `frac` of every label in held_out (QA: plain random).

    Example: 100 examples, frac 0.3 -> 70 for error mining, 30 held out for model selection.
    """
    if frac <= 0:
        return list(examples), []
    rng = random.Random(f"holdout:{seed}")
    groups: dict[str | None, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.label, []).append(i)
    held: set[int] = set()
    for _, idx in sorted(groups.items(), key=lambda kv: str(kv[0])):
        idx = list(idx)
        rng.shuffle(idx)
        k = int(round(len(idx) * frac))
        k = min(max(k, 1), len(idx) - 1) if len(idx) > 1 else 0
        held.update(idx[:k])
    rest = [ex for i, ex in enumerate(examples) if i not in held]
    out = [ex for i, ex in enumerate(examples) if i in held]
    return rest, out
