"""The `s3synth` command line. Status and progress go to stderr, results to stdout.

Exit codes: 0 done, 1 unexpected error (a bug: please report it with -v output), 2 bad input or
setting (the message says what to fix), 3 a token or cost budget was reached (everything is saved;
re-run with a larger budget to go on), 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (re-run the
same command to resume: the first signal lets the LLM requests in flight finish and saves their answers,
see s3synth.stop).
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from .config import EXPORT_FORMATS, METHODS, RunConfig
from .errors import BudgetExceeded, S3Error
from .serve.onnx_export import DEFAULT_OUT as ONNX_DEFAULT_OUT
from .stop import Terminated, handling_signals
from .tasks import KINDS

# Hub models are fetched by s3synth.hub only (before a run writes anything; --offline or HF_HUB_OFFLINE=1:
# the cache only); every loader then reads a local folder with local_files_only=True.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="s3synth")
def cli():
    """Synthesize a training set with an LLM by extrapolating a small model's errors (S3).

    \b
    Your own task, from a CSV (columns body, priority) to a model:
      s3synth new-task urgency --kind single --labels low,medium,high \\
          --describe "how urgent a support ticket is" --data tickets.csv \\
          --columns text=body,label=priority --out urgency.yaml
      s3synth check-task urgency.yaml --gold-eval tickets.csv
      s3synth run --task urgency.yaml --gold-eval tickets.csv --out runs/urgency

    \b
    A built-in task (offline, embedded models):
      s3synth tasks
      s3synth run --task rte --gold-eval gold.jsonl --test test.jsonl --out runs/rte
    """


def _fmt(x):
    return "-" if x is None else f"{100 * x:.1f}"


def print_result(result: dict, task) -> None:
    hm = result["headline_metric"]
    real = result.get("real", 0)
    gold_part = f"{real} real examples (the gold eval's mining part)"
    if result["seed_size"] or result["added"] or not real:
        head = (f"task {result['task']}: seed {result['seed_size']} + added {result['added']} synthetic examples"
                + (f"; the final model also trained on {gold_part}" if real else ""))
    else:       # method gold: no synthetic data
        head = f"task {result['task']}: no synthetic examples; the final model trained on {gold_part}"
    lines = [head,
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


# Older flags kept as aliases of backend and learner options (scripts keep working): flag -> (option, type, help)
LLM_ALIASES = {
    "base_url": ("base_url", str, "openai: server URL, e.g. http://localhost:8000/v1 (-o base_url=URL)."),
    "api_key_env": ("api_key_env", str, "openai: NAME of the environment variable holding the API key "
                                        "(default OPENAI_API_KEY)."),
    "concurrency": ("concurrency", int, "openai: requests in flight (default 8)."),
    "llm_mode": ("mode", str, "openai: chat or completions endpoint (-o mode=...)."),
    "llm_timeout": ("timeout", float, "openai: seconds to wait for one answer before retrying (default 60)."),
    "embedded_weights": ("weights", str, "embedded: q8_0 (default; converted once, cached) or original (the "
                                         "packaged Q4_1 file)."),
    "llm_revision": ("revision", str, ("transformers/vllm: Hub revision (branch, tag or commit sha) of a generator "
                                       "named by its Hub name (-o revision=REV); default: the main branch.")),
}
LEARNER_ALIASES = {
    "epochs": ("epochs", int, "Learner epochs (default 6; --learner-option epochs=N)."),
    "lr": ("lr", float, "Learner peak learning rate (default 5e-5)."),
    "batch_size": ("batch_size", int, "Learner batch size (default 8)."),
    "max_length": ("max_length", int, "Learner tokens per input (default: the task's)."),
    "revision": ("revision", str, ("Hub revision (branch, tag or commit sha) of the learner's encoder when it is "
                                   "named by its Hub name (hf:NAME, distilbert); --learner-option revision=REV. "
                                   "The commit used is recorded in manifest.json.")),
}
CLICK_TYPES = {int: int, float: float, str: str}


def _field_type(tp) -> type:
    import typing

    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _config_option_list(out_required: bool) -> list:
    """Click options generated from RunConfig's fields (help, choices and defaults live there), then
    --out, the plugin options and the older aliases."""
    import typing
    from dataclasses import MISSING, fields

    from .config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    out = []
    for f in fields(RunConfig):
        md = f.metadata
        if not md.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        if md.get("flag"):
            out.append(click.option(flag, f.name, is_flag=True, default=None, help=md["help"]))
            continue
        tp = _field_type(hints[f.name])
        ctype = click.Choice(md["choices"]) if md.get("choices") else (
            click.Path() if md.get("path") else CLICK_TYPES.get(tp, str))
        default = f.default if f.default is not MISSING else None
        text = md["help"] + (f"  [default: {default}]" if default is not None else "")
        out.append(click.option(flag, f.name, type=ctype, default=None, required=bool(md.get("required")), help=text,
                                metavar=md.get("metavar")))
    out += [
        click.option("--out", required=out_required, type=click.Path(),
                     help="Run directory; re-run the same command to resume."),
        click.option("-o", "--llm-option", "llm_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the LLM backend (repeatable), e.g. -o rpm=60; `s3synth plugins` lists them."),
        click.option("--learner-option", "learner_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the learner (repeatable), e.g. --learner-option epochs=4."),
        click.option("--executor-option", "executor_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the executor (repeatable), e.g. --executor-option actors=2; "
                          "`s3synth plugins` lists them."),
        click.option("--no-cache", is_flag=True, help="Do not read or write the LLM answer cache (--cache-mode off)."),
        click.option("--cache-only", is_flag=True,
                     help="Fail instead of calling the LLM for an answer not in the cache (--cache-mode only)."),
    ]
    for name, (_, tp, text) in {**LLM_ALIASES, **LEARNER_ALIASES}.items():
        out.append(click.option("--" + name.replace("_", "-"), name, type=CLICK_TYPES[tp], default=None, help=text))
    out += [click.option("-q", "--quiet", is_flag=True, help="No progress bars or status lines."),
            click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")]
    return out


def run_options(out_required: bool = True):
    """Decorator: the options of `run`, shared with `estimate` (which does not need --out) and `bench`."""
    def deco(f):
        for opt in reversed(_config_option_list(out_required)):
            f = opt(f)
        return f
    return deco


def _plugin_options(o: dict, aliases: dict, flag: str, cls, what: str) -> dict:
    """A plugin's options from the command line: the older alias flags in `o` first, then `flag`'s KEY=VALUE
    items (click's parameter of that name, e.g. "llm_option" for --llm-option) on top. An alias the plugin (`cls`) does not take is dropped with a note naming `what`."""
    from .plugins import option_names, parse_kv
    from .progress import info

    known = option_names(cls.Options)
    out = {}
    for name, (key, _, _) in aliases.items():
        if o.get(name) is None:
            continue
        if key not in known:
            info(f"note: --{name.replace('_', '-')} does not apply to {what}; ignored")
            continue
        out[key] = o[name]
    out.update(parse_kv(o.get(flag.lstrip("-").replace("-", "_")), flag))
    return out


def config_from_options(o: dict):
    """The RunConfig for the `run` options `o`: options named like a RunConfig field go straight in, only
    when given (RunConfig holds the defaults); aliases become plugin options, checked here."""
    from dataclasses import fields

    from .config import RunConfig
    from .learners import learner_class, learner_options
    from .llm import backend_class
    from .llm.executor import executor_class
    from .plugins import parse_options

    if sum(bool(o.get(k)) for k in ("cache_only", "no_cache", "cache_mode")) > 1:
        raise S3Error("--no-cache, --cache-only and --cache-mode exclude each other")
    kw = {f.name: o[f.name] for f in fields(RunConfig) if o.get(f.name) is not None}
    if o.get("no_cache"):
        kw["cache_mode"] = "off"
    if o.get("cache_only"):
        kw["cache_mode"] = "only"
    defaults = RunConfig.__dataclass_fields__
    backend = (kw.get("llm") or defaults["llm"].default).partition(":")[0]
    kind = (kw.get("learner") or defaults["learner"].default).partition(":")[0]
    llm_cls, learner_cls = backend_class(backend), learner_class(kind)
    kw["llm_options"] = _plugin_options(o, LLM_ALIASES, "--llm-option", llm_cls, f"the {backend} backend")
    kw["learner_options"] = _plugin_options(o, LEARNER_ALIASES, "--learner-option", learner_cls,
                                            f"the {kind} learner")
    ex_name = kw.get("executor") or defaults["executor"].default
    ex_cls = executor_class(ex_name)
    kw["executor_options"] = _plugin_options(o, {}, "--executor-option", ex_cls, f"the {ex_name} executor")
    cfg = RunConfig(**kw)
    # unknown or bad plugin options: one line, exit 2, before anything runs
    parse_options(llm_cls.Options, cfg.llm_options, f"--llm-option for the {backend} backend")
    parse_options(ex_cls.Options, {**cfg.executor_options, **({"address": cfg.ray_address} if cfg.ray_address else {})},
                  f"--executor-option for the {ex_name} executor")
    learner_options(learner_cls, cfg.learner_options, cfg.seed, f"--learner-option for the {kind} learner")
    return cfg


def _write_report(out, embed="minilm") -> None:
    """The report of a finished run; a failure here only warns, on stderr even with --quiet (the run is done)."""
    from .report import write_report

    try:
        write_report(out, embed=embed)
    except Exception as e:  # the report is a by-product: never fail a finished run for it
        click.echo(f"s3synth: warning: no report written ({type(e).__name__}: {e}); try `s3synth report {out}`",
                   err=True)


@cli.command(context_settings=CONTEXT)
@run_options()
def run(**o):
    """Run S3: seed synthesis, then train -> mine errors -> extrapolate, then a final model (by default
    trained on the synthetic data plus the gold eval's mining part; --final-train synthetic: the paper's).

    \b
    Example (the README's demo, offline):
      s3synth run --task imdb --gold-eval ../shared/data/s3_release/imdb_round1.jsonl --max-gold-eval 300 \\
                  --test ../shared/data/s3_release/imdb_round2.jsonl --max-test 500 --seed-size 100 \\
                  --final-train synthetic --out runs/demo
    Your own data with its own column names (a CSV with `body` and `priority`; final/train.jsonl and
    `s3synth export` then use the task's field names, so that they read back as the task's data):
      s3synth run --task tickets.yaml --gold-eval tickets.csv --columns text=body,label=priority --out runs/t
    A Hugging Face Hub dataset by name, hf:NAME[:CONFIG][:SPLIT] (read with the datasets library into the
    Hugging Face cache; the commit, split and rows are recorded in manifest.json; --offline: the cache only):
      s3synth run --task qnli --gold-eval hf:nyu-mll/glue:qnli:validation --max-gold-eval 300 --out runs/qnli
    Your own encoder by its Hugging Face Hub name (downloaded once; the commit is recorded in manifest.json):
      s3synth run --task rte --gold-eval gold.jsonl --learner hf:microsoft/deberta-v3-small --revision main \\
                  --out runs/rte-deberta
    On a Ray cluster (LLM requests as Ray Data jobs; the same results):
      s3synth run ... --executor ray --ray-address auto --executor-option actors=4
    Re-running the same command on a finished directory prints its results and does no new work;
    on an interrupted one it resumes, taking every LLM answer it already has from the cache.
    Ctrl-C (or SIGTERM) sends no new LLM request and waits up to 30 s for those in flight, saving their
    answers (exit 130, or 143); a second Ctrl-C stops at once.
    Budgets (--max-tokens, --max-cost) stop the run with exit code 3, everything saved; the same
    command with a larger budget goes on from there.

    \b
    Half price through the providers' batch APIs (answers within 24 h; a killed run polls its batches again):
      s3synth run --task rte --gold-eval gold.jsonl --llm openai:gpt-4o-mini --batch --out runs/rte
      ANTHROPIC_API_KEY=... s3synth run --task rte --gold-eval gold.jsonl --llm anthropic:claude-haiku-4-5 \\
                  --batch --batch-fallback online --max-cost 5 --price-in 1 --price-out 5 --out runs/rte-claude

    \b
    Fewer prompt tokens per seed example: --per-call 5 (five examples per request), or for pair/QA
    tasks --per-context 2 (one per label for one premise), e.g.
      s3synth run --task qnli --gold-eval eval.jsonl --llm openai:gpt-4o-mini --per-context 2 --out runs/q
    """
    from .progress import set_quiet

    set_quiet(o["quiet"])

    def go():
        from .method import S3
        from .tasks import load_task

        cfg = config_from_options(o)
        result = S3(cfg).run(o["out"])
        _write_report(o["out"])
        print_result(result, load_task(cfg.task))

    _guard(go, o["verbose"])


@cli.command(context_settings=CONTEXT)
@run_options(out_required=False)
@click.option("--assume-error-rate", default=0.2, show_default=True, type=click.FloatRange(0, 1),
              help="Share of mining examples assumed misclassified per round, for the expected figure (the "
                   "'at most' figure takes every one).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
def estimate(assume_error_rate, as_json, **o):
    """Estimate the LLM calls, tokens and money of `run` with the same arguments, per stage: the expected
    figure (at --assume-error-rate) and a bound on the calls and completion tokens ("at most": every mining
    example an error in every round, with the --balance fill, every answer rejected while it may be asked again).
    --max-tokens and --max-cost are checked against the bound.

    Builds the real prompts but calls no LLM and writes nothing (--out may be left out).
    Completion tokens count every call at the stage's max_tokens.

    \b
    Example:
      s3synth estimate --task rte --gold-eval gold.jsonl --llm openai:gpt-4o-mini --price-in 0.15 --price-out 0.6
      s3synth estimate ... --price-in 0.15 --price-out 0.6 --batch       # at the batch price (--batch-discount)
    """
    from .progress import set_quiet

    set_quiet(o["quiet"])

    def go():
        import json

        from .method.estimate import estimate_run

        est = estimate_run(config_from_options(o), error_rate=assume_error_rate)
        click.echo(json.dumps(est.to_dict(), indent=2) if as_json else est.table())

    _guard(go, o["verbose"])


@cli.command(context_settings=CONTEXT)
@click.option("--task", "task_name", required=True, help="Built-in task or a task YAML/TOML file.")
@click.option("--train", "train_path", required=True, type=click.Path(),
              help="Training data: a JSONL, CSV or Parquet file, or a Hugging Face Hub dataset "
                   "hf:NAME[:CONFIG][:SPLIT] (e.g. hf:stanfordnlp/imdb::train).")
@click.option("--eval", "eval_path", type=click.Path(),
              help="Data to choose the best epoch on (default: 10% of --train); a file or hf:NAME[:CONFIG][:SPLIT].")
@click.option("--test", "test_path", type=click.Path(),
              help="Data to report metrics on; a file or hf:NAME[:CONFIG][:SPLIT].")
@click.option("--data-revision", help=RunConfig.__dataclass_fields__["data_revision"].metadata["help"])
@click.option("--columns", metavar=RunConfig.__dataclass_fields__["columns"].metadata["metavar"],
              help=RunConfig.__dataclass_fields__["columns"].metadata["help"])
@click.option("--learner", default="minilm", show_default=True,
              help="minilm | distilbert | hf:HUB_NAME | hf:DIR | fast (a Hub name is downloaded once).")
@click.option("--learner-path", type=click.Path(), help="Weights folder (or Hub name) for --learner distilbert.")
@click.option("--revision", help=LEARNER_ALIASES["revision"][2])
@click.option("--offline", is_flag=True,
              help="Hub models and hf: datasets from the local Hugging Face cache only (as HF_HUB_OFFLINE=1).")
@click.option("--learner-option", "learner_option", multiple=True, metavar="KEY=VALUE",
              help="An option of the learner (repeatable), e.g. --learner-option epochs=4.")
@click.option("--out", required=True, type=click.Path(),
              help="Folder for metrics.json, the model (model/) and the predictions "
                   "(eval/predictions.jsonl, test/predictions.jsonl).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", type=int, help=LEARNER_ALIASES["epochs"][2])
@click.option("--lr", type=float, help=LEARNER_ALIASES["lr"][2])
@click.option("--batch-size", type=int, help=LEARNER_ALIASES["batch_size"][2])
@click.option("--max-length", type=int, help=LEARNER_ALIASES["max_length"][2])
@click.option("-q", "--quiet", is_flag=True)
@click.option("-v", "--verbose", is_flag=True)
def train(task_name, train_path, eval_path, test_path, columns, data_revision, learner, learner_path, learner_option,
          out, seed, offline, quiet, verbose, **aliases):
    """Train and evaluate a learner on any data set, e.g. the gold-data baseline.

    Writes OUT/metrics.json, the model (OUT/model/) and, as `run` does, one row per example: id, split,
    gold (QA: every gold answer), prediction, confidence, correct, text - OUT/eval/predictions.jsonl for
    --eval (or the 10% of --train it holds out), OUT/test/predictions.jsonl for --test.

    \b
    Example:
      s3synth train --task rte --train rte/train.jsonl --test rte/validation.jsonl --out runs/rte-gold
      s3synth train --task rte --train rte/train.jsonl --learner hf:microsoft/deberta-v3-small --out runs/rte-deberta
      s3synth train --task imdb --train hf:stanfordnlp/imdb::train --test hf:stanfordnlp/imdb::test --out runs/imdb

    \b
    Your own column names (for every file given): --columns text=body,label=priority. A run's data
    (final/train.jsonl, `s3synth export`) has the task's field names and reads back as it is:
      s3synth train --task tickets.yaml --train runs/tickets/final/train.jsonl --test tickets_test.csv \\
                    --out runs/tickets-synthetic
    """
    from .progress import set_quiet

    set_quiet(quiet)

    def go():
        import time
        from pathlib import Path

        from .data import load_examples, parse_columns, source_record, stratified_split
        from .datasets_hub import check_revision
        from .hub import offline_mode
        from .io import write_json, write_jsonl
        from .learners import learner_class, make_learner
        from .learners.distributed import is_main_process
        from .method.loop import prediction_rows
        from .metrics import evaluate
        from .tasks import load_task

        task = load_task(task_name)
        kind = learner.partition(":")[0]
        options = _plugin_options({**aliases, "learner_option": learner_option}, LEARNER_ALIASES,
                                  "--learner-option", learner_class(kind), f"the {kind} learner")
        with offline_mode(offline):
            lrn = make_learner(learner, task, options, model_path=learner_path, seed=seed)
        cols = parse_columns(columns)
        given = {"train": train_path, "eval": eval_path, "test": test_path}
        check_revision(data_revision, {f"--{name}": p for name, p in given.items()})
        with offline_mode(offline):     # hf: data: downloaded once into the Hugging Face cache, or found there
            tr, ev, te = (load_examples(p, task, id_prefix=name, columns=cols, revision=data_revision) if p else None
                          for name, p in given.items())
            inputs = {name: source_record(p, revision=data_revision) for name, p in given.items() if p}
        if ev is None:
            tr, ev = stratified_split(tr, 0.1, seed)
        lrn.check()
        t = time.time()
        history = lrn.fit(tr, ev)
        if not is_main_process():   # torchrun / accelerate launch: the other ranks trained; rank 0 reports
            return
        source = getattr(lrn, "model_source", None)
        parts = {name: (exs, lrn.predict(exs)) for name, exs in (("eval", ev), ("test", te)) if exs}
        res = {"task": task.name, "learner": learner, "base_model": source.to_dict() if source else None,
               "inputs": inputs, "train_size": len(tr), "history": history,
               **{name: evaluate(task, *parts[name]) if name in parts else None for name in ("eval", "test")},
               "seconds": round(time.time() - t, 2)}
        lrn.save(Path(out) / "model")
        for name, (exs, preds) in parts.items():     # as a run's: one row per example, QA with every gold answer
            write_jsonl(Path(out) / name / "predictions.jsonl",
                        prediction_rows(task, exs, preds, [name] * len(exs)))
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
              help="Comma-separated methods to compare (s3 always runs: it sizes the baselines); one of "
                   + ", ".join(METHODS) + "; each may carry run settings of its own as NAME[key=value,...], "
                   "e.g. 's3+gold[clean_labels=drop]' or 's3[learner=fast]'.")
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
      s3synth bench ... --test-seed 0 \\
                    --methods 'gold,s3,s3+gold,zerogen+gold,s3+gold[clean_labels=drop],s3+gold[mine=margin]'
    """
    from .progress import set_quiet

    set_quiet(o["quiet"])

    def go():
        from .method.bench import run_bench

        if n_seeds < 1:
            raise S3Error(f"--seeds {n_seeds}: must be >= 1")
        cfg = config_from_options(o)
        from .method.bench import split_methods

        res = run_bench(cfg, split_methods(methods),
                        [cfg.seed + i for i in range(n_seeds)], o["out"])
        from pathlib import Path
        click.echo((Path(o["out"]) / "bench.md").read_text(encoding="utf-8").rstrip())
        click.echo(f"bench directory: {o['out']} ({len(res['runs'])} runs)")

    _guard(go, o["verbose"])


@cli.command(context_settings=CONTEXT)
def tasks():
    """List the built-in tasks (a user task is a YAML/TOML file of the same form; `s3synth new-task` writes one,
    `s3synth check-task` shows its prompts)."""
    from .tasks import builtin_tasks, load_task

    for name in builtin_tasks():
        t = load_task(name)
        labels = ", ".join(f"{lab.name} ('{lab.word}')" for lab in t.labels) or "extractive span"
        click.echo(f"{name:<16} {t.kind:<7} labels: {labels}")
        click.echo(f"{'':<16} {t.description}")


@cli.command("new-task", context_settings=CONTEXT)
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(KINDS),
              help="single: a text and its label; pair: a text, its context (premise) and their label; qa: a "
                   "question and its answer span in a context.")
@click.option("--labels", metavar="NAME[=WORD],...",
              help="The labels as your data writes them, in id order (ids 0, 1, ...); =WORD words one differently "
                   "in the prompts, e.g. low=not urgent. Not for qa tasks.")
@click.option("--describe", required=True, help="What the labels say, in a few words, e.g. \"how urgent a support "
                                               "ticket is\"; the prompts repeat it.")
@click.option("--item", help="What one text is, in the prompts (default: text; pair: sentence; qa: question), "
                             "e.g. \"support ticket\".")
@click.option("--data", type=click.Path(), help="Real labelled examples of the task (JSONL, CSV, Parquet or "
                                                "hf:NAME[:CONFIG][:SPLIT]): checked against it, and the source of "
                                                "the error-extrapolation demonstrations.")
@click.option("--columns", metavar="FIELD=COLUMN,...",
              help="Your data's column for each field, written into the task's `fields`, e.g. "
                   "text=body,label=priority.")
@click.option("--out", type=click.Path(), help="The task file to write (.yaml); default NAME.yaml.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the demonstrations' draw.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def new_task(name, kind, labels, describe, item, data, columns, out, force, seed, verbose):
    """Write a complete task file: fields, label words, the paper-style template of every stage of its kind
    (rationales for single-text tasks), few-shot forms, and a comment on each part. With --data, its
    error-extrapolation demonstrations are pairs of your examples of one label, marked REVIEW in the file.

    \b
    Example (a CSV with columns `body` and `priority`):
      s3synth new-task urgency --kind single --labels low,medium,high --describe "how urgent a support ticket is" \\
                       --item "support ticket" --data tickets.csv --columns text=body,label=priority \\
                       --out tasks/urgency.yaml
      s3synth check-task tasks/urgency.yaml --gold-eval tickets.csv      # the prompts, and the data checked
      s3synth run --task tasks/urgency.yaml --gold-eval tickets.csv --out runs/urgency
    """
    def go():
        from .author.write import new_task as write_task, task_spec

        spec = task_spec(name, kind, labels, describe, item=item, columns=columns)
        res = write_task(spec, out or f"{name}.yaml", data=data, force=force, seed=seed)
        click.echo(f"wrote {res['path']}: a {kind} task" + (f", labels {labels}" if labels else "")
                   + (f"; {res['pairs']} extrapolation demonstrations from {data}, marked REVIEW"
                      if res["pairs"] else ""))
        if res["missing_labels"]:
            click.echo(f"note: {data} has no example of label {', '.join(res['missing_labels'])}")
        click.echo(f"next: s3synth check-task {res['path']} --gold-eval {data or 'DATA'}")

    _guard(go, verbose)


@cli.command("check-task", context_settings=CONTEXT)
@click.argument("task_file")
@click.option("--gold-eval", "gold_eval", required=True, type=click.Path(),
              help="Real labelled examples (JSONL, CSV, Parquet or hf:NAME[:CONFIG][:SPLIT]), as for `run`.")
@click.option("--columns", metavar=RunConfig.__dataclass_fields__["columns"].metadata["metavar"],
              help=RunConfig.__dataclass_fields__["columns"].metadata["help"])
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the demonstrations' draw, as for `run`.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def check_task(task_file, gold_eval, columns, seed, verbose):
    """Check a task (a file, or a built-in task's name) against real data and show what the LLM would be
    asked, without calling it: every row checked (one line per problem on stderr, exit 2 if any), what each
    stage sends per --prompt-style, with the stages that fall back to another style or are skipped, and one
    prompt of every stage and style built from your examples.

    \b
    Example:
      s3synth check-task tasks/urgency.yaml --gold-eval tickets.csv
      s3synth check-task imdb --gold-eval imdb.jsonl | less
    """
    def go():
        from .author.check import check_task as check

        chk = check(task_file, gold_eval, columns=columns, seed=seed)
        click.echo(chk.report())
        for line in chk.problems:
            click.echo(f"s3synth: error: {line}", err=True)
        if chk.problems:
            sys.exit(2)

    _guard(go, verbose)


@cli.command(context_settings=CONTEXT)
def plugins():
    """List the registered LLM backends, learners and executors with their options
    (-o / --learner-option / --executor-option KEY=VALUE).

    \b
    Example:
      s3synth plugins
      s3synth run ... --llm openai:gpt-4o-mini -o rpm=500 -o tpm=200000 --learner-option epochs=4
      s3synth run ... --executor ray --ray-address auto --executor-option actors=4
    """
    from .plugins import GROUPS, describe_options, load_plugin, plugin_names

    def go():
        for group in ("llms", "learners", "executors"):
            click.echo(f"{GROUPS[group]}s (entry-point group s3synth.{group}):")
            for name in plugin_names(group):
                try:
                    cls = load_plugin(group, name)
                except S3Error as e:
                    click.echo(f"  {name:<14} not loadable: {e}")
                    continue
                doc = (cls.__doc__ or "").strip().splitlines()
                click.echo(f"  {name:<14} {doc[0] if doc else ''}")
                for line in describe_options(cls.Options):
                    click.echo(f"  {'':<14}   {line}")
    _guard(go, False)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--no-embed", is_flag=True, help="No MiniLM sentence embeddings: faster, but no cosine figures.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def report(run_dir, no_embed, verbose):
    """Write RUN_DIR/report.html (one self-contained file with figures), report.md, dataset_card.md and the
    model card final/model/README.md.
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
@click.option("--format", "fmt", default="jsonl", show_default=True, type=click.Choice(EXPORT_FORMATS),
              help="hf: a Hugging Face `datasets` dataset on disk (load it with datasets.load_from_disk).")
@click.option("--out", type=click.Path(), help="Output file (jsonl, parquet) or folder (hf); default RUN_DIR/export/.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def export(run_dir, fmt, out, verbose):
    """Export a finished run's synthetic set with provenance columns (stage, round, source_id), and a dataset
    card (README.md with the Hugging Face metadata header) beside it.

    \b
    Example:
      s3synth export runs/demo --format parquet --out demo.parquet
    """
    def go():
        from .report.export import export_run

        where, n = export_run(run_dir, fmt, out)
        click.echo(f"{n} rows -> {where}")
        from .report.export import card_path
        from .report.runview import load_run

        click.echo(f"dataset card -> {card_path(load_run(run_dir), fmt, where)}")

    _guard(go, verbose)


@cli.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--repo-id", required=True, help="USER/NAME (or ORG/NAME): the model repo; the dataset repo of the "
                                               "same name unless --dataset-repo-id.")
@click.option("--dataset-repo-id", help="USER/NAME of the dataset repo (default: --repo-id, as a dataset repo).")
@click.option("--what", type=click.Choice(["both", "model", "dataset"]), default="both", show_default=True,
              help="Push the model, the synthetic set, or both.")
@click.option("--private", is_flag=True, help="Create missing repos private (else: the namespace's default "
                                              "visibility); an existing public repo is refused.")
@click.option("--message", help="Commit message (default: names the task, run, method and LLM).")
@click.option("--dry-run", is_flag=True, help="List the repos and files that would be uploaded; send nothing.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def push(run_dir, repo_id, dataset_repo_id, what, private, message, dry_run, verbose):
    """Upload a finished run to the Hugging Face Hub: the final model with its model card to the model repo
    REPO_ID, and the synthetic set (data/train.parquet) with its dataset card to the dataset repo of the same
    name (huggingface.co/datasets/REPO_ID). Missing repos are created; each push is one commit per repo.
    The token comes from HF_TOKEN or `hf auth login`; it is never written or printed.

    \b
    Example:
      s3synth push runs/rte --repo-id alice/rte-minilm-s3 --private --dry-run    # what would go where
      HF_TOKEN=hf_... s3synth push runs/rte --repo-id alice/rte-minilm-s3 --private
      s3synth push runs/rte --repo-id alice/rte-minilm-s3 --what dataset --dataset-repo-id alice/rte-synthetic
    """
    def go():
        from .report.publish import plan_push
        from .report.publish import push as push_uploads

        uploads = plan_push(run_dir, repo_id, what=what, dataset_repo_id=dataset_repo_id, private=private,
                            message=message)
        if dry_run:
            for up in uploads:
                click.echo("\n".join(up.listing()))
            click.echo("dry run: nothing uploaded")
            return
        for up, url in zip(uploads, push_uploads(uploads)):
            click.echo(f"{up.repo_type} {up.repo_id}: {len(up.files)} files -> {url}")

    _guard(go, verbose)


@cli.command("export-model", context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx"]),
              help="onnx: an ONNX graph for ONNX Runtime, with the tokenizer, label names and predict.py.")
@click.option("--quantize", default="none", show_default=True, type=click.Choice(["none", "int8"]),
              help="int8: also write model.int8.onnx (int8 weights, ONNX Runtime dynamic quantization).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="With --quantize int8: one weight scale per output channel (kept accuracy on the imdb benchmark; "
                   "per-tensor lost 1 point), or one per weight matrix.")
@click.option("--out", type=click.Path(), help=f"Output folder; default: {ONNX_DEFAULT_OUT}.")
@click.option("--force", is_flag=True, help="Replace an earlier export at --out.")
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def export_model(run_dir, fmt, quantize, per_channel, out, force, verbose):
    """Export a finished run's final model (RUN_DIR/final/model; or the --out of `s3synth train`, or a saved
    model folder) for serving on a CPU without torch: model.onnx (+ model.int8.onnx), the tokenizer, the
    label names, predict.py and a README. The fp32 graph is checked against PyTorch before anything is written.

    \b
    Example:
      s3synth export-model runs/demo --format onnx --quantize int8
      python runs/demo/export/onnx/predict.py "A moving, beautifully acted film."
    """
    def go():
        from .serve.onnx_export import export_onnx

        info = export_onnx(run_dir, out, quantize=quantize, force=force, per_channel=per_channel)
        chk = info["check"]
        click.echo(f"fp32 vs PyTorch: max |diff| {chk['fp32']['max_abs_diff']:.1e} on {chk['fp32']['probes']} probes")
        if "int8" in chk:
            click.echo(f"int8 vs fp32: same prediction on {chk['int8']['same_prediction']} of {chk['int8']['probes']} probes")
        sizes = ", ".join(f"{info['files'][k]} {v} MB" for k, v in info["sizes_mb"].items())
        click.echo(f"{sizes} -> {info['out']}")

    _guard(go, verbose)


def _guard(fn, verbose: bool) -> None:
    """Run `fn`, turning known errors into one-line messages and exit codes; Ctrl-C and SIGTERM stop it
    carefully (s3synth.stop: the LLM answers in flight are saved first; a second signal stops at once)."""
    with handling_signals():
        _guarded(fn, verbose)


def _guarded(fn, verbose: bool) -> None:
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
    except OSError as e:
        import errno

        # the environment, not a bug: no space, no permission, a file where a folder should be...
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR,
                           errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST):
            raise
        from .io import write_error

        if verbose:
            traceback.print_exc()
        click.echo(f"s3synth: error: {write_error(e.filename or '(a file)', e, 'cannot use it')}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("s3synth: interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("s3synth: terminated (SIGTERM); everything so far is saved: run the same command again to resume",
                   err=True)
        sys.exit(143)


def main() -> None:
    cli(prog_name="s3synth")


if __name__ == "__main__":
    main()
