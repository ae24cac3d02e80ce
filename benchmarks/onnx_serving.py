"""CPU serving: PyTorch fp32, PyTorch bf16 autocast (the learner's default where the CPU has native bf16),
ONNX Runtime fp32 and ONNX Runtime int8 (`s3synth export-model --quantize int8`) on the same model and test
set, in one run: examples/s (tokenisation included, batches of 64 sorted by length) and test accuracy, with
ratios against PyTorch fp32.

    .venv/bin/python benchmarks/onnx_serving.py --run runs/demo            # the demo's final model and test set
    .venv/bin/python benchmarks/onnx_serving.py                            # stand-alone: trains MiniLM first

Stand-alone it fine-tunes MiniLM (the `minilm` learner, 2 epochs) on --train reviews of the released imdb
reviews (s3_release/imdb_round1.jsonl) and tests on --max-test reviews of imdb_round2.jsonl, the demo's
files. With --run it reads RUN/final/model and the run's own test set (config.toml: test, max_test, seed).
Every row uses --threads threads (torch.set_num_threads, ONNX Runtime intra_op_num_threads); the rows are
timed in turn, --repeats times, and the median is reported, so a busy shared CPU slows all rows alike.
The int8 row is export-model's default (per-channel weight scales); --per-tensor adds a row with one scale per
weight matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
RELEASE = ROOT.parent / "shared" / "data" / "s3_release"


def train_model(out: Path, n_train: int, seed: int) -> Path:
    from s3synth.data import load_examples, subsample
    from s3synth.learners import make_learner
    from s3synth.tasks import load_task

    task = load_task("imdb")
    train = subsample(load_examples(RELEASE / "imdb_round1.jsonl", task), n_train, seed)
    lrn = make_learner("minilm", task, {"epochs": 2}, seed=seed)
    t = time.time()
    lrn.fit(train)
    print(f"trained minilm on {len(train)} reviews in {time.time() - t:.0f} s", file=sys.stderr)
    lrn.save(out / "final" / "model")
    (out / "manifest.json").write_text("{}", encoding="utf-8")   # export-model reads RUN/final/model
    return out


def test_set(run: Path | None, model_dir: Path, n_test: int | None, seed: int):
    from s3synth.data import load_examples, subsample
    from s3synth.tasks import load_task

    task = load_task(json.loads((model_dir / "s3synth_learner.json").read_text())["task"])
    cfg_file = run / "config.toml" if run else None
    if cfg_file is not None and cfg_file.exists():
        cfg = tomllib.loads(cfg_file.read_text(encoding="utf-8"))
        path, n, seed = Path(cfg["test"]), n_test or cfg.get("max_test"), int(cfg.get("seed", 0))
        if not path.is_absolute() and not path.exists():
            path = ROOT / path
    else:
        path, n = RELEASE / "imdb_round2.jsonl", n_test or 500
    return task, subsample(load_examples(path, task, id_prefix="test"), n, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a finished run directory (else a model is trained here first)")
    ap.add_argument("--train", type=int, default=300, help="stand-alone: training reviews")
    ap.add_argument("--max-test", type=int, help="test examples (default: the run's, or 500)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-tensor", action="store_true", help="add an int8 row with per-tensor weight scales")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--work", type=Path, help="folder for the trained model and the exports (default: a temp "
                                               "folder); a model trained there before is reused")
    a = ap.parse_args()

    import torch

    from s3synth import progress
    from s3synth.learners.hf import HFLearner, cpu_has_bf16
    from s3synth.serve.onnx_export import export_onnx, resolve_source
    from s3synth.serve.onnx_predict import OnnxModel

    progress.set_quiet(True)
    torch.set_num_threads(a.threads)
    work = a.work or Path(tempfile.mkdtemp(prefix="onnx_serving."))
    work.mkdir(parents=True, exist_ok=True)
    for old in ("onnx", "onnx-pt"):
        if (work / old).exists():
            shutil.rmtree(work / old)
    if a.run:
        run = a.run
    elif (work / "run" / "final" / "model" / "s3synth_learner.json").exists():
        run = work / "run"
        print(f"reusing the model trained in {run}", file=sys.stderr)
    else:
        run = train_model(work / "run", a.train, a.seed)
    model_dir, run_dir = resolve_source(run)
    task, test = test_set(run_dir, model_dir, a.max_test, a.seed)
    if task.kind == "qa":
        sys.exit("this benchmark measures classification models (examples/s and accuracy)")
    gold = [e.label for e in test]
    pair = task.kind == "pair"

    t = time.time()
    info = export_onnx(run, work / "onnx", quantize="int8")
    print(f"exported in {time.time() - t:.0f} s: {info['sizes_mb']}", file=sys.stderr)

    def torch_row(precision: str):
        lrn = HFLearner.load(model_dir, task)
        lrn.precision = precision             # what the learner's predict() runs under
        return lambda exs: [p.label for p in lrn.predict(exs)]

    def onnx_row(folder: Path, which: str):
        m = OnnxModel(folder, model=which, threads=a.threads)
        return lambda exs: [r["label"] for r in m.classify([e.text for e in exs],
                                                           [e.context for e in exs] if pair else None)]

    mb = round(sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1e6, 1)
    rows: dict[str, dict] = {"PyTorch fp32": {"fn": torch_row("fp32"), "mb": mb}}
    if cpu_has_bf16():
        rows["PyTorch bf16 autocast (the learner's default here)"] = {"fn": torch_row("bf16"), "mb": mb}
    rows["ONNX Runtime fp32"] = {"fn": onnx_row(work / "onnx", "fp32"), "mb": info["sizes_mb"]["fp32"]}
    rows["ONNX Runtime int8 (per-channel, the default)"] = {"fn": onnx_row(work / "onnx", "int8"),
                                                            "mb": info["sizes_mb"]["int8"]}
    if a.per_tensor:
        pt = export_onnx(run, work / "onnx-pt", quantize="int8", per_channel=False)
        rows["ONNX Runtime int8, per-tensor"] = {"fn": onnx_row(work / "onnx-pt", "int8"), "mb": pt["sizes_mb"]["int8"]}

    for r in rows.values():                    # warm-up: first-call allocations, oneDNN primitive caches
        r["fn"](test[:32])
        r["times"] = []
    for _ in range(a.repeats):                 # rows in turn, so that a busy CPU slows them alike
        for r in rows.values():
            t = time.perf_counter()
            labels = r["fn"](test)
            r["times"].append(time.perf_counter() - t)
            r["acc"] = sum(p == g for p, g in zip(labels, gold)) / len(gold)
    base = len(test) / statistics.median(rows["PyTorch fp32"]["times"])
    base_acc = rows["PyTorch fp32"]["acc"]
    out = []
    print(f"\n{task.name}: {len(test)} test examples, {a.threads} threads, median of {a.repeats} "
          f"(model: {model_dir})\n")
    print("| row | examples/s | x PyTorch fp32 | test accuracy | vs fp32 (points) | weights MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        eps = len(test) / statistics.median(r["times"])
        out.append({"row": name, "examples_per_s": round(eps, 2), "ratio": round(eps / base, 2),
                    "accuracy": round(100 * r["acc"], 2), "delta_points": round(100 * (r["acc"] - base_acc), 2),
                    "mb": r["mb"], "seconds": [round(x, 2) for x in r["times"]]})
        print(f"| {name} | {eps:.1f} | {eps / base:.2f} | {100 * r['acc']:.1f} | "
              f"{100 * (r['acc'] - base_acc):+.1f} | {r['mb']} |")
    if a.json:
        a.json.write_text(json.dumps({"task": task.name, "n_test": len(test), "threads": a.threads,
                                      "repeats": a.repeats, "rows": out}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
