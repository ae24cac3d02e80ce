"""--per-call / --per-context against one example per request: what a kept seed example costs and what it is
worth. Each variant is a seed-only S3 run (--rounds 0, the `fast` learner) on the same gold eval and test
subsample; the variants of one task and backend share an LLM cache (the rationales are paid once; seed
requests of different shapes never share a cache key).

    .venv/bin/python benchmarks/per_call.py                        # embedded model and stub, imdb and QNLI
    .venv/bin/python benchmarks/per_call.py --backends stub --seed-size 40 --max-test 300
    .venv/bin/python benchmarks/per_call.py --rationale-calls 4     # imdb's shared rationale stage shorter

Columns, per kept seed example: prompt tokens (as a provider bills them: every request's whole prompt),
computed prompt tokens (embedded engine only: what llama.cpp evaluated after reusing cached prefixes),
completion tokens, seconds of the seed stage; kept share (kept / asked-for examples), duplicate rate
(near-duplicates, same label, 3-shingle Jaccard >= 0.9, among the kept seed), and the test accuracy of the
final model trained on that seed. Ratios are against --per-call 1 of the same task and backend, in the same
run. The stub (tests/openai_stub.py, OpenAI chat with JSON schema) writes no real text: its accuracy means
nothing and is not shown; it checks the token arithmetic. Timing figures on a shared CPU are noisy.
Writes benchmarks/results/per_call.md (and .json) unless --no-save.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
TASKS = {
    "imdb": {"task": "imdb", "gold_eval": DATA / "s3_release/imdb_round1.jsonl",
             "test": DATA / "s3_release/imdb_round2.jsonl", "variants": [(1, 1), (5, 1)]},
    "qnli": {"task": "qnli", "gold_eval": DATA / "qnli/eval.jsonl", "test": DATA / "qnli/test.jsonl",
             "variants": [(1, 1), (5, 1), (1, 2)]},
}


def variant_name(pc: int, pk: int) -> str:
    return f"--per-context {pk}" if pk > 1 else f"--per-call {pc}"


def run_variant(backend: str, tname: str, pc: int, pk: int, out: Path, args, stub=None) -> dict:
    from s3synth.analysis import find_duplicates
    from s3synth.config import RunConfig
    from s3synth.data import Example
    from s3synth.io import read_json, read_jsonl
    from s3synth.llm import make_llm
    from s3synth.method.loop import S3

    t = TASKS[tname]
    task_obj = None
    if tname == "imdb" and args.rationale_calls:      # the task with fewer rationale prompts per label
        import dataclasses

        from s3synth.tasks import load_task
        task_obj = dataclasses.replace(load_task("imdb"), rationale_calls=args.rationale_calls)
    run_dir = out / f"{backend}-{tname}-pc{pc}-pk{pk}"
    llm_name = "embedded" if backend == "embedded" else "openai:stub-model"
    opts = {} if backend == "embedded" else {"base_url": stub.url, "concurrency": 4}
    cfg = RunConfig(task=t["task"], gold_eval=str(t["gold_eval"]), test=str(t["test"]), llm=llm_name,
                    llm_options=opts, learner="fast", seed_size=args.seed_size, rounds=0, seed=args.seed,
                    max_gold_eval=args.max_gold_eval, max_test=args.max_test, per_call=pc, per_context=pk,
                    cache_path=str(out / f"{backend}-{tname}.sqlite"))
    llm = make_llm(llm_name, seed=args.seed, **opts)
    computed = [0] if backend == "embedded" else None
    generate = llm.generate

    def counted(requests, desc="generate"):     # prompt tokens llama.cpp evaluated in the seed stage
        eng = getattr(llm, "_engine", None)
        before = eng.stats.get("prompt_evaluated", 0) if eng is not None else 0
        out = generate(requests, desc=desc)
        if computed is not None and desc.startswith(("seed", "zerogen")):
            computed[0] += llm._engine.stats.get("prompt_evaluated", 0) - before if llm._engine is not None else 0
        return out

    llm.generate = counted
    t0 = time.time()
    S3(cfg, llm=llm, **({"task": task_obj} if task_obj else {})).run(run_dir)
    wall = time.time() - t0
    llm.close()
    m = read_json(run_dir / "manifest.json")
    st, syn = m["stages"]["seed"], m["synthesis"].get("seed") or m["synthesis"].get("zerogen") or {}
    use = st.get("llm") or {}
    seed = [Example.from_dict(d) for d in read_jsonl(run_dir / "seed.jsonl")]
    kept = len(seed)
    dups = find_duplicates(seed)
    test = (m.get("result") or {}).get("final_test") or {}
    return {"backend": backend, "task": tname, "variant": variant_name(pc, pk), "per_call": pc, "per_context": pk,
            "kept": kept, "requests": use.get("requests"), "asked": syn.get("requested"),
            "kept_share": syn.get("kept_share"), "rejects": syn.get("rejects"),
            "prompt_tokens": use.get("used_prompt_tokens"), "completion_tokens": use.get("used_completion_tokens"),
            "computed_prompt_tokens": computed[0] if computed else None,
            "seconds": st.get("seconds"), "wall": round(wall, 1), "dup_rate": round(len(dups) / kept, 4) if kept else None,
            "accuracy": test.get("accuracy"), "dir": str(run_dir)}


def per_kept(r: dict, key: str) -> float | None:
    v = r.get(key)
    return None if v is None or not r["kept"] else v / r["kept"]


def table(rows: list[dict]) -> str:
    head = ("| backend | task | variant | requests | kept | prompt tok/kept | computed tok/kept | compl. tok/kept | "
            "s/kept | kept share | dup rate | test acc | prompt tok ratio | s ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base = {(r["backend"], r["task"]): r for r in rows if r["per_call"] == 1 and r["per_context"] == 1}

    def f(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)
    for r in rows:
        b = base.get((r["backend"], r["task"]))
        ptk, bptk = per_kept(r, "prompt_tokens"), per_kept(b, "prompt_tokens") if b else None
        sk, bsk = per_kept(r, "seconds"), per_kept(b, "seconds") if b else None
        acc = r["accuracy"] if r["backend"] == "embedded" else None
        lines.append(f"| {r['backend']} | {r['task']} | {r['variant']} | {r['requests']} | {r['kept']} | {f(ptk)} | "
                     f"{f(per_kept(r, 'computed_prompt_tokens'))} | {f(per_kept(r, 'completion_tokens'))} | "
                     f"{f(sk, '{:.2f}')} | {f(r['kept_share'], '{:.2f}')} | {f(r['dup_rate'], '{:.2f}')} | "
                     f"{f(acc, '{:.3f}')} | {f(ptk / bptk if ptk and bptk else None, '{:.2f}')} | "
                     f"{f(sk / bsk if sk and bsk else None, '{:.2f}')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="embedded,stub")
    ap.add_argument("--tasks", default="qnli,imdb")
    ap.add_argument("--rationale-calls", type=int, default=None,
                    help="imdb: rationale prompts per label (default: the task's 12); the rationales are "
                         "shared by every variant, so fewer only shortens the run")
    ap.add_argument("--variants", default=None, help='only these, e.g. "1x1,5x1" (per-call x per-context)')
    ap.add_argument("--seed-size", type=int, default=40)
    ap.add_argument("--max-test", type=int, default=300)
    ap.add_argument("--max-gold-eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "per-call"))
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--results", default="per_call", help="name of the results files in benchmarks/results")
    ap.add_argument("--combine", nargs="+", metavar="NAME",
                    help="only print (and save under --results) the table of these saved results, run nothing")
    args = ap.parse_args()
    res = ROOT / "benchmarks" / "results"
    if args.combine:
        latest = {}       # a later file's row replaces an earlier one of the same backend, task and variant
        for name in args.combine:
            for r in json.loads((res / f"{name}.json").read_text()):
                latest.pop((r["backend"], r["task"], r["variant"]), None)
                latest[(r["backend"], r["task"], r["variant"])] = r
        rows = sorted(latest.values(), key=lambda r: (r["backend"], r["task"], r["per_context"], r["per_call"]))
        text = table(rows)
        print(text)
        if not args.no_save:
            (res / f"{args.results}.json").write_text(json.dumps(rows, indent=1))
            (res / f"{args.results}.md").write_text(_header(args) + text + "\n")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENAI_API_KEY", "sk-stub")
    sys.path.insert(0, str(ROOT / "tests"))
    rows = []
    for backend in args.backends.split(","):
        stub = None
        if backend == "stub":
            from openai_stub import OpenAIStub
            stub = OpenAIStub().__enter__()
        try:
            for tname in args.tasks.split(","):
                wanted = [tuple(int(x) for x in v.split("x")) for v in args.variants.split(",")] if args.variants else None
                for pc, pk in TASKS[tname]["variants"]:
                    if wanted and (pc, pk) not in wanted:
                        continue
                    print(f"== {backend} {tname} {variant_name(pc, pk)}", flush=True)
                    rows.append(run_variant(backend, tname, pc, pk, out, args, stub))
        finally:
            if stub is not None:
                stub.__exit__(None, None, None)
    text = table(rows)
    print(text)
    if not args.no_save:
        res.mkdir(exist_ok=True)
        (res / f"{args.results}.json").write_text(json.dumps(rows, indent=1))
        (res / f"{args.results}.md").write_text(_header(args) + text + "\n")


def _header(args) -> str:
    return (f"seed size {args.seed_size}, test {args.max_test}, gold eval {args.max_gold_eval}, seed {args.seed}, "
            f"rationale calls per label {args.rationale_calls or 'as the task'}; noisy (shared CPU)\n\n")


if __name__ == "__main__":
    main()
