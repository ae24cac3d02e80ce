"""`s3synth report DIR`: one self-contained HTML report (inline SVG figures, no external assets), a
Markdown summary and a dataset card, written into DIR.

The report re-reads the run directory and recomputes its analyses (Table 6, leakage, duplicates), so
it also works for runs made before these were recorded. A directory kind ("run", or "bench" for the
--out of `s3synth bench`) picks its builder in `BUILDERS` and its files in `FILES`.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Callable

from ..analysis import LEAK_COSINE, Embedder, LeakGuard, find_duplicates, minilm_embedder, table6, words
from ..config import METHODS
from ..data import Example
from ..errors import S3Error
from ..io import atomic_write_text, read_json
from ..progress import info
from ..rundir import LAYOUT, shell_path
from .runview import RunView, load_gold, load_run, stage_tokens

FILES = {"run": {"report.html": "report.html.j2", "report.md": "report.md.j2", "dataset_card.md": "dataset_card.md.j2"},
         "bench": {"report.html": "bench.html.j2", "report.md": "bench.md.j2"}}
"""Per directory kind: file written -> its template."""
MAX_GOLD_EMBED = 5000     # embedding leak check against at most this many gold texts (else the stored sources)
SAMPLES = 10
# Table 6 of the paper (DistilBERT embeddings, full-size runs), for reference beside this run's figures
PAPER_TABLE6 = {
    "imdb": {"added": 6173, "cosine": 0.9497, "edit_distance": 273.92, "len_mis": 288.04, "len_add": 218.72},
    "qnli": {"added": 51100, "cosine": 0.9537, "edit_distance": 14.64, "len_mis": 14.17, "len_add": 19.97},
    "rte": {"added": 1522, "cosine": 0.9380, "edit_distance": 16.38, "len_mis": 13.91, "len_add": 24.61},
    "adversarial_qa": {"added": 51532, "cosine": 0.9468, "edit_distance": 13.99, "len_mis": 13.73, "len_add": 18.70},
}


def _label(method: str) -> str:
    """Example: _label("seed-only") -> "Seed only (w/o EES)" (an unknown name as it is)."""
    return METHODS[method].label if method in METHODS else method


def detect_kind(path: Path) -> str:
    if (path / "bench.json").exists():
        return "bench"
    if (path / LAYOUT.manifest).exists():
        return "run"
    raise S3Error(f"{path} is not an s3synth run directory (no manifest.json); give the --out of `s3synth run`")


def _embedder(embed) -> Embedder | None:
    if embed is None or callable(embed):
        return embed
    if embed == "minilm":
        try:
            return minilm_embedder()
        except Exception as e:  # no weights or no torch: the report goes on without cosine figures
            info(f"report: no sentence embeddings ({e}); cosine figures are left out")
            return None
    raise ValueError(f"embed must be None, a callable or 'minilm', not {embed!r}")


def write_report(path: str | Path, *, embed: Embedder | str | None = "minilm") -> dict[str, Path]:
    """Write the report files of `path` (report.html, report.md, and for a run directory dataset_card.md and the
    model card final/model/README.md); returns their paths. `embed`: texts -> L2-normalised vectors, "minilm"
    (the packaged MiniLM) or None (no cosine figures); a bench directory needs none."""
    path = Path(path)
    kind = detect_kind(path)
    ctx = BUILDERS[kind](path, _embedder(embed) if kind == "run" else None)
    env = _jinja()
    out = {}
    for name, template in FILES[kind].items():
        atomic_write_text(path / name, env.get_template(template).render(**ctx))
        out[name] = path / name
    if kind == "run":               # the model card too, for runs made before cards were written
        from .cards import write_model_card

        card = write_model_card(path, ctx["run"])
        if card is not None:
            out[LAYOUT.final_model + "/" + card.name] = card
    return out


def _jinja():
    try:
        import jinja2
    except ImportError:
        raise S3Error("the report needs jinja2 and matplotlib: pip install 's3synth[report]'") from None
    env = jinja2.Environment(loader=jinja2.PackageLoader("s3synth.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x, d=1: "–" if x is None else f"{100 * x:.{d}f}"
    env.filters["num"] = lambda x, d=2: "–" if x is None else (f"{x:,.{d}f}" if isinstance(x, float) else f"{x:,}")
    return env


# ------------------------------------------------------------------ a run directory

def _stage_names(run: RunView) -> list[str]:
    return ["seed"] + [LAYOUT.round_dir(r.q) for r in run.rounds]


def _stage_examples(run: RunView) -> dict[str, tuple[list[Example], list[Example]]]:
    """stage -> (examples kept, examples dropped by --drop-leaks/--dedup)."""
    out = {"seed": (run.seed, run.seed_dropped)}
    for r in run.rounds:
        out[LAYOUT.round_dir(r.q)] = (r.added, r.dropped)
    return out


def _points(run: RunView, tokens: dict[str, int]) -> list[dict]:
    """One point per trained model: "size" counts its synthetic training examples, "real" the real ones (the
    final model's gold-eval mining part under --final-train synthetic+gold; every example for method gold)."""
    metric = run.metric
    spent = tokens.get("rationales", 0) + tokens.get("seed", 0)
    pts = []
    for r in run.rounds:
        m = r.metrics
        if m and m.get("train_size") is not None:
            pts.append({"name": f"round {r.q}", "size": m["train_size"], "real": 0, "tokens": spent,
                        "holdout": (m.get("holdout") or {}).get(metric), "test": (m.get("test") or {}).get(metric),
                        "pred_share": (m.get("test") or {}).get("pred_share"), "errors": m.get("errors")})
        spent += tokens.get(LAYOUT.round_dir(r.q), 0)
    if run.final:
        spent += tokens.get("goldgen", 0)
        f = run.final
        pts.append({"name": "final", "size": run.final_synthetic, "real": run.final_real, "tokens": spent,
                    "holdout": (f.get("holdout") or {}).get(metric), "test": (f.get("test") or {}).get(metric),
                    "pred_share": (f.get("test") or {}).get("pred_share"), "errors": None})
    return pts


def _pairs(run: RunView, gold_by_id: dict[str, Example]) -> dict[str, list[tuple[Example, Example]]]:
    out = {}
    for r in run.rounds:
        by_id = {**gold_by_id, **{e.id: e for e in r.errors}, **{e.id: e for e in r.sources}}
        out[LAYOUT.round_dir(r.q)] = [(a, by_id[a.meta["source_id"]]) for a in r.added if a.meta.get("source_id") in by_id]
    return out


def _sample(examples: list, n: int, key=lambda x: x) -> list:
    """n items, deterministic, round-robin over labels so every label shows."""
    rng = random.Random(0)
    groups: dict[str, list] = {}
    for x in examples:
        groups.setdefault(str(key(x).label), []).append(x)
    for g in groups.values():
        rng.shuffle(g)
    out, i = [], 0
    while len(out) < n and any(len(g) > i for g in groups.values()):
        for lab in sorted(groups):
            if len(groups[lab]) > i and len(out) < n:
                out.append(groups[lab][i])
        i += 1
    return out


def _screen(run: RunView, gold: list[Example], embed: Embedder | None, stored_sources: list[Example]) -> dict:
    """Per stage: cleaning rejects, leak flags (n-gram; cosine when embedded) and duplicates, recomputed
    on everything the stage generated (kept + dropped)."""
    guard = LeakGuard(gold)
    cos_ref = gold if len(gold) <= MAX_GOLD_EMBED else stored_sources
    cos_guard = LeakGuard(cos_ref, embed=embed) if embed is not None and cos_ref else None
    prior: list[Example] = []
    rows, flagged, near = [], [], []
    for stage, (kept, dropped) in _stage_examples(run).items():
        made = kept + dropped
        syn = (run.synthesis("seed") or run.synthesis("zerogen")) if stage == "seed" else \
            (run.synthesis(f"extrapolate-{stage}") or run.synthesis("goldgen"))
        leaks = guard.check(made)
        if cos_guard is not None:
            for r, c in zip(leaks, cos_guard.check(made)):
                r.cosine, r.cosine_gold_id = c.cosine, c.cosine_gold_id
                if c.cosine is not None and c.cosine >= LEAK_COSINE:
                    r.flagged, r.reason = True, "+".join(x for x in (r.reason, "cosine") if x)
        dups = find_duplicates(made, prior)
        n_flag = sum(r.flagged for r in leaks)
        why = Counter(str(ex.meta.get("dropped")) for ex in dropped)
        kept_ids = {ex.id for ex in kept}
        leak_ids = {r.id for r in leaks if r.flagged} & kept_ids
        dup_ids = {d.id for d in dups} & kept_ids - leak_ids
        rejects = syn.get("rejects") or {}
        rows.append({"stage": stage, "requested": syn.get("requested"), "rejected": sum(rejects.values()),
                     "rejects": rejects, "generated": len(made), "kept": len(kept),
                     "leaked": n_flag, "leak_rate": n_flag / len(made) if made else 0.0,
                     "leaked_ngram": sum(r.containment >= guard.min_containment for r in leaks),
                     "leaked_cosine": sum(r.cosine is not None and r.cosine >= LEAK_COSINE for r in leaks),
                     "max_containment": max((r.containment for r in leaks), default=0.0),
                     "max_cosine": max((r.cosine for r in leaks if r.cosine is not None), default=None),
                     "surplus": max(0, (syn.get("kept") or 0) - len(made)),
                     "clean": len(kept_ids - leak_ids - dup_ids), "kept_leak": len(leak_ids), "kept_dup": len(dup_ids),
                     "duplicates": len(dups), "exact": sum(d.kind == "exact" for d in dups),
                     "near": sum(d.kind == "near" for d in dups), "dropped": len(dropped),
                     "dropped_leak": why.get("leak", 0), "dropped_duplicate": why.get("duplicate", 0)})
        by_id = {ex.id: ex for ex in made}
        gold_by_id = {g.id: g for g in gold + stored_sources}
        for r in leaks:
            ngram_first = r.containment >= guard.min_containment or r.cosine is None or \
                r.containment / guard.min_containment >= r.cosine / LEAK_COSINE
            gid = r.gold_id if ngram_first else r.cosine_gold_id
            item = {"stage": stage, "example": by_id[r.id], "gold": gold_by_id.get(gid),
                    "containment": r.containment, "cosine": r.cosine, "reason": r.reason}
            if r.flagged:
                flagged.append(item)
            elif r.containment >= 0.2 or (r.cosine or 0) >= 0.9:
                near.append(item)
        prior += kept
    total = sum(r["generated"] for r in rows[1:])
    leaked = sum(r["leaked"] for r in rows[1:])
    near.sort(key=lambda it: -max(it["containment"] / guard.min_containment, (it["cosine"] or 0) / LEAK_COSINE))
    return {"rows": rows, "flagged": flagged[:SAMPLES], "n_flagged": len(flagged), "near": near[:5],
            "added_leak_rate": leaked / total if total else 0.0,
            "cosine_reference": None if cos_guard is None else
            ("the gold eval set" if cos_ref is gold else f"the {len(cos_ref)} stored gold sources")}


def _confident_wrong(path: Path, n: int = SAMPLES) -> tuple[list[dict], int]:
    """The final model's `n` most confident wrong test predictions (final/predictions.jsonl) and how many
    it got wrong in all; ([], 0) for a run without test predictions."""
    from ..io import read_jsonl

    f = path / LAYOUT.final_predictions
    if not f.exists():
        return [], 0
    wrong = [r for r in read_jsonl(f) if isinstance(r, dict) and r.get("correct") is False]
    wrong.sort(key=lambda r: -(r.get("confidence") or 0.0))
    return wrong[:n], len(wrong)


def _cleaning(run: RunView, n: int = SAMPLES) -> list[dict]:
    """--clean-labels per training stage: {stage, summary (flagged, share, mode ...), samples (the flagged
    examples of lowest self-confidence, from the stage's cleaned.jsonl)}; [] for a run without cleaning."""
    from ..io import read_jsonl

    out = []
    stages = [(f"round {r.q}", r.metrics or {}, LAYOUT.round(r.q, "cleaned")) for r in run.rounds]
    stages.append(("final", run.final or {}, LAYOUT.final_cleaned))
    for name, metrics, rel in stages:
        summary = metrics.get("cleaning")
        if not isinstance(summary, dict):
            continue
        f = run.path / rel
        rows = [r for r in read_jsonl(f) if isinstance(r, dict)] if f.exists() else []
        rows.sort(key=lambda r: r.get("self_confidence") or 0.0)
        out.append({"stage": name, "summary": summary, "samples": rows[:n]})
    return out


def build_run(path: Path, embed: Embedder | None) -> dict:
    """The template context for a run directory."""
    from . import plots

    run = load_run(path)
    gold, gold_note = load_gold(run)
    if run.manifest.get("method") == "gold":
        run.notes.append("method gold: the training set is the gold eval data itself; it is not checked for leaks")
        gold, gold_note = [], "nothing (method gold)"
    stored = list({ex.id: ex for r in run.rounds for ex in r.errors + r.sources}.values())
    tokens, tokens_note = stage_tokens(run)
    points = _points(run, tokens)
    pairs = _pairs(run, {g.id: g for g in gold})
    t6, t6_rows = table6(pairs, embed)
    row_by_id = {r["id"]: r for rs in t6_rows.values() for r in rs}
    screen = _screen(run, gold, embed, stored)
    labels = run.labels
    stages = _stage_names(run)
    balance_names = ["seed"] + [f"round {r.q} added" for r in run.rounds] + (
        [f"final set (with {run.final_real} real)" if run.final_real else "final set"] if run.final else [])
    balance = [Counter(str(ex.label) for ex in ex_list) for ex_list in
               [run.seed] + [r.added for r in run.rounds]]
    if run.final:
        balance.append(Counter((run.final.get("train_label_counts") or {})))
    samples = {"seed": [{"example": ex} for ex in _sample(run.seed, SAMPLES)]}
    for stage, prs in pairs.items():
        samples[stage] = [{"example": a, "source": m, "row": row_by_id.get(a.id),
                           "source_kind": {"near_boundary": "correct, near the boundary (balance fill)",
                                           "repeat": "error, extrapolated again (balance fill)"}.get(
                               m.meta.get("balance"), "misclassified")}
                          for a, m in _sample(prs, SAMPLES, key=lambda p: p[0])]
    figures = {}
    wrong, n_wrong = _confident_wrong(path)
    if points:
        figures["metric"] = plots.metric_curves(points, run.metric)
    figures["balance"] = plots.label_balance(balance_names, balance, labels)
    if any(t6_rows.values()):
        figures["table6"] = plots.table6_plot(t6_rows)
    figures["screen"] = plots.screen_counts(stages, screen["rows"])
    m, cfg = run.manifest, run.config
    final_test = (run.final or {}).get("test") or {}
    spent = m.get("llm", {}).get("spent_total", {})
    return {
        "kind": "run", "run": run, "m": m, "cfg": cfg, "task": run.task, "metric": run.metric, "labels": labels,
        "title": f"s3synth report: {m.get('task', '?')} ({path.name})", "generated": time.strftime("%Y-%m-%d %H:%M"),
        "points": points, "tokens": tokens, "tokens_note": tokens_note, "gold_note": gold_note,
        "table6": t6, "paper_table6": PAPER_TABLE6.get(m.get("task", "")), "screen": screen,
        "balance": list(zip(balance_names, balance)), "samples": samples, "figures": figures,
        "wrong": wrong, "n_wrong": n_wrong, "cleaning": _cleaning(run),
        "final_parts": (run.final or {}).get("parts"),
        "mining_rule": cfg.get("mine", "misclassified") if isinstance(cfg, dict) else "misclassified",
        "final_test": final_test, "final_size": run.final_synthetic if run.final else None,
        "final_real": run.final_real,
        "synthetic_counts": run.final_synthetic_label_counts() if run.final else None,
        "added": sum(len(r.added) for r in run.rounds), "llm_tokens": spent.get("prompt_tokens", 0)
        + spent.get("completion_tokens", 0), "llm_answers": spent.get("answers"), "notes": run.notes,
        "embedded_llm": (m.get("llm", {}).get("identity") or {}).get("backend") == "embedded",
        "words": lambda t: len(words(t or "")),
        "run_arg": shell_path(path),    # the run directory in suggested commands, as the user types it
    }


# ------------------------------------------------------------------ a bench directory

def _value(x):
    """None for a missing or NaN metric (a bench without a test set)."""
    return None if x is None or x != x else x


def comparisons(table: list[dict], metric: str, runs: list[dict] | None = None) -> list[dict]:
    """S3 against each baseline: the mean difference in `metric` (points) and whether it exceeds the larger
    of the two methods' standard deviations over seeds; with `runs` (bench.json's), also the difference
    paired by seed (both methods see the same gold eval and test set within a seed): mean ± std."""

    rows = {r["method"]: r for r in table}
    s3 = rows.get("s3")
    if s3 is None or _value(s3.get(metric)) is None:
        return []
    by_seed: dict[str, dict] = {}
    for r in runs or []:
        v = _value((r.get("test") or {}).get(metric))
        if v is not None:
            by_seed.setdefault(r["method"], {})[r["seed"]] = v
    out = []
    for m, r in rows.items():
        if m == "s3" or _value(r.get(metric)) is None:
            continue
        diff = 100 * (s3[metric] - r[metric])
        spread = 100 * max(s3[metric + "_std"], r[metric + "_std"])
        verdict = "one seed, no spread to compare with" if min(s3["runs"], r["runs"]) < 2 else \
            ("larger than the spread" if abs(diff) > spread else "within the spread")
        name = _label(m)
        text = f"S3 − {name}: {diff:+.1f} points; seed spread {spread:.1f}: {verdict}"
        seeds = sorted(set(by_seed.get("s3", {})) & set(by_seed.get(m, {})))
        paired = [100 * (by_seed["s3"][k] - by_seed[m][k]) for k in seeds]
        item = {"method": m, "name": name, "diff": diff, "spread": spread, "verdict": verdict}
        if len(paired) >= 2:
            item["paired"] = {"mean": statistics.mean(paired), "std": statistics.stdev(paired), "seeds": seeds,
                              "wins": sum(d > 0 for d in paired)}
            text += (f" (paired by seed: {item['paired']['mean']:+.1f} ± {item['paired']['std']:.1f}, "
                     f"S3 ahead on {item['paired']['wins']} of {len(paired)} seeds)")
        item["text"] = text
        out.append(item)
    return out


def _run_settings(path: Path) -> tuple[str | None, str | None]:
    """The LLM and learner of the bench's first run directory (the same for every run)."""
    manifests = sorted(path.glob(f"*-seed*/{LAYOUT.manifest}"))
    if not manifests:
        return None, None
    cfg = manifests[0].parent / LAYOUT.config
    learner = tomllib.loads(cfg.read_text(encoding="utf-8")).get("learner") if cfg.exists() else None
    return (read_json(manifests[0]).get("llm") or {}).get("name"), learner


def build_bench(path: Path, embed: Embedder | None) -> dict:
    """The template context for a bench directory (bench.json of `s3synth bench`); `embed` is unused."""
    from . import plots

    try:
        res = read_json(path / "bench.json")
    except (json.JSONDecodeError, OSError) as e:
        raise S3Error(f"{path / 'bench.json'}: unreadable ({e})") from None
    if not isinstance(res, dict) or not {"table", "runs", "metric"} <= set(res):
        raise S3Error(f"{path / 'bench.json'}: not a bench result (no table); run "
                      f"`s3synth bench --out {shell_path(path)}` again")
    metric = res["metric"]
    keys = ("exact_match", "f1") if metric == "f1" else ("accuracy", "macro_f1")
    runs = []
    for r in res["runs"]:
        d = path / Path(r["dir"]).name
        runs.append({**r, "name": _label(r["method"]), "run_dir": d.name,
                     "tokens": r["llm"]["prompt_tokens"] + r["llm"]["completion_tokens"],
                     "values": {k: _value(r["test"].get(k)) for k in keys},
                     "report": f"{d.name}/report.html" if (d / "report.html").exists() else None})
    table = [{**r, "name": _label(r["method"]),
              **{k: _value(r.get(k)) for k in keys}, **{k + "_std": _value(r.get(k + "_std")) for k in keys}}
             for r in res["table"]]
    methods = [{"key": r["method"], "name": r["name"], "mean": r[metric], "std": r[metric + "_std"] or 0.0,
                "runs": [{"seed": x["seed"], "tokens": x["tokens"], "value": x["values"][metric]}
                         for x in runs if x["method"] == r["method"]]} for r in table]
    llm, learner = _run_settings(path)
    return {
        "kind": "bench", "task": res["task"], "metric": metric, "keys": keys, "seeds": res["seeds"],
        "key_names": {"accuracy": "accuracy", "macro_f1": "macro-F1", "exact_match": "EM", "f1": "F1"},
        "title": f"s3synth bench report: {res['task']} ({path.name})", "generated": time.strftime("%Y-%m-%d %H:%M"),
        "path": path, "table": table, "runs": runs, "comparisons": comparisons(table, metric, res["runs"]),
        "figures": {"comparison": plots.bench_comparison(methods, metric)} if table else {},
        "llm": llm, "learner": learner, "llm_tokens": sum(r["tokens"] for r in runs),
    }


BUILDERS: dict[str, Callable[[Path, Embedder | None], dict]] = {"run": build_run, "bench": build_bench}
