"""The `s3synth` command line. Status and progress go to stderr, results to stdout.

Exit codes: 0 done, 1 unexpected error (a bug: please report it with -v output), 2 bad input or
setting (the message says what to fix), 3 a token or cost budget was reached (everything is saved;
re-run with a larger budget to go on), 130 interrupted (re-run the same command to resume).
"""

from __future__ import annotations

import os
import re
import sys
import traceback

import click

from .errors import BudgetExceeded, S3Error

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="s3synth")
def cli():
    """Synthesize a training set with an LLM by extrapolating a small model's errors (S3).

    \b
    Quick start (offline, embedded models):
      s3synth tasks
      s3synth run --task rte --gold-eval gold.jsonl --test test.jsonl --out runs/rte
    """


def _fmt(x):
    return "-" if x is None else f"{100 * x:.1f}"


def print_result(result: dict, task) -> None:
    hm = result["headline_metric"]
    lines = [f"task {result['task']}: seed {result['seed_size']} + added {result['added']} synthetic examples",
             f"{'stage':<10} {'train':>6} {'held-out ' + hm:>18} {'test ' + hm:>14}  test predictions per class"]

    def row(name, r):
        share = ""
        if r.get("test") and r["test"].get("pred_share"):
            share = "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["test"]["pred_share"].items())
        h = r.get("holdout") or {}
        t = r.get("test") or {}
        lines.append(f"{name:<10} {r.get('train_size', 0):>6} {_fmt(h.get(hm)):>18} {_fmt(t.get(hm)):>14}  {share}")

    for r in result["rounds"]:
        row(f"round {r['round']}", r)
    row("final", result["final"])
    if task.kind == "qa" and result["final"].get("test"):
        t = result["final"]["test"]
        lines.append(f"final test: exact match {_fmt(t['exact_match'])}, F1 {_fmt(t['f1'])}")
    lines.append(f"why the loop stopped: {result['stop_reason']}")
    lines.append(f"run directory: {result['out']}")
    click.echo("\n".join(lines))


def _learner_settings(epochs, lr, batch_size, max_length):
    d = {}
    for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("max_length", max_length)):
        if v is not None:
            d[k] = v
    return d


def _run_option_list(out_required: bool) -> list:
    return [
        click.option("--task", "task_name", required=True, help="Built-in task (see `s3synth tasks`) or a task YAML/TOML file."),
        click.option("--gold-eval", required=True, type=click.Path(), help="Real labelled examples (JSONL, CSV or Parquet) whose errors are extrapolated."),
        click.option("--test", type=click.Path(), help="Real test set for the reported metrics (never used for choices)."),
        click.option("--llm", default="embedded", show_default=True, help="embedded | openai:MODEL | any registered BACKEND:MODEL."),
        click.option("--learner", default="minilm", show_default=True, help="minilm | distilbert | hf:PATH | fast."),
        click.option("--learner-path", type=click.Path(), help="Weights folder for --learner distilbert (the paper's model)."),
        click.option("--seed-size", default=200, show_default=True, type=int, help="Seed examples to keep."),
        click.option("--method", default="s3", show_default=True,
                     type=click.Choice(["s3", "zerogen", "goldgen", "seed-only", "gold", "zerogen-s3"]),
                     help="s3, or a baseline of the paper: zerogen (one fixed prompt per label), goldgen "
                          "(extrapolate every gold example), seed-only, gold (train on the gold eval); zerogen-s3 "
                          "is Table 5's transfer (ZeroGen seed, then S3's extrapolation)."),
        click.option("--size", type=int, help="zerogen / seed-only: synthetic examples to keep (default: --seed-size)."),
        click.option("--rounds", default=2, show_default=True, type=int, help="Error-extrapolation rounds (the paper: 2)."),
        click.option("--out", required=out_required, type=click.Path(), help="Run directory; re-run the same command to resume."),
        click.option("--seed", default=0, show_default=True, type=int, help="Random seed for sampling, splits and training."),
        click.option("--max-gold-eval", type=int, help="Use a random subsample of this many gold eval examples."),
        click.option("--max-test", type=int, help="Use a random subsample of this many test examples."),
        click.option("--holdout-frac", default=0.3, show_default=True, type=float,
                     help="Share of gold eval kept out of error mining, used to pick epochs and to stop."),
        click.option("--min-gain", default=0.0, show_default=True, type=float,
                     help="Stop when the held-out metric gains less than this over the previous round."),
        click.option("--balance", default="fill", show_default=True, type=click.Choice(["fill", "cap", "none"]),
                     help="Label balance of each round's added data (none = the paper)."),
        click.option("--prompt-style", default="auto", show_default=True, type=click.Choice(["auto", "paper", "fewshot"]),
                     help="auto: few-shot completion prompts for the embedded model, the paper's templates otherwise."),
        click.option("--contexts", type=click.Path(), help="Pair/QA tasks: premises/contexts to write for (default: the gold eval's)."),
        click.option("--drop-leaks", is_flag=True,
                     help="Drop synthetic examples copying a gold-eval one (8-gram containment >= 0.5); always counted."),
        click.option("--dedup", is_flag=True, help="Drop near-duplicate generations (same label, 3-word-shingle Jaccard >= 0.9)."),
        click.option("--temperature", default=0.8, show_default=True, type=float),
        click.option("--top-p", default=0.95, show_default=True, type=float),
        click.option("--base-url", help="openai: server URL, e.g. http://localhost:8000/v1."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the API key."),
        click.option("--concurrency", default=8, show_default=True, type=int, help="openai: requests in flight."),
        click.option("--llm-mode", default="chat", show_default=True, type=click.Choice(["chat", "completions"]),
                     help="openai: the chat or the plain completions endpoint."),
        click.option("--llm-timeout", default=60.0, show_default=True, type=float,
                     help="openai: seconds to wait for one answer before retrying."),
        click.option("--embedded-weights", default="q8_0", show_default=True,
                     type=click.Choice(["q8_0", "original"]),
                     help="embedded: the format the model runs in; q8_0 (converted once, cached) is faster and "
                          "gives the same answers batched or not; original keeps the packaged Q4_1 file."),
        click.option("--max-tokens", "budget_tokens", type=int, help="Hard budget: LLM tokens over the whole run directory."),
        click.option("--max-cost", type=float, help="Hard budget in money (needs --price-in/--price-out)."),
        click.option("--price-in", default=0.0, type=float, help="Price per million prompt tokens."),
        click.option("--price-out", default=0.0, type=float, help="Price per million completion tokens."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the LLM answer cache."),
        click.option("--cache-only", is_flag=True, help="Fail instead of calling the LLM for an answer not in the cache."),
        click.option("--epochs", type=int, help="Learner epochs (default 6)."),
        click.option("--lr", type=float, help="Learner peak learning rate (default 5e-5)."),
        click.option("--batch-size", type=int, help="Learner batch size (default 8)."),
        click.option("--max-length", type=int, help="Learner tokens per input (default: the task's)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or status lines."),
        click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors."),
    ]


def run_options(out_required: bool = True):
    """Decorator: the options of `run`, shared with `estimate` (which does not need --out)."""
    def deco(f):
        for opt in reversed(_run_option_list(out_required)):
            f = opt(f)
        return f
    return deco


def config_from_options(o: dict):
    """The RunConfig for the `run` options `o`: options named like a RunConfig field go straight in."""
    from dataclasses import fields

    from .config import RunConfig

    if o.get("cache_only") and o.get("no_cache"):
        raise S3Error("--no-cache and --cache-only exclude each other")
    if o.get("budget_tokens") is not None and o["budget_tokens"] < 1:
        raise S3Error(f"--max-tokens {o['budget_tokens']}: must be >= 1")
    if (o.get("price_in") or 0) < 0 or (o.get("price_out") or 0) < 0:
        raise S3Error("--price-in and --price-out must be >= 0")
    if o.get("max_cost") is not None:
        if o["max_cost"] <= 0:
            raise S3Error(f"--max-cost {o['max_cost']}: must be > 0")
        if not (o.get("price_in") or o.get("price_out")):
            raise S3Error("--max-cost needs --price-in and/or --price-out (money per million tokens)")
    env = o.get("api_key_env")
    if env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):     # never echo it: it may be the key itself
        raise S3Error("--api-key-env takes the NAME of an environment variable holding the key "
                      "(e.g. OPENAI_API_KEY), not the key")
    names = {f.name for f in fields(RunConfig)}
    kw = {k: v for k, v in o.items() if k in names}
    kw.update(task=o["task_name"], max_tokens=o.get("budget_tokens"),
              cache_mode="off" if o.get("no_cache") else ("only" if o.get("cache_only") else "use"),
              learner_settings=_learner_settings(o.get("epochs"), o.get("lr"), o.get("batch_size"),
                                                 o.get("max_length")))
    return RunConfig(**kw)


@cli.command(context_settings=CONTEXT)
@run_options()
def run(**o):
    """Run S3: seed synthesis, then train -> mine errors -> extrapolate, then a final model.

    \b
    Example (the README's demo, offline):
      s3synth run --task imdb --gold-eval ../shared/data/s3_release/imdb_round1.jsonl --max-gold-eval 300 \\
                  --test ../shared/data/s3_release/imdb_round2.jsonl --max-test 1000 --out runs/demo
    Re-running the same command on a finished directory prints its results and does no new work;
    on an interrupted one it resumes, taking every LLM answer it already has from the cache.
    Budgets (--max-tokens, --max-cost) stop the run with exit code 3, everything saved; the same
    command with a larger budget goes on from there.
    """
    from .progress import set_quiet

    set_quiet(o["quiet"])

    def go():
        from .pipeline import S3
        from .tasks import load_task

        result = S3(config_from_options(o)).run(o["out"])
        print_result(result, load_task(o["task_name"]))

    _guard(go, o["verbose"])


@cli.command(context_settings=CONTEXT)
@run_options(out_required=False)
@click.option("--assume-error-rate", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Share of mining examples assumed misclassified per round.")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(assume_error_rate, as_json, **o):
    """Estimate the LLM calls, tokens and money of `run` with the same arguments, per stage.

    Builds the real prompts but calls no LLM and writes nothing (--out may be left out).
    Completion tokens are an upper bound (every call at the stage's max_tokens).

    \b
    Example:
      s3synth estimate --task rte --gold-eval gold.jsonl --llm openai:gpt-4o-mini --price-in 0.15 --price-out 0.6
    """
    from .progress import set_quiet

    set_quiet(o["quiet"])

    def go():
        import json

        from .estimate import estimate_run

        est = estimate_run(config_from_options(o), error_rate=assume_error_rate)
        click.echo(json.dumps(est.to_dict(), indent=2) if as_json else est.table())

    _guard(go, o["verbose"])


@cli.command(context_settings=CONTEXT)
@click.option("--task", "task_name", required=True, help="Built-in task or a task YAML/TOML file.")
@click.option("--train", "train_path", required=True, type=click.Path(), help="Training data (JSONL, CSV or Parquet).")
@click.option("--eval", "eval_path", type=click.Path(), help="Data to choose the best epoch on (default: 10% of --train).")
@click.option("--test", "test_path", type=click.Path(), help="Data to report metrics on.")
@click.option("--learner", default="minilm", show_default=True, help="minilm | distilbert | hf:PATH | fast.")
@click.option("--learner-path", type=click.Path(), help="Weights folder for --learner distilbert.")
@click.option("--out", required=True, type=click.Path(), help="Folder for metrics.json and the model (safetensors).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", type=int)
@click.option("--lr", type=float)
@click.option("--batch-size", type=int)
@click.option("--max-length", type=int)
@click.option("-q", "--quiet", is_flag=True)
@click.option("-v", "--verbose", is_flag=True)
def train(task_name, train_path, eval_path, test_path, learner, learner_path, out, seed, epochs, lr, batch_size,
          max_length, quiet, verbose):
    """Train and evaluate a learner on any data set, e.g. the gold-data baseline.

    \b
    Example:
      s3synth train --task rte --train rte/train.jsonl --test rte/validation.jsonl --out runs/rte-gold
    """
    from .progress import set_quiet

    set_quiet(quiet)

    def go():
        import time
        from pathlib import Path

        from .data import load_examples, stratified_split
        from .io import write_json
        from .learners import make_learner
        from .learners.base import TrainConfig
        from .tasks import load_task

        task = load_task(task_name)
        tr = load_examples(train_path, task, id_prefix="train")
        ev = load_examples(eval_path, task, id_prefix="eval") if eval_path else None
        te = load_examples(test_path, task, id_prefix="test") if test_path else None
        if ev is None:
            tr, ev = stratified_split(tr, 0.1, seed)
        settings = {"seed": seed, **_learner_settings(epochs, lr, batch_size, max_length)}
        lrn = make_learner(learner, task, TrainConfig.from_dict(settings), model_path=learner_path)
        lrn.check()
        t = time.time()
        history = lrn.fit(tr, ev)
        res = {"task": task.name, "learner": learner, "train_size": len(tr), "history": history,
               "eval": lrn.evaluate(ev) if ev else None, "test": lrn.evaluate(te) if te else None,
               "seconds": round(time.time() - t, 2)}
        lrn.save(Path(out) / "model")
        write_json(Path(out) / "metrics.json", res)
        hm = "f1" if task.kind == "qa" else "accuracy"
        for name in ("eval", "test"):
            if res[name]:
                extra = "" if task.kind == "qa" else "  predicted: " + "  ".join(
                    f"{k} {100 * v:.1f}%" for k, v in res[name]["pred_share"].items())
                click.echo(f"{name}: {hm} {_fmt(res[name][hm])}" +
                           (f", exact match {_fmt(res[name]['exact_match'])}" if task.kind == "qa" else "") + extra)
        click.echo(f"model and metrics: {out}")

    _guard(go, verbose)


@cli.command(context_settings=CONTEXT)
@run_options()
@click.option("--methods", default="s3,zerogen,goldgen,seed-only,gold", show_default=True,
              help="Comma-separated methods to compare (s3 always runs: it sizes the baselines).")
@click.option("--seeds", "n_seeds", default=3, show_default=True, type=int,
              help="Seeds per method: --seed, --seed+1, ...")
def bench(methods, n_seeds, **o):
    """Compare S3 with the paper's baselines on one task: the same LLM, learner, gold eval, test set and
    one shared LLM cache. Prints a table in the layout of the paper's Table 2 (mean ± std over seeds,
    sizes, LLM requests and tokens) and writes DIR/bench.json, DIR/bench.md and the report (DIR/report.html,
    report.md: the table, each seed, and S3's difference to each baseline against the seed spread). Resumable.

    \b
    Example:
      s3synth bench --task qnli --gold-eval qnli/eval.jsonl --test qnli/test.jsonl --learner fast \\
                    --seed-size 100 --seeds 3 --out runs/bench-qnli
    """
    from .progress import set_quiet

    set_quiet(o["quiet"])

    def go():
        from .bench import run_bench

        if n_seeds < 1:
            raise S3Error(f"--seeds {n_seeds}: must be >= 1")
        cfg = config_from_options(o)
        res = run_bench(cfg, [m.strip() for m in methods.split(",") if m.strip()],
                        [cfg.seed + i for i in range(n_seeds)], o["out"])
        from pathlib import Path
        click.echo((Path(o["out"]) / "bench.md").read_text(encoding="utf-8").rstrip())
        click.echo(f"bench directory: {o['out']} ({len(res['runs'])} runs)")

    _guard(go, o["verbose"])


@cli.command(context_settings=CONTEXT)
def tasks():
    """List the built-in tasks (a user task is a YAML/TOML file of the same form)."""
    from .tasks import builtin_tasks, load_task

    for name in builtin_tasks():
        t = load_task(name)
        labels = ", ".join(f"{lab.name} ('{lab.word}')" for lab in t.labels) or "extractive span"
        click.echo(f"{name:<16} {t.kind:<7} labels: {labels}")
        click.echo(f"{'':<16} {t.description}")


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--no-embed", is_flag=True, help="No MiniLM sentence embeddings: faster, but no cosine figures.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def report(run_dir, no_embed, verbose):
    """Write RUN_DIR/report.html (one self-contained file with figures), report.md and dataset_card.md.
    For a bench directory (the --out of `s3synth bench`): report.html and report.md comparing its methods.

    \b
    Example:
      s3synth report runs/demo      # then open runs/demo/report.html in a browser
    """
    def go():
        from .report import write_report

        out = write_report(run_dir, embed=None if no_embed else "minilm")
        for p in out.values():
            click.echo(str(p))

    _guard(go, verbose)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", default="jsonl", show_default=True, type=click.Choice(["jsonl", "parquet", "hf"]),
              help="hf: a Hugging Face `datasets` dataset on disk (load it with datasets.load_from_disk).")
@click.option("--out", type=click.Path(), help="Output file (jsonl, parquet) or folder (hf); default RUN_DIR/export/.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def export(run_dir, fmt, out, verbose):
    """Export a finished run's synthetic set with provenance columns (stage, round, source_id).

    \b
    Example:
      s3synth export runs/demo --format parquet --out demo.parquet
    """
    def go():
        from .export import export_run

        where, n = export_run(run_dir, fmt, out)
        click.echo(f"{n} rows -> {where}")

    _guard(go, verbose)


def _guard(fn, verbose: bool) -> None:
    """Run `fn`, turning known errors into one-line messages and exit codes."""
    try:
        fn()
    except BudgetExceeded as e:
        click.echo(f"s3synth: stopped: {e}", err=True)
        sys.exit(e.exit_code)
    except S3Error as e:
        if verbose:
            traceback.print_exc()
        click.echo(f"s3synth: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("s3synth: interrupted; run the same command again to resume", err=True)
        sys.exit(130)


def main() -> None:
    cli(prog_name="s3synth")


if __name__ == "__main__":
    main()
