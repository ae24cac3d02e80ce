"""The quality grid: does S3's synthetic data beat (or add to) the real labels, and do label cleaning and
margin mining help? 5 seeds, paired by seed on one fixed test subsample (--test-seed), embedded generator.

    .venv/bin/python benchmarks/quality_grid.py            # runs (resumable) and prints the tables
    .venv/bin/python benchmarks/quality_grid.py --report   # only the tables, from the finished runs
                                                           # (while the grid runs: the runs done so far)

Methods (the `fast` learner for all; `minilm` too for the headline three on QNLI):
gold, s3, s3+gold, zerogen+gold (as many ZeroGen examples as S3's, plus the same gold: does any synthetic
data help, or S3's?), s3+gold with --clean-labels drop, s3+gold with --mine margin, and s3+gold with
--gold-weight 2 (chosen on the held-out gold eval, never on the test set: see the held-out column).
Each bench shares one LLM cache, so every method's generation is paid once per seed and the second learner
costs only training. Tables: benchmarks/results/quality_grid.md (and runs/quality-*/bench.md).
Run nothing else that uses llama.cpp or torch meanwhile (2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(ROOT.parent / "shared" / "data")
FAST = ["gold", "s3", "s3+gold", "zerogen+gold", "s3+gold[clean_labels=drop]", "s3+gold[mine=margin]",
        "s3+gold[gold_weight=2]"]
MINILM = ["gold[learner=minilm]", "s3[learner=minilm]", "s3+gold[learner=minilm]"]
TASKS = {
    "imdb": (["--task", "imdb", "--gold-eval", str(DATA / "s3_release/imdb_round1.jsonl"),
              "--test", str(DATA / "s3_release/imdb_round2.jsonl")], FAST),
    "qnli": (["--task", "qnli", "--gold-eval", str(DATA / "qnli/eval.jsonl"), "--test", str(DATA / "qnli/test.jsonl")],
             FAST + MINILM),
}
# (A, B): A - B paired by seed, the comparisons the issue asks about
PAIRS = [("s3", "gold"), ("s3+gold", "gold"), ("s3+gold", "s3"), ("s3+gold", "zerogen+gold"), ("s3+gold[clean_labels=drop]", "s3+gold"),
         ("s3+gold[mine=margin]", "s3+gold"), ("s3+gold[gold_weight=2]", "s3+gold"),
         ("s3[learner=minilm]", "gold[learner=minilm]"), ("s3+gold[learner=minilm]", "gold[learner=minilm]"),
         ("s3+gold[learner=minilm]", "s3[learner=minilm]")]


def run(task: str, seeds: int, seed_size: int, out: Path, max_test: int = 1000, methods_only: str = "") -> None:
    args, methods = TASKS[task]
    if methods_only:
        methods = [m for m in methods if m in methods_only.split(";")]
    cmd = [str(ROOT / ".venv/bin/s3synth"), "bench", *args, "--llm", "embedded", "--learner", "fast",
           "--seed-size", str(seed_size), "--rounds", "2", "--seed", "0", "--max-gold-eval", "300",
           "--max-test", str(max_test), "--test-seed", "0", "--methods", ",".join(methods), "--seeds", str(seeds),
           "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _by_seed(bench: dict, metric: str, split: str = "test") -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in bench["runs"]:
        if split == "test":
            v = (r.get("test") or {}).get(metric)
        else:
            f = Path(r["dir"]) / "final" / "metrics.json"
            v = ((json.loads(f.read_text()) if f.exists() else {}).get("holdout") or {}).get(metric)
        if v is not None:
            out.setdefault(r["method"], {})[r["seed"]] = 100 * v
    return out


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.1f}"


def finished_runs(task: str, out: Path) -> dict:
    """bench.json's shape from the run folders finished so far (the bench writes bench.json only at its
    end): every METHOD-seedN folder with a final/metrics.json, methods in the grid's order."""
    from s3synth.method.bench import variant_dir

    _, methods = TASKS[task]
    runs, seeds = [], set()
    for m in methods:
        for d in sorted(out.glob(f"{variant_dir(m)}-seed*")):
            seed = d.name.rsplit("-seed", 1)[1]
            f = d / "final" / "metrics.json"
            if not seed.isdigit() or not f.exists():
                continue
            final = json.loads(f.read_text())
            runs.append({"method": m, "seed": int(seed), "dir": str(d), "size": final.get("train_size"),
                         "test": final.get("test") or {}})
            seeds.add(int(seed))
    return {"seeds": sorted(seeds), "methods": [m for m in methods if any(r["method"] == m for r in runs)],
            "runs": runs, "partial": True}


def _paired(by_seed: dict[str, dict[int, float]]) -> list[str]:
    """One row per comparison of PAIRS: mean ± std of A − B over the seeds both have, how often A is
    ahead, and whether the mean difference exceeds the larger of the two methods' seed spreads."""
    lines = ["| A − B | paired difference (points) | A ahead on | seed spread (larger std) | verdict |",
             "| --- | ---: | ---: | ---: | --- |"]
    for a, b in PAIRS:
        if a not in by_seed or b not in by_seed:
            continue
        seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
        if len(seeds) < 2:
            continue
        d = [by_seed[a][s] - by_seed[b][s] for s in seeds]
        spread = max(statistics.stdev(list(by_seed[a].values())), statistics.stdev(list(by_seed[b].values())))
        mean = statistics.mean(d)
        verdict = "larger than the spread" if abs(mean) > spread else "within the spread"
        lines.append(f"| {a} − {b} | {_ms(d)} | {sum(x > 0 for x in d)} of {len(d)} | {spread:.1f} | {verdict} |")
    return lines


def tables(task: str, out: Path) -> str:
    f = out / "bench.json"
    bench = json.loads(f.read_text()) if f.exists() else finished_runs(task, out)
    test, held = _by_seed(bench, "accuracy"), _by_seed(bench, "macro_f1", "holdout")
    partial = " - PARTIAL: the runs finished so far" if bench.get("partial") else ""
    lines = [f"### {task} ({len(bench['seeds'])} seeds; test accuracy on one fixed test subsample){partial}", "",
             "| method | test accuracy | held-out macro-F1 | final train size |", "| --- | ---: | ---: | ---: |"]
    sizes = {}
    for r in bench["runs"]:
        sizes.setdefault(r["method"], []).append(r["size"])
    for m in bench["methods"]:
        if m in test:
            lines.append(f"| {m} | {_ms(list(test[m].values()))} | "
                         f"{_ms(list(held[m].values())) if m in held else '–'} | {statistics.mean(sizes[m]):.0f} |")
    lines += ["", "Test accuracy, paired by seed:", ""] + _paired(test)
    lines += ["", "Held-out macro-F1 (the gold eval's held-out part, never trained on), paired by seed - the "
              "table the defaults are chosen from:", ""] + _paired(held)
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="imdb,qnli")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-size", type=int, default=100)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--methods", default="", help="a subset of the methods, separated by ';' (smoke runs)")
    ap.add_argument("--out", default="runs/quality", help="run folders: OUT-TASK")
    ap.add_argument("--report", action="store_true", help="only print the tables of finished runs")
    a = ap.parse_args()
    parts = ["# Quality grid (benchmarks/quality_grid.py)", "",
             f"Embedded SmolLM2-135M, seed size {a.seed_size}, 2 rounds, 300 gold-eval examples (30% held out), "
             f"{a.max_test:,} test examples fixed by --test-seed 0; learner `fast` unless named; mean ± std over seeds.", ""]
    for task in a.tasks.split(","):
        out = ROOT / f"{a.out}-{task}"
        if not a.report:
            run(task, a.seeds, a.seed_size, out, a.max_test, a.methods)
        if out.exists():
            parts.append(tables(task, out))
    text = "\n".join(parts)
    print(text)
    if "PARTIAL" in text:       # the results file holds finished grids only
        return 0
    res = ROOT / "benchmarks" / "results" / "quality_grid.md"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
