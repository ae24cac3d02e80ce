"""`s3synth bench`: the paper's comparison (Table 2) on the user's own task, through one machinery.

For every seed, S3 runs first (its final size sizes the baselines), then each baseline with the
same LLM, learner, gold eval, test set and one shared LLM cache. Every run is an ordinary run
directory under DIR, so the grid resumes like a single run does.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import fields, replace
from pathlib import Path

from ..config import METHODS, RunConfig
from ..errors import S3Error
from ..io import atomic_write_text, read_json, write_json
from ..metrics import headline_metric
from ..progress import info
from ..rundir import LAYOUT


_VARIANT = re.compile(r"\s*([A-Za-z0-9_+-]+)\s*(?:\[(.*)\])?\s*")


def split_methods(text: str) -> list[str]:
    """--methods split at the commas outside brackets.

    Example: split_methods("gold,s3+gold[clean_labels=drop,learner=minilm]")
             -> ["gold", "s3+gold[clean_labels=drop,learner=minilm]"]"""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [m for m in out if m]


def parse_variant(spec: str) -> tuple[str, dict]:
    """A method of the table, optionally with run settings of its own: "NAME[key=value,...]" (the keys are
    RunConfig fields, e.g. learner, clean_labels, mine, gold_weight). Returns (method, settings as strings).

    Example: parse_variant("s3+gold[clean_labels=drop]") -> ("s3+gold", {"clean_labels": "drop"})"""
    m = _VARIANT.fullmatch(spec)
    if not m or m.group(1) not in METHODS:
        raise S3Error(f"--methods: unknown {spec.strip()}; choose from {', '.join(METHODS)}, each optionally with "
                      "settings of its own as NAME[key=value,...], e.g. s3+gold[clean_labels=drop]")
    settings = {}
    for kv in split_methods(m.group(2) or ""):
        key, eq, value = kv.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in _VARIANT_KEYS:
            raise S3Error(f"--methods {spec!r}: {kv!r} is not KEY=VALUE with a run setting as KEY "
                          f"(one of {', '.join(sorted(_VARIANT_KEYS))})")
        settings[key] = value.strip()
    return m.group(1), settings


_FIXED = {"task", "gold_eval", "test", "method", "seed", "cache_path", "llm", "llm_options", "learner_options",
          "contexts"}
_VARIANT_KEYS = {f.name for f in fields(RunConfig)} - _FIXED


def _typed(settings: dict) -> dict:
    """Bench variant settings converted to the types of their RunConfig fields."""
    types = {f.name: str(f.type) for f in fields(RunConfig)}
    out = {}
    for k, v in settings.items():
        t = types[k]
        try:
            if v.lower() in ("none", "") and "None" in t:
                out[k] = None
            elif t.startswith("bool"):
                if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(v)
                out[k] = v.lower() in ("true", "1", "yes")
            elif t.startswith("int"):
                out[k] = int(v)
            elif t.startswith("float"):
                out[k] = float(v)
            else:
                out[k] = v
        except ValueError:
            raise S3Error(f"--methods: {k}={v!r} is not a valid {t.split(' ')[0]}") from None
    return out


def variant_dir(spec: str) -> str:
    """Example: variant_dir("s3+gold[clean_labels=drop]") -> "s3+gold_clean_labels-drop"."""
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9+.-]+", "_", spec.replace("=", "-"))).strip("_")


def run_bench(base: RunConfig, methods: list[str], seeds: list[int], out: str | Path, llm=None) -> dict:
    """Run the grid; `llm` (optional) is an LLM object to use instead of building one from `base.llm`.
    A method may carry settings of its own, "NAME[key=value,...]" (see `parse_variant`)."""
    from ..tasks import load_task
    from .loop import S3

    if not methods:
        raise S3Error(f"--methods: none given; choose from {', '.join(METHODS)}")
    variants = {m: parse_variant(m) for m in methods}
    for name, settings in variants.values():     # every setting checked before anything runs
        replace(base, method=name, **_typed(settings))
    if not seeds:
        raise S3Error("--seeds must be >= 1")
    task = load_task(base.task)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = str(out / LAYOUT.cache)
    runs: list[dict] = []
    for seed in seeds:
        s3_dir = out / f"s3-seed{seed}"
        info(f"bench: seed {seed}: s3")
        s3_res = S3(replace(base, method="s3", seed=seed, cache_path=cache, final_train=_as_named(base, "s3", {})),
                    llm=llm).run(s3_dir)
        _write_report(s3_dir, "minilm")
        runs.append(_summary("s3", seed, s3_dir, s3_res))
        for m in methods:
            if m == "s3":
                continue
            name, settings = variants[m]
            kw = {"method": name, "seed": seed, "cache_path": cache, "final_train": _as_named(base, name, settings),
                  **_typed(settings)}
            if METHODS[name].sized and "size" not in settings:
                kw["size"] = base.size or (s3_res["seed_size"] + s3_res["added"])   # S3's synthetic examples
            info(f"bench: seed {seed}: {m}")
            d = out / f"{variant_dir(m)}-seed{seed}"
            res = S3(replace(base, **kw), llm=llm).run(d)
            _write_report(d, "minilm")
            runs.append(_summary(m, seed, d, res))
    runs = [r for r in runs if r["method"] in methods]
    table = aggregate(runs, methods, task.kind)
    result = {"task": task.name, "metric": headline_metric(task), "seeds": seeds, "methods": methods,
              "runs": runs, "table": table}
    write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", to_markdown(result))
    _write_report(out, None)
    return result


def _as_named(base: RunConfig, method: str, settings: dict) -> str:
    """The final training of a bench row: as the method's name says (`s3`, `zerogen`, … are the paper's rows,
    synthetic only; `s3+gold`, `zerogen+gold` add the gold) unless --final-train or the variant sets it."""
    if base.final_train != "auto" or "final_train" in settings:
        return settings.get("final_train", base.final_train)
    return "synthetic+gold" if METHODS[method].final_gold else "synthetic"   # s3 too: the paper's row


def _write_report(out: Path, embed) -> None:
    """The report of a run or of the bench directory; a failure here only warns."""
    try:
        from ..report import write_report

        write_report(out, embed=embed)
    except Exception as e:  # the report is a by-product: never fail a finished bench for it
        info(f"warning: no report written for {out} ({type(e).__name__}: {e}); try `s3synth report {out}`")


def _summary(method: str, seed: int, d: Path, res: dict) -> dict:
    m = read_json(d / LAYOUT.manifest)
    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for st in m["stages"].values():
        u = st.get("llm") or {}
        usage["requests"] += u.get("requests", 0)
        usage["prompt_tokens"] += u.get("used_prompt_tokens", 0)
        usage["completion_tokens"] += u.get("used_completion_tokens", 0)
    test = res["final"].get("test") or {}
    leak = {"checked": sum(v.get("checked", 0) for v in (m.get("leakage") or {}).values()),
            "flagged": sum(v.get("flagged", 0) for v in (m.get("leakage") or {}).values()),
            "duplicates": sum(v.get("duplicates", 0) for v in (m.get("dedup") or {}).values())}
    # size: the synthetic examples the final model trained on; real: the gold eval's mining part it also
    # trained on (s3+gold, zerogen+gold) or alone (gold)
    return {"method": method, "seed": seed, "dir": str(d), "size": res["synthetic"], "real": res["real"],
            "test": test, "pred_share": test.get("pred_share"), "llm": usage, "screen": leak}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (float("nan"), 0.0)


def aggregate(runs: list[dict], methods: list[str], kind: str) -> list[dict]:
    keys = ("exact_match", "f1") if kind == "qa" else ("accuracy", "macro_f1")
    rows = []
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        row = {"method": m, "runs": len(rs), "size": statistics.mean(r["size"] for r in rs),
               "real": statistics.mean(r.get("real", 0) for r in rs),
               "llm_requests": statistics.mean(r["llm"]["requests"] for r in rs),
               "llm_tokens": statistics.mean(r["llm"]["prompt_tokens"] + r["llm"]["completion_tokens"] for r in rs)}
        screened = [r["screen"] for r in rs if r.get("screen", {}).get("checked")]
        if screened:    # synthetic data only: the gold method has none
            row["leak_rate"] = sum(x["flagged"] for x in screened) / sum(x["checked"] for x in screened)
            row["duplicates"] = float(statistics.mean(x["duplicates"] for x in screened))
        for k in keys:
            vals = [r["test"][k] for r in rs if k in r["test"]]
            row[k], row[k + "_std"] = _mean_std(vals)
        if kind != "qa":
            labels = sorted({lab for r in rs for lab in (r["pred_share"] or {})})
            row["pred_share"] = {lab: statistics.mean((r["pred_share"] or {}).get(lab, 0.0) for r in rs)
                                 for lab in labels}
        rows.append(row)
    return rows


def to_markdown(result: dict) -> str:
    qa = any("exact_match" in r for r in result["table"])
    head = "| method | synthetic | real | EM | F1 | leaks | dups | LLM requests | LLM tokens |" if qa else \
        ("| method | synthetic | real | accuracy | macro-F1 | test predictions per class | leaks | dups | LLM requests "
         "| LLM tokens |")
    lines = [f"# s3synth bench: {result['task']}", "",
             f"Mean ± standard deviation over seeds {result['seeds']} (test set; percentages). Synthetic and real: "
             "the examples the final model trained on (real: the gold eval's mining part). Leaks: share of "
             "the synthetic examples flagged as copies of gold-eval ones; dups: near-duplicates per run.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in result["table"]:
        name = METHODS[r["method"]].label if r["method"] in METHODS else r["method"]
        screen = (f"{100 * r['leak_rate']:.1f}% | {r['duplicates']:.1f}" if "leak_rate" in r else "- | -")
        sizes = f"{r['size']:.0f} | {r.get('real', 0):.0f}"
        if qa:
            lines.append(f"| {name} | {sizes} | {100 * r['exact_match']:.1f} ± {100 * r['exact_match_std']:.1f} "
                         f"| {100 * r['f1']:.1f} ± {100 * r['f1_std']:.1f} | {screen} | {r['llm_requests']:.0f} "
                         f"| {r['llm_tokens']:.0f} |")
        else:
            share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.get("pred_share", {}).items())
            lines.append(f"| {name} | {sizes} | {100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} "
                         f"| {100 * r['macro_f1']:.1f} ± {100 * r['macro_f1_std']:.1f} | {share} | {screen} "
                         f"| {r['llm_requests']:.0f} | {r['llm_tokens']:.0f} |")
    return "\n".join(lines) + "\n"
