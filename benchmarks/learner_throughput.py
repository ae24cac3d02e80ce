"""Learner throughput: s3synth's trainer in fp32 and in bf16 vs a paper-style loop, on the same RTE
pairs, in one run; optionally the accuracy each precision reaches on QNLI.

The paper's released code pads every input to 512 tokens and trains in fp32 with batch 8. s3synth
pads per batch (dynamic padding), groups batches by length and truncates at the task's maximum
length, and (precision auto) uses bf16 autocast where the CPU has native bf16 (AVX512-BF16/AMX).
Each variant runs in its own subprocess so that peak memory is its own.

    .venv/bin/python benchmarks/learner_throughput.py [--train 256] [--infer 256] [--threads 2] [--qnli 800]
                                                      [--no-paper]
    .venv/bin/python benchmarks/learner_throughput.py --data-parallel [--train 512] [--epochs 2]

Prints a table: training and inference examples/s, effective GFLOP/s (useful FLOPs on real,
non-padding tokens: 6 x parameters per token for training, 2 x for inference), peak RSS, and the
ratios measured in the same run (bf16 against fp32, s3synth against the paper-style loop). With
--qnli N: MiniLM trained on N QNLI pairs of the shared evaluation pool (3 epochs), test accuracy on the
shared QNLI test set, per precision.

With --data-parallel: instead, MiniLM training (fp32) in one process against 2 gloo processes started
by the learner (`workers=2`: torch.multiprocessing, and Ray Train's TorchTrainer when Ray is installed),
the same global batch: examples/s over the epochs alone and over the whole fit (worker start-up, model
loading and the hand-back of the weights included), and the ratio against one process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rte"


def _load(n_train: int, n_infer: int):
    sys.path.insert(0, str(ROOT / "src"))
    from s3synth.data import load_examples
    from s3synth.tasks import load_task

    task = load_task("rte")
    train = load_examples(DATA / "train.jsonl", task)[:n_train]
    infer = load_examples(DATA / "validation.jsonl", task)[:n_infer]
    return task, train, infer


def _real_tokens(tok, examples, max_length):
    enc = tok([e.text for e in examples], [e.context for e in examples], truncation="only_second",
              max_length=max_length)
    return sum(len(ids) for ids in enc["input_ids"])


def run_s3synth(n_train: int, n_infer: int, precision: str) -> dict:
    from s3synth.learners import make_learner, minilm_path
    from s3synth.learners.base import TrainConfig
    from s3synth.progress import set_quiet
    from transformers import AutoTokenizer

    set_quiet(True)
    task, train, infer = _load(n_train, n_infer)
    learner = make_learner("minilm", task, TrainConfig(epochs=1, batch_size=16, eval_batch_size=64,
                                                       precision=precision))
    t = time.perf_counter()
    learner.fit(train, None)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    learner.predict(infer)
    t_infer = time.perf_counter() - t
    tok = AutoTokenizer.from_pretrained(minilm_path())
    n_params = sum(p.numel() for p in learner.model.parameters())
    return {"train_s": t_train, "infer_s": t_infer, "params": n_params,
            "train_tokens": _real_tokens(tok, train, task.max_length),
            "infer_tokens": _real_tokens(tok, infer, task.max_length)}


def run_paper(n_train: int, n_infer: int) -> dict:
    """The paper's loop: pad to 512, fp32, batch 8, AdamW, linear schedule, no length grouping."""
    import torch
    from s3synth.learners import minilm_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler

    task, train, infer = _load(n_train, n_infer)
    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, use_safetensors=True)
    label_id = {name: i for i, name in enumerate(task.label_names)}

    def batches(examples, bs):
        for i in range(0, len(examples), bs):
            chunk = examples[i:i + bs]
            enc = tok([e.text for e in chunk], [e.context for e in chunk], truncation=True, padding="max_length",
                      max_length=512, return_tensors="pt")
            enc["labels"] = torch.tensor([label_id[e.label] for e in chunk])
            yield enc

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-2)
    steps = (len(train) + 7) // 8
    sched = get_scheduler("linear", optimizer=opt, num_warmup_steps=min(100, steps // 10),
                          num_training_steps=steps)
    model.train()
    t = time.perf_counter()
    for batch in batches(train, 8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    t_train = time.perf_counter() - t
    model.eval()
    t = time.perf_counter()
    with torch.no_grad():
        for batch in batches(infer, 8):
            batch.pop("labels")
            model(**batch)
    t_infer = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())
    return {"train_s": t_train, "infer_s": t_infer, "params": n_params,
            "train_tokens": _real_tokens(tok, train, task.max_length),
            "infer_tokens": _real_tokens(tok, infer, task.max_length)}


def run_qnli(n_train: int, precision: str) -> dict:
    """Accuracy on the shared QNLI test set after training MiniLM on n_train pairs of the evaluation pool."""
    from s3synth.data import load_examples, stratified_split
    from s3synth.learners import make_learner
    from s3synth.progress import set_quiet
    from s3synth.tasks import load_task

    set_quiet(True)
    task = load_task("qnli")
    pool = load_examples(ROOT.parent / "shared" / "data" / "qnli" / "eval.jsonl", task)[:n_train]
    test = load_examples(ROOT.parent / "shared" / "data" / "qnli" / "test.jsonl", task)
    train, select = stratified_split(pool, 0.2, 0)
    learner = make_learner("minilm", task, {"epochs": 3, "precision": precision, "seed": 0})
    t = time.perf_counter()
    learner.fit(train, select)
    acc = learner.evaluate(test)["accuracy"]
    return {"accuracy": acc, "seconds": time.perf_counter() - t, "train": len(train), "test": len(test),
            "precision_used": learner.precision}


def run_data_parallel(n_train: int, workers: int, launcher: str, epochs: int) -> dict:
    from s3synth.learners import make_learner
    from s3synth.progress import set_quiet

    set_quiet(True)
    task, train, _ = _load(n_train, 0)
    learner = make_learner("minilm", task, {"epochs": epochs, "batch_size": 16, "precision": "fp32", "seed": 0,
                                            "workers": workers, "launcher": launcher})
    t = time.perf_counter()
    history = learner.fit(train, None)
    return {"fit_s": time.perf_counter() - t, "epoch_ex_per_s": history["train_examples_per_s"],
            "train_loss": history["epochs"][-1]["train_loss"], "epochs": epochs}


def child(variant: str, n_train: int, n_infer: int, epochs: int = 1) -> None:
    if variant.startswith("dp-"):
        _, workers, launcher, threads = variant.split("-")
        import torch
        torch.set_num_threads(int(threads))   # in all: each of the workers gets its share
        res = run_data_parallel(n_train, int(workers), launcher, epochs)
    elif variant.startswith("qnli-"):
        res = run_qnli(n_train, variant[5:])
    elif variant == "paper":
        res = run_paper(n_train, n_infer)
    else:
        res = run_s3synth(n_train, n_infer, variant)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res.update(variant=variant, n_train=n_train, n_infer=n_infer)
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=256, help="RTE training pairs (one epoch)")
    ap.add_argument("--infer", type=int, default=256, help="RTE validation pairs to predict")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads per variant")
    ap.add_argument("--qnli", type=int, default=0, help="also: QNLI test accuracy after training on N pairs")
    ap.add_argument("--data-parallel", action="store_true",
                    help="only: one process against 2 gloo processes (spawn, and Ray Train if installed)")
    ap.add_argument("--epochs", type=int, default=2, help="--data-parallel: epochs per fit")
    ap.add_argument("--no-paper", action="store_true",
                    help="leave out the paper-style row (about 1 example/s: minutes for --train 256)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        import torch
        torch.set_num_threads(a.threads)
        return child(a.child, a.qnli if a.child.startswith("qnli-") else a.train, a.infer, a.epochs)

    def spawn(variant: str) -> dict:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        p = subprocess.run([sys.executable, __file__, "--child", variant, "--train", str(a.train),
                            "--infer", str(a.infer), "--threads", str(a.threads), "--qnli", str(a.qnli),
                            "--epochs", str(a.epochs)],
                           capture_output=True, text=True, env=env)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            sys.exit(f"{variant} failed:\n{p.stderr[-2000:]}")
        return json.loads(line[0][7:])

    if a.data_parallel:
        return data_parallel_table(a, spawn)
    rows = {v: spawn(v) for v in (("fp32", "bf16") if a.no_paper else ("paper", "fp32", "bf16"))}
    names = {"paper": "paper-style (pad 512, bs 8)", "fp32": "s3synth fp32 (dynamic, bs 16)",
             "bf16": "s3synth bf16 autocast"}
    print(f"RTE pairs: train {a.train} (1 epoch), predict {a.infer}; MiniLM-L6; torch threads {a.threads}")
    print(f"{'variant':<30} {'train ex/s':>10} {'infer ex/s':>10} {'train GFLOP/s':>14} {'infer GFLOP/s':>14} "
          f"{'peak RSS MB':>12}")
    for v, r in rows.items():
        tr, inf = r["n_train"] / r["train_s"], r["n_infer"] / r["infer_s"]
        gtr = 6 * r["params"] * r["train_tokens"] / r["train_s"] / 1e9
        ginf = 2 * r["params"] * r["infer_tokens"] / r["infer_s"] / 1e9
        print(f"{names[v]:<30} {tr:>10.1f} {inf:>10.1f} {gtr:>14.1f} {ginf:>14.1f} {r['peak_rss_mb']:>12.0f}")
    f, b = rows["fp32"], rows["bf16"]
    print(f"bf16 against fp32: training {f['train_s'] / b['train_s']:.2f}x, inference {f['infer_s'] / b['infer_s']:.2f}x")
    if "paper" in rows:
        p = rows["paper"]
        print(f"s3synth fp32 against paper-style: training {p['train_s'] / f['train_s']:.1f}x, "
              f"inference {p['infer_s'] / f['infer_s']:.1f}x")
    if a.qnli:
        print(f"\nQNLI: MiniLM trained on {a.qnli} pairs of the evaluation pool (80% train, 20% epoch choice, 3 epochs)")
        print(f"{'precision':<10} {'test accuracy':>14} {'test pairs':>10} {'seconds':>8}")
        for prec in ("fp32", "bf16"):
            r = spawn("qnli-" + prec)
            print(f"{prec:<10} {100 * r['accuracy']:>14.1f} {r['test']:>10} {r['seconds']:>8.0f}")


def data_parallel_table(a, spawn) -> None:
    import importlib.util

    t = a.threads
    variants = {f"dp-1-auto-{t}": f"1 process, {t} threads", "dp-1-auto-1": "1 process, 1 thread",
                f"dp-2-spawn-{t}": "2 gloo processes (spawn)"}
    if importlib.util.find_spec("ray") and importlib.util.find_spec("ray.train"):
        variants[f"dp-2-ray-{t}"] = "2 gloo workers (Ray Train)"
    rows = {v: spawn(v) for v in variants}
    base = rows[f"dp-1-auto-{t}"]
    print(f"RTE pairs: train {a.train} x {a.epochs} epochs, global batch 16, MiniLM-L6 fp32; "
          f"{os.cpu_count()} CPU cores; the workers share {t} torch threads (Ray: one CPU each); "
          f"ratios against the first row")
    print(f"{'variant':<30} {'epoch ex/s':>10} {'ratio':>6} {'fit s':>7} {'fit ex/s':>9} {'ratio':>6} {'last loss':>10}")
    for v, r in rows.items():
        fit_rate = a.train * a.epochs / r["fit_s"]
        base_fit = a.train * a.epochs / base["fit_s"]
        print(f"{variants[v]:<30} {r['epoch_ex_per_s']:>10.1f} {r['epoch_ex_per_s'] / base['epoch_ex_per_s']:>6.2f} "
              f"{r['fit_s']:>7.1f} {fit_rate:>9.1f} {fit_rate / base_fit:>6.2f} {r['train_loss']:>10.4f}")


if __name__ == "__main__":
    main()
