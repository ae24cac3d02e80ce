"""A read-only view of a run directory, shared by `report` and `export` (never writes, never locks)."""

from __future__ import annotations

import json
import os
import sqlite3
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import final_counts
from ..data import Example, example_from_row, file_sha256, load_examples, parse_columns, row_names, subsample
from ..datasets_hub import is_hub
from ..errors import S3Error
from ..io import DamagedFile, read_json, read_jsonl
from ..rundir import LAYOUT, band_of, in_use, manifest_problem, recorded_problem


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

    @property
    def final_real(self) -> int:
        """How many real gold-eval examples the final model trained on: the last rows of final/train.jsonl
        (`--final-train synthetic+gold`, counted in final/metrics.json `parts`), or every row for method gold."""
        return final_counts(self.manifest.get("method"), self.final)[1]

    @property
    def final_synthetic(self) -> int:
        """How many synthetic examples the final model trained on (its training set less the real rows)."""
        return final_counts(self.manifest.get("method"), self.final)[0]

    def final_synthetic_rows(self) -> list[dict]:
        """The rows of final/train.jsonl that are synthetic, in order (the real ones, last, left out), as
        `Example.to_dict()` dicts (text, label, context...), whether the file has the task's names (see
        data.example_row) or, written by an earlier version, these."""
        rows = self.final_train_examples()
        return [ex.to_dict() for ex in rows[:len(rows) - self.final_real]]

    @property
    def final_train_names(self) -> dict:
        """The names text, label and context have in final/train.jsonl: the task's (data.row_names), or the
        fields' own in a run of an earlier version.

        Example: an rte run -> {"text": "hypothesis", "label": "label", "context": "premise"}"""
        names = row_names(self.task)
        p = self.path / LAYOUT.final_train
        first = read_jsonl(p)[:1] if p.exists() else []
        if first and isinstance(first[0], dict) and names.get("text") not in first[0] and "text" in first[0]:
            return {k: k for k in names}
        return names

    def final_train_examples(self) -> list[Example]:
        """Every row of final/train.jsonl as an Example (data.example_from_row: under the task's names or the
        fields' own); an S3Error naming the file when it is damaged."""
        return _examples_checked(self.path / LAYOUT.final_train, self.task)

    def final_synthetic_label_counts(self) -> dict:
        """Label -> synthetic examples of the final training set, for every label final/metrics.json counts
        (its `train_label_counts` hold the real rows too)."""
        counts = dict((self.final or {}).get("train_label_counts") or {})
        if self.final_real and counts:
            synthetic = Counter(str(d.get("label")) for d in self.final_synthetic_rows())
            counts = {k: synthetic.get(k, 0) for k in counts}
        return counts

    def synthesis(self, stage: str) -> dict:
        return self.manifest.get("synthesis", {}).get(stage) or {}


REPAIR = ("re-run the `s3synth run` command that made this run directory (manifest.json lists it): it "
          "repairs it, keeping a copy of what it replaces; then try again")


def _damaged(p: Path, why: str) -> S3Error:
    if p.name == LAYOUT.manifest:
        return S3Error(f"{p}: {why}; re-run the `s3synth run` command that made this run directory: it keeps a "
                       "copy of the damaged file and repairs it; then try again")
    return S3Error(f"{p}: {why}; {REPAIR}")


def _json(p: Path):
    try:
        return read_json(p)
    except DamagedFile as e:
        raise _damaged(p, e.why) from None


def _examples_checked(p: Path, task=None) -> list[Example]:
    """The examples of a JSON Lines file of the run (none when it is missing), its rows under the fields' own
    names or, with `task`, the task's (data.example_from_row); an S3Error naming the file when damaged."""
    if not p.exists():
        return []
    try:
        rows = read_jsonl(p)
    except DamagedFile as e:
        raise _damaged(p, e.why) from None
    try:
        return [example_from_row(d, task) for d in rows]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _damaged(p, "holds a row that is not an example") from None


def load_run(path: str | Path) -> RunView:
    """Read everything a report or export needs; S3Error when `path` is not a run directory, or a file of
    it is damaged (one line: the file and the way out)."""
    path = Path(path)
    mf = path / LAYOUT.manifest
    if not path.is_dir() or not os.path.lexists(mf):
        raise S3Error(f"{path} is not an s3synth run directory (no manifest.json); give the --out of `s3synth run`")
    manifest = _json(mf)
    problem = manifest_problem(manifest)
    if problem:
        raise _damaged(mf, f"damaged ({problem})")
    live = in_use(path)          # a run writing now: its files may be newer than the manifest's records
    for rel in manifest.get("files", {}):
        if rel != LAYOUT.config and not live:
            why = recorded_problem(path, manifest, rel)
            if why:
                raise _damaged(path / rel, why)
    config = {}
    cfg = path / LAYOUT.config
    if os.path.lexists(cfg):
        try:
            config = tomllib.loads(cfg.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise S3Error(f"{cfg}: not valid TOML ({e}); undo the edit, or re-run the run's `s3synth run` "
                          "command (manifest.json lists it) to write it again") from None
    notes = []
    try:
        task = run_task(manifest, config)
    except S3Error as e:
        task = None
        notes.append(f"task definition not loadable ({e}); labels are taken from the data")
    rounds = []
    for q in LAYOUT.rounds_present(path):
        f = {k: path / LAYOUT.round(q, k) for k in LAYOUT.ROUND_FILES}
        metrics = _json(f["metrics"]) if f["metrics"].exists() else None
        if metrics is not None and not isinstance(metrics, dict):
            raise _damaged(f["metrics"], "not a JSON object")
        rounds.append(RoundView(q, metrics, _examples_checked(f["added"]), _examples_checked(f["sources"]),
                                _examples_checked(f["errors"]), _examples_checked(f["dropped"])))
    fm = path / LAYOUT.final_metrics
    final = _json(fm) if fm.exists() else None
    if final is not None and not isinstance(final, dict):
        raise _damaged(fm, "not a JSON object")
    return RunView(path, manifest, config, task, _examples_checked(path / LAYOUT.seed),
                   _examples_checked(path / LAYOUT.seed_dropped), rounds, final, notes)


def run_task(manifest: dict, config: dict | None = None):
    """The task a run directory was made for (its manifest's task_source, else config.toml's task), or None
    when neither names one; S3Error when it cannot be loaded (a task file moved or changed)."""
    src = manifest.get("task_source") or (config or {}).get("task")
    if not src or not isinstance(src, str):
        return None
    from ..tasks import load_task

    return load_task(src[len("builtin:"):] if src.startswith("builtin:") else src)


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
    if rel and run.task is not None and is_hub(rel):     # a Hub dataset: from the local cache, at the run's commit
        from ..hub import offline_mode

        commit = run.manifest.get("inputs", {}).get("gold_eval", {}).get("sha")
        try:
            with offline_mode():
                gold = load_examples(rel, run.task, id_prefix="gold", columns=parse_columns(run.config.get("columns")),
                                     revision=commit)
        except S3Error:
            pass
        else:
            gold = subsample(gold, run.config.get("max_gold_eval"), run.config.get("seed", 0))
            return gold, f"the gold eval set ({len(gold)} examples, {rel})"
    elif rel and run.task is not None:
        for cand in _candidates(run, rel):
            if cand.is_file() and (sha is None or file_sha256(cand) == sha):
                gold = load_examples(cand, run.task, id_prefix="gold",
                                     columns=parse_columns(run.config.get("columns")))
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
    names = {"rationale": "rationales", "seed": "seed", "zerogen": "seed", "seed_list": "seed", "zerogen_list": "seed"}
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
