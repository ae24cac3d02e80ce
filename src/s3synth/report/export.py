"""`s3synth export DIR`: the final synthetic set with provenance columns, as JSON Lines, Parquet or a
Hugging Face `datasets` dataset on disk.

Beside the data: a dataset card (README.md with the Hugging Face metadata header, `cards.dataset_card`).
Columns: id, text, then label (classification), context (pair/QA), answer + answer_start (QA), and the
provenance: stage (seed | extrapolate), round (null for the seed), source_id (the gold-eval example an
added row was extrapolated from; null for the seed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..config import EXPORT_FORMATS as FORMATS
from ..errors import S3Error
from ..io import atomic_write_bytes, atomic_write_text, write_jsonl
from ..rundir import LAYOUT
from .cards import CARD, dataset_card
from .runview import RunView, load_run

PROVENANCE = ("stage", "round", "source_id")


def columns(kind: str | None) -> list[str]:
    body = {"single": ["label"], "pair": ["label", "context"], "qa": ["context", "answer", "answer_start"]}
    return ["id", "text", *body.get(kind, ["label", "context", "answer", "answer_start"]), *PROVENANCE]


def export_rows(run: RunView) -> list[dict]:
    """One flat dict per synthetic row of final/train.jsonl, in its order: the real mining examples a final
    model trained with (`--final-train synthetic+gold`) are its last rows and are left out."""
    cols = columns(getattr(run.task, "kind", None))
    out = []
    for d in run.final_synthetic_rows():
        meta, ans = d.get("meta") or {}, d.get("answer") or {}
        row = {"id": d.get("id", ""), "text": d["text"], "label": d.get("label"), "context": d.get("context"),
               "answer": ans.get("text"), "answer_start": ans.get("start"), "stage": meta.get("stage"),
               "round": meta.get("round"), "source_id": meta.get("source_id")}
        out.append({c: row[c] for c in cols})
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
    cols = columns(getattr(run.task, "kind", None))
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


def _save_hf(rows: list[dict], cols: list[str], out: Path) -> None:
    try:
        import datasets
    except ImportError:
        raise S3Error("--format hf needs the datasets package: pip install 's3synth[export]'") from None
    features = datasets.Features({c: datasets.Value("int64" if c in ("round", "answer_start") else "string")
                                  for c in cols})
    ds = datasets.Dataset.from_list(rows, features=features)
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
