"""`s3synth export DIR`: the final synthetic set with provenance columns, as JSON Lines, Parquet or a
Hugging Face `datasets` dataset on disk.

Beside the data: a dataset card (README.md with the Hugging Face metadata header, `cards.dataset_card`).
Columns: id, text, then label (classification), context (pair/QA), answer + answer_start (QA), and the
provenance: stage (seed | extrapolate), round (null for the seed), source_id (the gold-eval example an
added row was extrapolated from; null for the seed). Text, label and context take the task's `fields` names
(data.row_names; rte: hypothesis, label, premise), so that the export reads back as data of the task.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..config import EXPORT_FORMATS as FORMATS
from ..data import row_names
from ..errors import S3Error
from ..io import atomic_write_bytes, atomic_write_text, write_jsonl
from ..rundir import LAYOUT
from .cards import CARD, dataset_card
from .runview import RunView, load_run

PROVENANCE = ("stage", "round", "source_id")


def columns(kind: str | None, names: dict | None = None) -> list[str]:
    """The export's columns in order; `names` renames the example's fields (`export_names`).

    Example: columns("pair", {"text": "hypothesis", "context": "premise"}) ->
             ["id", "hypothesis", "label", "premise", "stage", "round", "source_id"]"""
    body = {"single": ["label"], "pair": ["label", "context"], "qa": ["context", "answer", "answer_start"]}
    fields = ["text", *body.get(kind, ["label", "context", "answer", "answer_start"])]
    return ["id", *((names or {}).get(c, c) for c in fields), *PROVENANCE]


def export_names(run: RunView) -> dict:
    """The export's names of text, label and context: the run's task's (data.row_names)."""
    return row_names(run.task)


def export_columns(run: RunView) -> list[str]:
    """The columns of the run's export (and of the data file `s3synth push` uploads)."""
    return columns(getattr(run.task, "kind", None), export_names(run))


def export_rows(run: RunView, real: bool = False) -> list[dict]:
    """One flat dict per synthetic row of final/train.jsonl, in its order: the real mining examples a final
    model trained with (`--final-train synthetic+gold`) are its last rows and are left out; `real`: those
    real rows instead (their provenance null)."""
    kind, names = getattr(run.task, "kind", None), export_names(run)
    if real:
        examples = run.final_train_examples()
        rows = [ex.to_dict() for ex in examples[len(examples) - run.final_real:]] if run.final_real else []
    else:
        rows = run.final_synthetic_rows()
    out = []
    for d in rows:
        meta, ans = d.get("meta") or {}, d.get("answer") or {}
        row = {"id": d.get("id", ""), "text": d["text"], "label": d.get("label"), "context": d.get("context"),
               "answer": ans.get("text"), "answer_start": ans.get("start"), "stage": meta.get("stage"),
               "round": meta.get("round"), "source_id": meta.get("source_id")}
        out.append({names.get(c, c): row[c] for c in columns(kind)})
    return out


def _schema(cols: list[str]):
    import pyarrow as pa

    types = {"round": pa.int64(), "answer_start": pa.int64()}
    return pa.schema([(c, types.get(c, pa.string())) for c in cols])


def export_run(path: str | Path, fmt: str, out: str | Path | None = None) -> tuple[Path, int]:
    """Write the export and its dataset card (see card_path); returns (where, rows). Default `out`:
    DIR/export/train.jsonl|.parquet or DIR/export/hf."""
    if fmt not in FORMATS:
        raise S3Error(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    run = load_run(path)
    if not run.finished:
        raise S3Error(f"{path} is not a finished run (no final/train.jsonl yet); finish it by re-running its "
                      "`s3synth run` command, then export")
    rows = export_rows(run)
    cols = export_columns(run)
    default = f"{LAYOUT.export_dir}/" + {"jsonl": "train.jsonl", "parquet": "train.parquet", "hf": "hf"}[fmt]
    out = Path(out) if out else run.path / default
    if fmt == "jsonl":
        write_jsonl(out, rows)
    elif fmt == "parquet":
        atomic_write_bytes(out, parquet_bytes(rows, cols))
    else:
        _save_hf(rows, cols, out)
    card = card_path(run, fmt, out)
    atomic_write_text(card, dataset_card(run, None if fmt == "hf" else out.name))
    return out, len(rows)


def card_path(run: RunView, fmt: str, out: Path) -> Path:
    """Where the dataset card of an export goes: README.md inside an hf folder or beside a file in the run's
    export folder; `<name>.README.md` beside a file elsewhere (a README.md there may be the user's own).

    Example: card_path(run, "parquet", Path("demo.parquet")) -> Path("demo.README.md")"""
    out = Path(out)
    if fmt == "hf":
        return out / CARD
    if out.parent.resolve() == (run.path / LAYOUT.export_dir).resolve():
        return out.parent / CARD
    return out.with_name(f"{out.stem}.{CARD}")


def parquet_bytes(rows: list[dict], cols: list[str]) -> bytes:
    """The rows as one Parquet file (string columns; round and answer_start int64)."""
    import io

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise S3Error("Parquet needs pyarrow: pip install 's3synth[data]'") from None
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema(cols)), buf)
    return buf.getvalue()


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise S3Error(f"{what} needs the datasets package: pip install 's3synth[export]'") from None
    return datasets


def _features(datasets, cols: list[str]):
    """The `datasets.Features` of the export's columns (strings; round and answer_start int64)."""
    return datasets.Features({c: datasets.Value("int64" if c in ("round", "answer_start") else "string")
                              for c in cols})


def dataset_dict(path: str | Path):
    """A finished run's data as a `datasets.DatasetDict` (`s3synth.load_run`): "train", the synthetic set with
    its provenance columns (the rows `s3synth export` writes), and "real", the real gold-eval rows its final
    model also trained on (`--final-train synthetic+gold`; empty otherwise), kept apart; both have the
    export's columns.

    Example: load_run("runs/rte") -> DatasetDict({train: 52 rows, real: 42 rows}), columns id, hypothesis,
             label, premise, stage, round, source_id"""
    datasets = _datasets("s3synth.load_run")
    run = load_run(path)
    if not run.finished:
        raise S3Error(f"{path} is not a finished run (no final/train.jsonl yet); finish it by re-running its "
                      "`s3synth run` command, then load it")
    features = _features(datasets, export_columns(run))
    return datasets.DatasetDict({name: datasets.Dataset.from_list(export_rows(run, real=name == "real"),
                                                                  features=features)
                                 for name in ("train", "real")})


def _save_hf(rows: list[dict], cols: list[str], out: Path) -> None:
    datasets = _datasets("--format hf")
    ds = datasets.Dataset.from_list(rows, features=_features(datasets, cols))
    quiet = not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    if out.exists() and not out.is_dir():
        raise S3Error(f"--out {out}: is a file; --format hf writes a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ds.save_to_disk(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if quiet:
            datasets.enable_progress_bars()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
