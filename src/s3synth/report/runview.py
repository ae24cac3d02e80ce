"""A read-only view of a run directory, shared by `report` and `export` (never writes, never locks)."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..data import Example, file_sha256, load_examples, subsample
from ..errors import S3Error
from ..io import read_json, read_jsonl
from ..rundir import LAYOUT, band_of


def _examples(path: Path) -> list[Example]:
    return [Example.from_dict(d) for d in read_jsonl(path)] if path.exists() else []


@dataclass
class RoundView:
    q: int
    metrics: dict | None
    added: list[Example]
    sources: list[Example]
    errors: list[Example]
    dropped: list[Example]


@dataclass
class RunView:
    path: Path
    manifest: dict
    config: dict
    task: object | None
    seed: list[Example]
    seed_dropped: list[Example]
    rounds: list[RoundView]
    final: dict | None
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        st = self.manifest.get("stages", {}).get("final", {})
        return bool(st.get("finished")) and self.final is not None and (self.path / LAYOUT.final_train).exists()

    @property
    def metric(self) -> str:
        return "f1" if getattr(self.task, "kind", None) == "qa" else "accuracy"

    @property
    def labels(self) -> list[str]:
        if self.task is not None and self.task.kind != "qa":
            return list(self.task.label_names)
        seen = {ex.label for ex in self.seed + [a for r in self.rounds for a in r.added]}
        return sorted(str(x) for x in seen)

    def synthesis(self, stage: str) -> dict:
        return self.manifest.get("synthesis", {}).get(stage) or {}


def load_run(path: str | Path) -> RunView:
    """Read everything a report or export needs; S3Error when `path` is not a run directory."""
    path = Path(path)
    mf = path / LAYOUT.manifest
    if not path.is_dir() or not mf.exists():
        raise S3Error(f"{path} is not an s3synth run directory (no manifest.json); give the --out of `s3synth run`")
    try:
        manifest = read_json(mf)
    except (json.JSONDecodeError, OSError) as e:
        raise S3Error(f"{mf}: unreadable ({e})") from None
    config = {}
    if (path / LAYOUT.config).exists():
        config = tomllib.loads((path / LAYOUT.config).read_text(encoding="utf-8"))
    notes = []
    task = None
    src = manifest.get("task_source") or config.get("task")
    if src:
        from ..tasks import load_task
        try:
            task = load_task(src[len("builtin:"):] if src.startswith("builtin:") else src)
        except S3Error as e:
            notes.append(f"task definition not loadable ({e}); labels are taken from the data")
    rounds = []
    for q in LAYOUT.rounds_present(path):
        f = {k: path / LAYOUT.round(q, k) for k in LAYOUT.ROUND_FILES}
        rounds.append(RoundView(q, read_json(f["metrics"]) if f["metrics"].exists() else None,
                                _examples(f["added"]), _examples(f["sources"]), _examples(f["errors"]),
                                _examples(f["dropped"])))
    final = read_json(path / LAYOUT.final_metrics) if (path / LAYOUT.final_metrics).exists() else None
    return RunView(path, manifest, config, task, _examples(path / LAYOUT.seed), _examples(path / LAYOUT.seed_dropped),
                   rounds, final, notes)


def _candidates(run: RunView, rel: str) -> list[Path]:
    p = Path(rel)
    if p.is_absolute():
        return [p]
    return [Path.cwd() / p] + [anc / p for anc in [run.path.resolve(), *run.path.resolve().parents]]


def load_gold(run: RunView) -> tuple[list[Example], str]:
    """The run's gold eval (file re-read, checked by sha256, subsampled as the run did); else the gold
    examples stored in the run directory (every round's sources and errors)."""
    rel = run.config.get("gold_eval")
    sha = run.manifest.get("inputs", {}).get("gold_eval", {}).get("sha256")
    if rel and run.task is not None:
        for cand in _candidates(run, rel):
            if cand.is_file() and (sha is None or file_sha256(cand) == sha):
                gold = load_examples(cand, run.task, id_prefix="gold")
                gold = subsample(gold, run.config.get("max_gold_eval"), run.config.get("seed", 0))
                return gold, f"the gold eval set ({len(gold)} examples, {rel})"
    stored: dict[str, Example] = {}
    for r in run.rounds:
        for ex in r.errors + r.sources:
            stored.setdefault(ex.id, ex)
    return list(stored.values()), (f"the {len(stored)} gold examples stored in the run directory "
                                   f"(the gold eval file {rel or '?'} was not found)")


def stage_tokens(run: RunView) -> tuple[dict[str, int], str]:
    """LLM tokens (prompt + completion) per stage: rationales, seed, round-K (and goldgen).
    Recorded per stage by newer runs; for older ones estimated from the answer cache (extrapolation
    answers are split between rounds in the order they were stored)."""
    stages = run.manifest.get("stages", {})
    if any("llm" in v for v in stages.values()):
        out: dict[str, int] = {}
        for name, v in stages.items():
            u = v.get("llm") or {}
            key = name.split("/")[0]
            out[key] = out.get(key, 0) + u.get("used_prompt_tokens", 0) + u.get("used_completion_tokens", 0)
        return out, "recorded per stage"
    db = run.path / LAYOUT.cache
    if not db.exists():
        return {}, "unknown (no per-stage record and no answer cache)"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT request, prompt_tokens + completion_tokens, created FROM answers").fetchall()
    finally:
        con.close()
    out = {}
    extra = []
    names = {"rationale": "rationales", "seed": "seed", "zerogen": "seed"}
    for req, tok, created in rows:
        band = band_of(json.loads(req).get("sample_index", 0))
        if band == "extrapolate":
            extra.append((created, tok))
        else:
            out[names.get(band, "other")] = out.get(names.get(band, "other"), 0) + tok
    extra.sort()
    i = 0
    for r in run.rounds:
        n = run.synthesis(f"extrapolate-round-{r.q}").get("requested", 0)
        out[LAYOUT.round_dir(r.q)] = sum(t for _, t in extra[i:i + n])
        i += n
    if i < len(extra) and run.rounds:
        out[LAYOUT.round_dir(run.rounds[-1].q)] += sum(t for _, t in extra[i:])
    return out, "estimated from the LLM answer cache"
