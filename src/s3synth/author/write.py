"""Task files written for the user (`s3synth new-task`; `author/check.py` checks them against real data).

`draft_task` writes the YAML of a task of any kind from its label names and a few words on what the labels
say: the fields (your data's columns), the label words, the paper-style template of every stage of its kind
(the rationale stage for single-text tasks), few-shot forms of the built-in tasks' shapes, and a comment on
each part. Given real data, the error-extrapolation demonstrations are pairs of real examples of one label
(pair tasks: of one premise too; QA: of one context and answer), marked for review; where the data has no
such pairs that stage's few-shot form is the short chat form (as imdb's).

Not handled: the wording is generic ("a support ticket labelled high"); labels that read better as words
(`--labels low=not urgent,...`) or prompts in the domain's phrasing are edited by hand, after `check-task`
has shown them.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data import FIELD_NAMES, Example, load_examples, parse_columns
from ..errors import DataError, S3Error
from ..tasks import KINDS, Task, task_from_dict

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DEFAULT_FIELDS = {"single": {"text": "text", "label": "label"},
                  "pair": {"text": "text", "context": "context", "label": "label"},
                  "qa": {"text": "question", "context": "context", "answers": "answers"}}
DEFAULT_ITEM = {"single": "text", "pair": "sentence", "qa": "question"}   # what one example's text is
DEMO_WORDS = 60            # demonstration texts are cut to this many words
DEMO_TARGET = 4            # demonstrations per few-shot prompt, at least (rounded up to whole labels)
DEMO_POOL = 80             # examples per label (and context) compared when pairing extrapolation demonstrations
NEAR_COPY = 0.8            # word overlap from which two examples are too alike to teach "a similar one"

# The wording of each kind's prompts. <a-item>: "a support ticket"; <item>, <Item>; <about>: what the labels say.
WORDING = {
    "single": {
        "rationale_paper": "The label of <a-item> says <about>. Consider {n} reasons that may lead <a-item> to be "
                           "labelled {label_word}.",
        "rationale_list": "The label of <a-item> says <about>. Here are reasons that may lead <a-item> to be "
                          "labelled {label_word}:\n{rationales}",
        "seed_paper": "Now imagine <a-item> that has {rationales}. The label of <a-item> says <about>. Now you "
                      "should write <a-item> labelled {label_word}.",
        "seed_demo": "About the <item>: {rationales}.\nA <item> labelled {label_word}: {text}",
        "seed_query": "About the <item>: {rationales}.\nA <item> labelled {label_word}:",
        "extrapolate_paper": "The label of <a-item> says <about>. Write <a-item> labelled {label_word} similar "
                             "to: \n {text}",
        "extrapolate_demo": "A <item> labelled {label_word}: {text}\nA similar <item>, also labelled "
                            "{label_word}: {new_text}",
        "extrapolate_query": "A <item> labelled {label_word}: {text}\nA similar <item>, also labelled "
                             "{label_word}:",
        "zerogen": "The <item> labelled {label_word} (<about>) is: \"",
    },
    "pair": {
        "seed_paper": "{context} \nThe label of <a-item> about the passage above says <about>. Write <a-item> "
                      "about the passage that is labelled {label_word}:",
        "seed_demo": "Passage: {context}\nA <item> labelled {label_word}: {text}",
        "seed_query": "Passage: {context}\nA <item> labelled {label_word}:",
        "extrapolate_paper": "{context} \nThe label of <a-item> about the passage above says <about>. The "
                             "following <item>: {text} is labelled {label_word}. Now write <a-item> similar to "
                             "the given one that is also labelled {label_word}.",
        "extrapolate_demo": "Passage: {context}\nA <item> labelled {label_word}: {text}\nA similar <item>, also "
                            "labelled {label_word}: {new_text}",
        "extrapolate_query": "Passage: {context}\nA <item> labelled {label_word}: {text}\nA similar <item>, "
                             "also labelled {label_word}:",
        "zerogen": "Passage: \"{context}\"\nA <item> labelled {label_word} (<about>): \"",
    },
    "qa": {     # the paper's AdQA templates
        "seed_paper": "Given a context: {context} \n{answer} is the answer to the following <item>:",
        "seed_demo": "Context: {context}\nAnswer: {answer}\n<Item>: {text}",
        "seed_query": "Context: {context}\nAnswer: {answer}\n<Item>:",
        "extrapolate_paper": "Given a context: {context} \n{answer} is the answer to: {text}.\nA <item> that has "
                             "the same answer in the context is:",
        "extrapolate_demo": "Context: {context}\nAnswer: {answer}\n<Item>: {text}\nAnother <item> with the same "
                            "answer: {new_text}",
        "extrapolate_query": "Context: {context}\nAnswer: {answer}\n<Item>: {text}\nAnother <item> with the same "
                             "answer:",
        "zerogen": "The context is: \"{context}\"\n\"{answer}\" is the answer of the following <item>: \"",
    },
}
# max_tokens, min_words per stage and kind (the built-in tasks' figures)
LIMITS = {"single": {"seed": (80, 5), "extrapolate": (120, 5), "zerogen": (96, 5)},
          "pair": {"seed": (48, 3), "extrapolate": (48, 3), "zerogen": (48, 3)},
          "qa": {"seed": (40, 3), "extrapolate": (40, 3), "zerogen": (40, 3)}}


# ------------------------------------------------------------------ what new-task is told

@dataclass(frozen=True)
class TaskSpec:
    """What `new-task` is told: the task's name and kind, its labels as (name, word) pairs in id order, what the
    labels say (`about`), what one text is (`item`), and the column of the user's data for each field."""

    name: str
    kind: str
    labels: tuple = ()
    about: str = ""
    item: str = ""
    fields: dict = field(default_factory=dict)


def parse_labels(spec: str | None, kind: str) -> tuple:
    """`--labels` as (name, word) pairs: NAME, or NAME=WORD where the prompts should say WORD.

    Example: parse_labels("low=not urgent,high", "single") -> (("low", "not urgent"), ("high", "high"))
    """
    if kind == "qa":
        if spec:
            raise S3Error(f"--labels {spec!r}: a qa task has no labels (its answers are spans of the context); "
                          "drop --labels")
        return ()
    items = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if len(items) < 2:
        raise S3Error(f"--labels {spec or ''!r}: a {kind} task needs at least two labels, as your data writes them, "
                      "e.g. --labels low,medium,high (or NAME=WORD to word one differently in the prompts)")
    out = []
    for it in items:
        name, _, word = (p.strip() for p in it.partition("="))
        if not name:
            raise S3Error(f"--labels {spec!r}: {it!r} has no label name; write NAME or NAME=WORD")
        if name in (n for n, _ in out):
            raise S3Error(f"--labels {spec!r}: label {name!r} is given twice")
        out.append((name, word or name))
    return tuple(out)


def task_spec(name: str, kind: str, labels: str | None, about: str, *, item: str | None = None,
              columns: str | None = None) -> TaskSpec:
    """The TaskSpec of `new-task`'s options, checked (one-line S3Errors naming the option).

    Example: task_spec("urgency", "single", "low,high", "how urgent a support ticket is", item="support ticket",
             columns="text=body,label=priority") -> fields {"text": "body", "label": "priority"}
    """
    if not NAME.match(name or ""):
        raise S3Error(f"task name {name!r}: use letters, digits, '_', '-' or '.' (it names the task in runs and "
                      "reports), e.g. urgency")
    if kind not in KINDS:
        raise S3Error(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
    about = " ".join((about or "").split()).rstrip(".")
    if not about:
        raise S3Error("--describe: say in a few words what the labels say, e.g. --describe \"how urgent a support "
                      "ticket is\"")
    item = " ".join((item or DEFAULT_ITEM[kind]).split())
    if not item:
        raise S3Error("--item: give what one text is, e.g. --item \"support ticket\"")
    fields = dict(DEFAULT_FIELDS[kind])
    allowed = FIELD_NAMES[kind]
    for key, column in parse_columns(columns).items():
        if key not in allowed:
            raise S3Error(f"--columns {key}={column}: {key!r} is not a field of a {kind} task; its fields: "
                          f"{', '.join(allowed)}")
        fields[key] = column
    return TaskSpec(name=name, kind=kind, labels=parse_labels(labels, kind), about=about, item=item, fields=fields)


# ------------------------------------------------------------------ the YAML

def yaml_str(s: str) -> str:
    """`s` as a YAML double-quoted scalar: JSON's escapes (which YAML reads), plus the C1 controls and Unicode
    line separators escaped (which YAML would refuse or fold).

    Example: yaml_str('say "hi"') -> '"say \\"hi\\""'
    """
    out = json.dumps(s, ensure_ascii=False)
    return re.sub(r"[\x7f-\x9f\u2028\u2029]", lambda m: f"\\u{ord(m.group()):04x}", out)


def _flow(d: dict) -> str:
    """Example: {"text": "body"} -> '{text: "body"}'"""
    return "{" + ", ".join(f"{k}: {yaml_str(str(v)) if isinstance(v, str) else v}" for k, v in d.items()) + "}"


def _words(spec: TaskSpec) -> dict:
    """The kind's templates with the item and what the labels say filled in (braces in them escaped)."""
    item = spec.item.replace("{", "{{").replace("}", "}}")
    about = spec.about.replace("{", "{{").replace("}", "}}")
    a_item = ("an " if item[:1].lower() in "aeiou" else "a ") + item
    wording = {**WORDING[spec.kind], "chat_system": "You write one <item> and nothing else."}
    return {k: v.replace("<a-item>", a_item).replace("<Item>", item[:1].upper() + item[1:])
            .replace("<item>", item).replace("<about>", about) for k, v in wording.items()}


def per_prompt(n_labels: int, kind: str) -> int:
    """Demonstrations per few-shot prompt: DEMO_TARGET, rounded up to a whole number per label (QA: 3, as
    adversarial_qa). Example: per_prompt(3, "single") -> 6"""
    return 3 if kind == "qa" else n_labels * math.ceil(DEMO_TARGET / n_labels)


def demo_pairs(spec: TaskSpec, examples: list[Example], seed: int = 0) -> list[tuple[Example, Example]]:
    """Pairs of real examples to show as "an example -> a similar one" in error-extrapolation prompts, the
    labels in turn: two of one label (pair tasks: of one premise as well; QA: of one context and answer), the
    most alike first (`_most_alike`, among up to DEMO_POOL texts of at most DEMO_WORDS words). At most
    `per_prompt` pairs.

    Example: single task, labels low/high, 8 examples -> [(low a, low b), (high c, high d), (low e, low f), ...]
    """
    from ..analysis import normalize_words

    rng = random.Random(f"{seed}:new-task-demos")
    groups: dict = {}
    for ex in examples:
        if spec.kind == "single":
            key = (ex.label,)
        elif spec.kind == "pair":
            key = (ex.label, ex.context)
        else:
            key = ("", ex.context, ex.answer["text"])
        groups.setdefault(key, []).append(ex)
    by_label: dict = {}
    for key, group in groups.items():
        pool = [ex for ex in group if len(ex.text.split()) <= DEMO_WORDS]
        if len(pool) < 2:       # only long texts: the shortest, cut when shown
            pool = sorted(group, key=lambda ex: len(ex.text.split()))[:2]
        pool = rng.sample(pool, min(len(pool), DEMO_POOL))
        by_label.setdefault(key[0], []).extend(_most_alike(pool, normalize_words))
    for pairs in by_label.values():
        pairs.sort(key=lambda p: -p[0])
        pairs[:] = [(a, b) for _, a, b in pairs]
    order = [lab for lab, _ in spec.labels] if spec.kind != "qa" else [""]
    want = per_prompt(len(spec.labels), spec.kind)
    out, i = [], 0
    while len(out) < want and any(len(by_label.get(lab, ())) > i for lab in order):
        for lab in order:
            if len(by_label.get(lab, ())) > i and len(out) < want:
                out.append(by_label[lab][i])
        i += 1
    return out


def _most_alike(pool: list[Example], words) -> list[tuple[float, Example, Example]]:
    """Disjoint pairs of `pool`, most alike first (the Jaccard overlap of their words, near-copies left out):
    (overlap, a, b) triples, taken greedily."""
    sets = [set(words(ex.text)) for ex in pool]
    scored = sorted(((len(sets[i] & sets[j]) / max(len(sets[i] | sets[j]), 1), i, j)
                     for i in range(len(pool)) for j in range(i + 1, len(pool))), key=lambda t: -t[0])
    used, out = set(), []
    for score, i, j in scored:
        if i in used or j in used or score >= NEAR_COPY:
            continue
        used.update((i, j))
        out.append((score, pool[i], pool[j]))
    return out


def draft_task(spec: TaskSpec, examples: list[Example] | None = None, source: str | None = None,
               seed: int = 0) -> str:
    """The YAML text of a complete task for `spec`, with a comment on each part; `examples` (real data, from
    `source`) give the error-extrapolation demonstrations and the learner's max_length.

    Example: draft_task(task_spec("urgency", "single", "low,medium,high", "how urgent a support ticket is"))
             -> "# s3synth task written by `s3synth new-task` ...\\nname: urgency\\nkind: single\\n..."
    """
    from ..method.prompts import answer_window, cut_words

    w, kind, q = _words(spec), spec.kind, yaml_str
    pairs = demo_pairs(spec, examples, seed) if examples else []
    # a single-text task reads 256 tokens where a tenth of the texts pass 90 words (about 128 tokens)
    sizes = sorted(len(ex.text.split()) for ex in examples or ())
    long_texts = bool(sizes) and sizes[int(0.9 * (len(sizes) - 1))] > 90
    max_length = {"single": 256 if long_texts else 128, "pair": 256, "qa": 384}[kind]
    lines = [
        f"# s3synth task written by `s3synth new-task` for: {spec.about}",
        "# Edit anything. `s3synth check-task THIS_FILE --gold-eval DATA` shows what the LLM will be asked (one",
        "# prompt of every stage and style) and checks the file against your data, without calling the LLM.",
        f"name: {q(spec.name)}",
        "# single: a text and its label | pair: a text, its context (premise, passage) and their label |",
        "# qa: a question and its answer, a span of the context",
        f"kind: {kind}",
        f"description: {q(spec.about)}",
        "# The column of your data that holds each part: a JSONL key, CSV header or Parquet column.",
        f"fields: {_flow(spec.fields)}",
    ]
    if spec.labels:
        lines += ["# name: as your data writes it (or its integer id); word: as the prompts say it ({label_word}).",
                  "labels:"]
        lines += [f"  - {_flow({'name': n, 'word': wd, 'id': i})}" for i, (n, wd) in enumerate(spec.labels)]
    lines += ["learner:",
              f"  max_length: {max_length}    # tokens of each input the learner reads (longer ones are cut)"]
    if kind == "single":
        lines += ["rationales:",
                  "  calls_per_label: 12    # rationale prompts sent per label",
                  "  keep: 16               # distinct reasons kept per label (K)",
                  "  per_example: 2         # reasons shown in each seed prompt (k)"]
    lines += [
        "# Each stage's prompts in up to two styles; --prompt-style picks one (auto: fewshot for the embedded",
        "# model, paper for the others), and a stage without that style sends its other one (the run and",
        "# `check-task` say so).",
        "#   paper:   the paper's template (Table 1), sent as one chat message: for capable chat models",
        "#   fewshot: for small models: a plain completion (`demo` once per demonstration, then `query`, which",
        "#            the model completes), or a short chat form (`system` + `user`)",
        "# Placeholders: {text} {context} {answer} {label_word} {rationales} {n} {new_text}; a literal brace is",
        "# written {{ or }}. max_tokens: the longest answer; min_words: shorter answers are rejected; stop: where",
        "# a completion ends.",
        "prompts:",
    ]
    n_demos = per_prompt(len(spec.labels), kind)
    if kind == "single":
        lines += [
            "  # Rationales (Alg. 1 of the paper): the LLM lists reasons for each label; each seed prompt shows",
            "  # `per_example` of them ({rationales}).",
            "  rationale:",
            f"    paper: {q(w['rationale_paper'])}",
            "    fewshot:",
            "      # a numbered list the model continues from \"1.\"; reasons written under `demos` open each",
            "      # label's list, e.g.",
            f"      #   - {{label: {q(spec.labels[0][0])}, rationales: [\"<a reason>\", \"<another reason>\"]}}",
            f"      demo: {q(w['rationale_list'])}",
            f"      query: {q(w['rationale_list'])}",
            "      demos: []",
            "    max_tokens: 160",
            "    min_words: 2",
            "    stop: [\"\\n\\n\"]",
        ]
    tokens, min_words = LIMITS[kind]["seed"]
    lines += [
        "  # Seed: the LLM writes a new example for a label drawn at random"
        + {"single": " (and reasons drawn for it).", "pair": ", for a real context.",
           "qa": ": a question for a real context and answer."}[kind],
        "  seed:",
        f"    paper: {q(w['seed_paper'])}",
        "    fewshot:",
        "      # n_demos real examples of the gold eval (balanced over labels) come before the query",
        f"      demo: {q(w['seed_demo'])}",
        f"      query: {q(w['seed_query'])}",
        f"      n_demos: {n_demos}",
    ]
    if kind == "single":
        lines.append(f"      demo_max_words: {DEMO_WORDS}    # demonstration texts are cut to this many words")
    if kind == "qa":
        lines.append("    context_window: sentence    # the answer's sentence and one on each side")
    lines += [f"    max_tokens: {tokens}", f"    min_words: {min_words}"]
    tokens, min_words = LIMITS[kind]["extrapolate"]
    lines += [
        "  # Error extrapolation: for each gold-eval example the small model gets wrong, a new example like it",
        "  # with the same " + ("answer." if kind == "qa" else "(gold) label" + (" and context." if kind == "pair"
                                                                                   else ".")),
        "  extrapolate:",
        f"    paper: {q(w['extrapolate_paper'])}",
        "    fewshot:",
    ]
    if pairs:
        lines += [
            f"      demo: {q(w['extrapolate_demo'])}",
            f"      query: {q(w['extrapolate_query'])}",
        ]
        if kind == "single":
            lines.append(f"      demo_max_words: {DEMO_WORDS}    # the misclassified example is cut to this many "
                         "words")
        lines += [
            f"      # REVIEW these demonstrations, drawn from {source} (ids: its id column, else FILE-LINE):",
            "      # each pairs two real examples of "
            + {"single": "one label", "pair": "one label and premise", "qa": "one context and answer"}[kind]
            + ", the most alike first, the second standing in",
            "      # for \"a similar one\". Keep the pairs that are truly alike; rewrite new_text or drop the others.",
            "      demos:",
        ]
        for a, b in pairs:
            lines.append(f"        - # {a.id} -> {b.id}")
            item = {"label": a.label} if kind != "qa" else {}
            if kind == "pair":
                item["context"] = " ".join(a.context.split())
            if kind == "qa":      # what the prompt shows of the context (context_window: sentence)
                window = answer_window(a.context, a.answer["start"], len(a.answer["text"]))
                item.update(context=" ".join(window.split()), answer=a.answer["text"])
            item["text"] = cut_words(a.text, DEMO_WORDS)
            item["new_text"] = cut_words(b.text, DEMO_WORDS)
            lines += [f"          {k}: {q(v)}" for k, v in item.items()]
        lines += [f"    max_tokens: {tokens}", f"    min_words: {min_words}"]
    else:
        why = (f"{source} has no two examples of " + {"single": "one label", "pair": "one label and premise",
                                                       "qa": "one context and answer"}[kind]
               if examples else "no --data was given")
        lines += [
            f"      # a short chat form: {why} to draw completion demonstrations from. For those, replace",
            "      # system/user with `demo`, `query` and `demos` (see the built-in rte or imdb task).",
            f"      system: {q(w['chat_system'])}",
            f"      user: {q(w['extrapolate_paper'])}",
        ]
        if kind == "single":
            lines.append("      demo_max_words: 120    # the misclassified example is cut to this many words")
        lines += [f"    max_tokens: {tokens}", f"    min_words: {min_words}", "    stop: []"]
    if kind == "qa":
        lines.append("    context_window: sentence")
    tokens, min_words = LIMITS[kind]["zerogen"]
    lines += [
        "  # ZeroGen baseline (--method zerogen, zerogen-s3, zerogen+gold): one fixed prompt per "
        + ("context and answer" if kind == "qa" else "label") + ",",
        "  # which the model completes after its opening quote.",
        "  zerogen:",
        f"    paper: {q(w['zerogen'])}",
        "    stop: [\"\\\"\", \"\\n\"]",
        f"    max_tokens: {tokens}",
        f"    min_words: {min_words}",
    ]
    if kind == "qa":
        lines.append("    context_window: sentence")
    return "\n".join(lines) + "\n"


def parse_draft(text: str, where: str = "new-task") -> Task:
    """The Task of a drafted YAML text, validated as `load_task` validates a file."""
    return task_from_dict({**yaml.safe_load(text), "_where": where}, source=where)


def new_task(spec: TaskSpec, out: str | Path, *, data: str | None = None, force: bool = False,
             seed: int = 0) -> dict:
    """Write the task file of `spec` to `out` (refused when it exists, unless `force`); with `data`, a real
    data file of the task, its rows are checked against the task first and give the extrapolation
    demonstrations. Nothing is written when anything fails. Returns a summary: path, examples, pairs, labels
    without examples.

    Example: new_task(task_spec("urgency", "single", "low,medium,high", "how urgent a support ticket is",
                      columns="text=body,label=priority"), "tasks/urgency.yaml", data="tickets.csv")
             -> {"path": "tasks/urgency.yaml", "examples": 36, "pairs": 6, "missing_labels": []}
    """
    from ..io import atomic_write_text

    out = Path(out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise S3Error(f"--out {out}: a task file is written as YAML; give a path ending in .yaml")
    if out.exists() and not force:
        raise S3Error(f"--out {out}: the file exists; give another path, or --force to replace it")
    task = parse_draft(draft_task(spec))
    examples = None
    if data is not None:
        try:
            examples = load_examples(data, task)
        except DataError as e:
            if e.field in spec.fields.values() and e.reason.startswith("missing"):
                key = next(k for k, v in spec.fields.items() if v == e.field)
                raise S3Error(f"{e}; name the column that holds it with --columns {key}=COLUMN") from None
            raise
    text = draft_task(spec, examples, str(data) if data is not None else None, seed)
    parse_draft(text, str(out))         # the file loads as written
    atomic_write_text(out, text)
    seen = Counter(ex.label for ex in examples or ())
    pairs = demo_pairs(spec, examples, seed) if examples else []
    return {"path": str(out), "examples": len(examples) if examples is not None else None, "pairs": len(pairs),
            "missing_labels": [n for n, _ in spec.labels if examples is not None and not seen[n]]}

