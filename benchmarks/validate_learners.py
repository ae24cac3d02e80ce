"""Validation of the learners on real data (figures, not test assertions).

Experiments (issue "Learners at full speed"), each choosing epochs/settings on held-out *training*
data only, never on the set it reports:
  rte-gold     MiniLM on RTE train (2,490; 10% held out for selection) -> RTE validation (277)
  rte-fast     the fast learner on the same split
  rte-release  MiniLM on the authors' released synthetic RTE pairs (rounds 1+2, 1,522) -> RTE validation
  qnli         MiniLM and fast on QNLI eval (800 train / 200 selection) -> QNLI test (1,000)
  adqa         MiniLM QA on AdversarialQA validation split by context (no context on both sides)

    .venv/bin/python benchmarks/validate_learners.py rte-gold qnli ...   (default: all)
Writes benchmarks/results/validate_learners.json and prints a table.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"

from s3synth.data import load_examples, stratified_split  # noqa: E402
from s3synth.learners import make_learner  # noqa: E402
from s3synth.learners.base import TrainConfig  # noqa: E402
from s3synth.progress import set_quiet  # noqa: E402
from s3synth.tasks import load_task  # noqa: E402


def majority(examples):
    return max(Counter(e.label for e in examples).values()) / len(examples)


def fit_eval(name, learner, task, train, select, test, **cfg):
    t = time.time()
    lrn = make_learner(learner, task, TrainConfig(**cfg))
    hist = lrn.fit(train, select)
    res = lrn.evaluate(test)
    row = {"experiment": name, "learner": learner, "train": len(train), "select": len(select), "test": len(test),
           "settings": cfg, "best_epoch": hist.get("best_epoch"), "seconds": round(time.time() - t, 1),
           "selection": [round(e.get("macro_f1", e.get("f1", 0)), 4) for e in hist["epochs"]]}
    if task.kind == "qa":
        row.update(exact_match=res["exact_match"], f1=res["f1"])
    else:
        row.update(accuracy=res["accuracy"], macro_f1=res["macro_f1"], pred_share=res["pred_share"],
                   majority=majority(test))
    print(json.dumps(row), flush=True)
    return row


def rte_split():
    task = load_task("rte")
    train = load_examples(SHARED / "rte" / "train.jsonl", task)
    fit, sel = stratified_split(train, 0.1, seed=0)
    return task, fit, sel, load_examples(SHARED / "rte" / "validation.jsonl", task)


def exp_rte_gold():
    task, fit, sel, val = rte_split()
    return [fit_eval("rte-gold", "minilm", task, fit, sel, val, epochs=4, lr=lr, batch_size=16, max_length=256,
                     patience=2) for lr in (2e-5, 5e-5)]


def exp_rte_fast():
    task, fit, sel, val = rte_split()
    return [fit_eval("rte-fast", "fast", task, fit, sel, val)]


def exp_rte_release():
    task, _, sel, val = rte_split()
    rel = []
    for f in ("rte_round1.jsonl", "rte_round2.jsonl"):
        rel += load_examples(SHARED / "s3_release" / f, task, id_prefix=f)
    return [fit_eval("rte-release", "minilm", task, rel, sel, val, epochs=4, lr=5e-5, batch_size=16,
                     max_length=256, patience=2)]


def exp_qnli():
    task = load_task("qnli")
    pool = load_examples(SHARED / "qnli" / "eval.jsonl", task)
    rng = random.Random(0)
    idx = list(range(len(pool)))
    rng.shuffle(idx)
    fit, sel = [pool[i] for i in idx[:800]], [pool[i] for i in idx[800:]]
    test = load_examples(SHARED / "qnli" / "test.jsonl", task)
    return [fit_eval("qnli", "minilm", task, fit, sel, test, epochs=4, lr=5e-5, batch_size=16, max_length=256,
                     patience=2),
            fit_eval("qnli", "fast", task, fit, sel, test)]


def exp_adqa():
    task = load_task("adversarial_qa")
    qa = load_examples(SHARED / "adversarial_qa" / "validation.jsonl", task)
    contexts = sorted({e.context for e in qa})
    random.Random(0).shuffle(contexts)
    n = len(contexts)
    test_ctx, sel_ctx = set(contexts[: int(0.3 * n)]), set(contexts[int(0.3 * n): int(0.4 * n)])
    test = [e for e in qa if e.context in test_ctx]
    sel = [e for e in qa if e.context in sel_ctx]
    fit = [e for e in qa if e.context not in test_ctx and e.context not in sel_ctx]
    return [fit_eval("adqa", "minilm", task, fit, sel, test, epochs=3, lr=5e-5, batch_size=16, max_length=384,
                     doc_stride=128, patience=2)]


EXPERIMENTS = {"rte-gold": exp_rte_gold, "rte-fast": exp_rte_fast, "rte-release": exp_rte_release,
               "qnli": exp_qnli, "adqa": exp_adqa}


def main():
    set_quiet(True)
    names = sys.argv[1:] or list(EXPERIMENTS)
    out = ROOT / "benchmarks" / "results" / "validate_learners.json"
    rows = json.loads(out.read_text()) if out.exists() else []
    for name in names:
        new = EXPERIMENTS[name]()
        rows = [r for r in rows if r["experiment"] != name] + new
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))
    print(f"\n{'experiment':<12} {'learner':<7} {'train':>6} {'test':>5} {'settings':<34} {'metric':>18} {'majority':>8} {'s':>6}")
    for r in rows:
        s = r["settings"]
        st = ", ".join(f"{k}={v}" for k, v in s.items() if k in ("lr", "epochs")) or "C grid"
        metric = (f"EM {100 * r['exact_match']:.1f} F1 {100 * r['f1']:.1f}" if "f1" in r and "accuracy" not in r
                  else f"acc {100 * r['accuracy']:.1f}")
        maj = f"{100 * r['majority']:.1f}" if "majority" in r else "-"
        print(f"{r['experiment']:<12} {r['learner']:<7} {r['train']:>6} {r['test']:>5} {st:<34} {metric:>18} {maj:>8} {r['seconds']:>6}")


if __name__ == "__main__":
    main()
