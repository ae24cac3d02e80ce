"""Examples and the loading and validation of real data (JSON Lines, CSV, Parquet).

Every problem in an input file becomes a `DataError` that names the file, the line and the field.
Rows of any source become Examples in `examples_from_rows` (and context pools in `contexts_from_rows`), which
look each field up under the column `--columns` names (`field_columns`), else the task's `fields` name, else
the field's own name (`text`, `label`, ...), so that the files an older run wrote read back too.
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

from .errors import DataError, S3Error
from .io import JSON_SUFFIXES, json_sha256

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


def source_record(source, *, revision: str | None = None) -> dict:
    """What a run records of a data source (manifest.json `inputs`): a file's path and sha256; a Hub dataset's
    name, config, split, revision, commit sha and rows, rows from Python by their size and sha256
    (datasets_hub.record).

    Example: source_record("gold.jsonl") -> {"path": "gold.jsonl", "sha256": "9f86d081..."}"""
    from . import datasets_hub

    if datasets_hub.is_other(source):
        return datasets_hub.record(source, revision=revision)
    return {"path": str(source), "sha256": file_sha256(source)}


# ---------------------------------------------------------------- raw rows

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


def _qa_answer(path: Path, line: int, row: dict, f: dict, context: str) -> dict:
    """Accept SQuAD `answers: {text: [...], answer_start: [...]}`, flat `answer` (+ `answer_start`), or an
    Example's own `answer: {text, start[, alternatives]}` (final/train.jsonl); `f`: `field_columns`'s names."""
    fname = f["answers"]
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
    elif isinstance(row.get(f["answer"]), dict):       # an Example's own answer, as a run writes it
        fname = f["answer"]
        ans = row[fname]
        text, start = ans.get("text"), ans.get("start")
        others = [t for t in ans.get("alternatives") or () if isinstance(t, str) and t.strip()]
    else:
        others = []
        fname = f["answer"]
        text = _text(path, line, row, fname)
        start = row.get(f["answer_start"])
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


# ---------------------------------------------------------------- rows -> examples

FIELD_NAMES = {"single": ("text", "label"), "pair": ("text", "context", "label"),
               "qa": ("text", "context", "answers", "answer", "answer_start")}
"""The fields a row of each task kind is read for, which `--columns` may map (and `id`, for every kind)."""

COLUMNS_HINT = "write FIELD=COLUMN[,FIELD=COLUMN...], e.g. --columns text=body,label=priority"


def parse_columns(value: str | None, option: str = "--columns") -> dict[str, str]:
    """The `--columns` text as {field: column}; an S3Error naming `option` when it is malformed (the fields
    are checked against the task where the data is read, `field_columns`).

    Example: parse_columns("text=body, label=priority") -> {"text": "body", "label": "priority"}
    """
    out: dict[str, str] = {}
    for item in str(value or "").split(","):
        if not item.strip():
            continue
        name, eq, column = (part.strip() for part in item.partition("="))
        if not eq or not name or not column:
            raise S3Error(f"{option} {value!r}: {item.strip()!r} is not FIELD=COLUMN; {COLUMNS_HINT}")
        if name in out:
            raise S3Error(f"{option} {value!r}: field {name!r} is mapped twice; {COLUMNS_HINT}")
        out[name] = column
    return out


def field_columns(task: "Task", columns: dict[str, str] | None, present, where, read=None) -> dict[str, str]:
    """Field -> the column that holds it, for rows whose columns are `present` (in order): the column that
    `columns` (--columns) names, which must be present when the field is one the caller reads (`read`,
    default all); else the task's `fields` name when present; else the field's own name when present (rows a
    run wrote: final/train.jsonl of an earlier run); else the task's name (a row then fails on it by name).
    `where` (the file or source) is named in errors, with the columns it has.

    Example: task imdb, columns {"text": "body"}, present ["body", "label"] ->
             {"text": "body", "label": "label", "id": "id"}
    """
    columns = dict(columns or {})
    names = (*FIELD_NAMES[task.kind], "id")
    have = ", ".join(map(str, present)) or "none"
    for name, column in columns.items():
        if name not in names:
            raise DataError(where, f"--columns {name}={column}: {name!r} is not a field of task {task.name} "
                                   f"({task.kind} task: {', '.join(names)}); its columns: {have}")
        if column not in present and (read is None or name in read):
            raise DataError(where, f"--columns {name}={column}: no column {column!r}; its columns: {have}")
    taken = set(columns.values())
    out = {}
    for name in names:
        own = task.fields.get(name, name)
        if name in columns:
            out[name] = columns[name]
        elif own not in present and name in present and name not in taken:
            out[name] = name
        else:
            out[name] = own
    return out


def examples_from_rows(rows: list[tuple[int, dict]], task: "Task", *, where, id_prefix: str,
                       columns: dict[str, str] | None = None) -> list[Example]:
    """Validated Examples of (line, row) pairs of any source, the fields found by `field_columns`; a row
    without an `id` gets `<id_prefix>-<line>`. Raises `DataError` naming `where`, the line and the column
    on the first problem found.

    Example: rte, rows [(1, {"premise": P, "hypothesis": H, "label": 0})] ->
             [Example(text=H, context=P, label="entailment", id="<id_prefix>-1")]
    """
    f = field_columns(task, columns, dict.fromkeys(k for _, row in rows for k in row), where)
    out: list[Example] = []
    for line, row in rows:
        text = _text(where, line, row, f["text"])
        ex_id = str(row.get(f["id"]) or f"{id_prefix}-{line}")
        if task.kind == "single":
            label = parse_label(task, _field(where, line, row, f["label"]), path=where, line=line,
                                field_name=f["label"])
            out.append(Example(text=text, label=label, id=ex_id))
        elif task.kind == "pair":
            context = _text(where, line, row, f["context"])
            label = parse_label(task, _field(where, line, row, f["label"]), path=where, line=line,
                                field_name=f["label"])
            out.append(Example(text=text, context=context, label=label, id=ex_id))
        else:  # qa
            context = _text(where, line, row, f["context"])
            answer = _qa_answer(where, line, row, f, context)
            out.append(Example(text=text, context=context, answer=answer, id=ex_id))
    return out


def contexts_from_rows(rows: list[tuple[int, dict]], task: "Task", *, where,
                       columns: dict[str, str] | None = None) -> list[dict]:
    """A context pool of (line, row) pairs of any source: {"context"} per row (QA: and its "answer")."""
    read = ("context",) if task.kind != "qa" else ("context", "answers", "answer", "answer_start")
    f = field_columns(task, columns, dict.fromkeys(k for _, row in rows for k in row), where, read)
    pool = []
    for line, row in rows:
        context = _text(where, line, row, f["context"])
        if task.kind == "qa":
            pool.append({"context": context, "answer": _qa_answer(where, line, row, f, context)})
        else:
            pool.append({"context": context})
    return pool


def read_source(source, task: "Task | None" = None, *,
                revision: str | None = None) -> tuple[Any, list[tuple[int, dict]]]:
    """(where, (line, row) pairs) of any data source: a data file, a Hub dataset `hf:NAME[:CONFIG][:SPLIT]` (at
    `revision`) or rows given from Python (a datasets.Dataset, a pandas DataFrame, a list of dicts); the last
    two are read by `datasets_hub`, their ClassLabel ids mapped for `task`. `where` names the source in errors.

    Example: read_source("hf:nyu-mll/glue:qnli:validation", qnli) -> ("hf:nyu-mll/glue:qnli:validation",
             [(1, {"question": Q, "sentence": S, "label": "entailment", "idx": 0}), ...])"""
    from . import datasets_hub

    if datasets_hub.is_other(source):
        return datasets_hub.read_rows(source, task, revision=revision)
    return Path(source), _read_rows(Path(source))


def read_rows(path, task: "Task | None" = None, *, revision: str | None = None) -> list[tuple[int, dict]]:
    """The (line, row) pairs of a data file (or any source `read_source` takes), not yet checked against a task
    (`s3synth check-task` checks every row with `examples_from_rows`). Lines are 1-based; in a CSV file the
    header is line 1."""
    return read_source(path, task, revision=revision)[1]


def load_examples(path, task: "Task", *, id_prefix: str | None = None,
                  columns: dict[str, str] | None = None, revision: str | None = None) -> list[Example]:
    """Load and validate a data file, a Hub dataset or rows from Python (`read_source`) for `task` (`columns`:
    --columns, parsed). Raises `DataError` on the first problem found.

    Example: a `rte` row {"premise": P, "hypothesis": H, "label": 0} -> Example(text=H, context=P, label="entailment")
    """
    where, rows = read_source(path, task, revision=revision)
    if not rows:
        raise DataError(where, "the file holds no examples" if isinstance(where, Path) else "holds no examples")
    prefix = id_prefix or (where.stem if isinstance(where, Path) else "row")
    return examples_from_rows(rows, task, where=where, id_prefix=prefix, columns=columns)


def load_contexts(path, task: "Task", *, columns: dict[str, str] | None = None,
                  revision: str | None = None) -> list[dict]:
    """A context pool for pair/QA seed synthesis: rows with the context field (and an answer for QA)."""
    where, rows = read_source(path, task, revision=revision)
    if not rows:
        raise DataError(where, "the file holds no contexts" if isinstance(where, Path) else "holds no contexts")
    return contexts_from_rows(rows, task, where=where, columns=columns)


def content_sha256(items) -> str:
    """The sha256 of loaded examples (or a context pool) as JSON: what a run's fingerprints take of an input,
    so that the same rows under other column names (`--columns`) fingerprint alike.

    Example: content_sha256([Example("a b", "positive", id="g-1")]) == content_sha256 of the same row read
             from a file whose text column is called `body` under --columns text=body"""
    return json_sha256(x.to_dict() if isinstance(x, Example) else x for x in items)


# ---------------------------------------------------------------- rows a run writes for its user

ROW_KEYS = ("id", "meta", "answer", "answer_start", "stage", "round", "source_id")
"""The other keys of the rows a run writes for its user (final/train.jsonl, and `s3synth export`'s columns)."""


def row_names(task: "Task | None") -> dict[str, str]:
    """The names an example's text, label and context take in the rows a run writes for its user
    (final/train.jsonl, `s3synth export`): the task's `fields`, so that the rows read back as data of the
    task; the fields' own names when the task's clash (with each other or with `ROW_KEYS`) or there is no task.

    Example: row_names(load_task("rte")) -> {"text": "hypothesis", "label": "label", "context": "premise"}
    """
    own = {"text": "text", "label": "label", "context": "context"}
    if task is None:
        return own
    names = {k: str(task.fields.get(k, k)) for k in own if k in FIELD_NAMES[task.kind]}
    if len(set(names.values())) < len(names) or set(ROW_KEYS) & set(names.values()):
        return {k: k for k in names}
    return names


def example_row(ex: Example, task: "Task | None") -> dict:
    """`ex.to_dict()` with the text, label and context under the task's names (`row_names`).

    Example: an rte example -> {"hypothesis": H, "label": "entailment", "premise": P, "id": ..., "meta": {...}}"""
    names = row_names(task)
    return {names.get(k, k): v for k, v in ex.to_dict().items()}


def example_from_row(d: dict, task: "Task | None") -> Example:
    """An Example of a row a run wrote: under the task's names (`example_row`) or the fields' own names
    (seed.jsonl, and final/train.jsonl of an earlier run). KeyError when it has no text.

    Example: example_from_row({"hypothesis": H, "premise": P, "label": "entailment", "id": "seed-0"}, rte)
             -> Example(text=H, label="entailment", context=P, id="seed-0")"""
    out = {k: v for k, v in d.items() if k in ("id", "meta", "answer")}
    for field_name, name in row_names(task).items():
        if name in d:
            out[field_name] = d[name]
        elif field_name in d:
            out[field_name] = d[field_name]
    return Example.from_dict(out)


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
