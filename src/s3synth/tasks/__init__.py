"""Tasks: what is learned, which fields hold it, and how the prompts of each stage look.

A task is a YAML or TOML file (see `builtin/*.yaml`). Stages with prompts:
- `rationale` (single-text tasks, optional): list reasons per label (Alg. 1 of the paper)
- `seed`: write an example for a label (and a real context for pair/QA tasks)
- `extrapolate`: write an example similar to a misclassified gold example, keeping its label
- `zerogen`: the ZeroGen baseline's fixed task prompt (optional)

Each stage has up to two prompt styles:
- `paper`: the paper's instruction, sent as one chat message (for capable chat models)
- `fewshot`: a form that works on small models: either a plain completion with demonstrations
  (`demo` + `query`), or a short chat form (`system` + `user`)
Placeholders: {text} {context} {answer} {label} {label_word} {rationales} {n} {new_text}.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..io import DATA_SUFFIXES
from ..errors import TaskError

KINDS = ("single", "pair", "qa")
STAGES = ("rationale", "seed", "extrapolate", "zerogen")
PLACEHOLDERS = {"text", "context", "answer", "label", "label_word", "rationales", "n", "new_text"}


@dataclass(frozen=True)
class Label:
    name: str   # as stored in data files and outputs, e.g. "not_entailment"
    word: str   # the word used in prompts, e.g. "wrong"
    id: int     # integer id in GLUE-style data files


@dataclass(frozen=True)
class FewShot:
    """A small-model prompt form: completion with demonstrations, or a short chat form."""

    demo: str | None = None          # completion: one demonstration
    query: str | None = None         # completion: the open query the model completes
    separator: str = "\n\n"
    n_demos: int = 4                 # demonstrations drawn from gold eval (balanced over labels)
    demo_max_words: int | None = None  # cut long demonstration texts
    demos: tuple = ()                # hand-written demonstrations (dicts) used instead of gold ones
    system: str | None = None        # chat form
    user: str | None = None          # chat form

    @property
    def is_chat(self) -> bool:
        return self.user is not None


@dataclass(frozen=True)
class StagePrompts:
    paper: str | None = None
    fewshot: FewShot | None = None
    max_tokens: int = 64
    min_words: int = 3
    stop: tuple = ("\n",)            # stop strings for completion prompts
    context_window: str = "full"     # "full" or "sentence": how much context a prompt shows (QA)

    def styles(self) -> list[str]:
        return [s for s in ("paper", "fewshot") if getattr(self, s) is not None]


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    description: str
    fields: dict
    labels: tuple = ()
    prompts: dict = field(default_factory=dict)   # stage -> StagePrompts
    max_length: int = 128                         # learner's max tokens per input
    rationale_k: int = 2                          # rationales sampled per seed example
    rationale_keep: int = 16                      # rationales kept per label (K)
    rationale_calls: int = 12                     # rationale prompts sent per label
    source: str = "builtin"

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def label(self, name: str) -> Label:
        for lab in self.labels:
            if lab.name == name:
                return lab
        raise KeyError(name)

    def stage(self, name: str) -> StagePrompts | None:
        return self.prompts.get(name)


# ------------------------------------------------------------------ loading

def builtin_tasks() -> list[str]:
    files = resources.files(__package__).joinpath("builtin")
    return sorted(p.name.rsplit(".", 1)[0] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (`rte`) or a user task file (`path/to/task.yaml` or `.toml`)."""
    s = str(name_or_path)
    if s in builtin_tasks():
        text = resources.files(__package__).joinpath("builtin", f"{s}.yaml").read_text(encoding="utf-8")
        return task_from_dict(_parse(text, f"{s}.yaml", "yaml"), source=f"builtin:{s}")
    path = Path(s)
    suffix = path.suffix.lower()
    if suffix in DATA_SUFFIXES and suffix != ".json":      # a .json file may be a task written as JSON (YAML)
        raise TaskError(f"--task {s}: this is a data file ({suffix}), not a task file; give it to --gold-eval, "
                        "--test or --contexts (`s3synth run`) or to --train, --eval or --test (`s3synth train`), "
                        f"and name the task with --task: a built-in task ({', '.join(builtin_tasks())}) or a "
                        "task .yaml/.toml file")
    if not path.exists():
        raise TaskError(f"unknown task '{s}': not a built-in task ({', '.join(builtin_tasks())}) "
                        "and no such file")
    kind = "toml" if path.suffix.lower() == ".toml" else "yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TaskError(f"{path}: not valid UTF-8") from None
    return task_from_dict(_parse(text, str(path), kind), source=str(path))


def _parse(text: str, where: str, kind: str) -> dict:
    try:
        data = tomllib.loads(text) if kind == "toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        msg = str(e).replace("\n", " ")
        raise TaskError(f"{where}: malformed {kind.upper()}: {msg}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{where}: expected a mapping at the top level")
    data["_where"] = where
    return data


def _check_template(where: str, tmpl: str | None, allowed: set[str]) -> None:
    if tmpl is None:
        return
    if not isinstance(tmpl, str):
        raise TaskError(f"{where}: expected a string template, got {type(tmpl).__name__}")
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(tmpl) if f}
    except ValueError as e:
        raise TaskError(f"{where}: bad template ({e}); write literal braces as {{{{ and }}}}") from None
    bad = names - allowed
    if bad:
        raise TaskError(f"{where}: unknown placeholder(s) {sorted(bad)}; allowed: {sorted(allowed)}")


def _stage(where: str, d: Any) -> StagePrompts:
    if not isinstance(d, dict):
        raise TaskError(f"{where}: expected a mapping")
    unknown = set(d) - {"paper", "fewshot", "max_tokens", "min_words", "stop", "context_window"}
    if unknown:
        raise TaskError(f"{where}: unknown key(s) {sorted(unknown)}")
    _check_template(f"{where}.paper", d.get("paper"), PLACEHOLDERS)
    fs = None
    if d.get("fewshot") is not None:
        f = d["fewshot"]
        if not isinstance(f, dict):
            raise TaskError(f"{where}.fewshot: expected a mapping")
        known = {"demo", "query", "separator", "n_demos", "demo_max_words", "demos", "system", "user"}
        if set(f) - known:
            raise TaskError(f"{where}.fewshot: unknown key(s) {sorted(set(f) - known)}")
        for k in ("demo", "query", "system", "user"):
            _check_template(f"{where}.fewshot.{k}", f.get(k), PLACEHOLDERS)
        if f.get("user") is None and (f.get("demo") is None or f.get("query") is None):
            raise TaskError(f"{where}.fewshot: give either 'demo' and 'query' (completion) or 'user' (chat)")
        fs = FewShot(
            demo=f.get("demo"), query=f.get("query"), separator=f.get("separator", "\n\n"),
            n_demos=int(f.get("n_demos", 4)), demo_max_words=f.get("demo_max_words"),
            demos=tuple(f.get("demos") or ()), system=f.get("system"), user=f.get("user"),
        )
    if d.get("paper") is None and fs is None:
        raise TaskError(f"{where}: give at least one of 'paper' or 'fewshot'")
    cw = d.get("context_window", "full")
    if cw not in ("full", "sentence"):
        raise TaskError(f"{where}.context_window: expected 'full' or 'sentence', got {cw!r}")
    stop = d.get("stop", ["\n"])
    return StagePrompts(
        paper=d.get("paper"), fewshot=fs, max_tokens=int(d.get("max_tokens", 64)),
        min_words=int(d.get("min_words", 3)), stop=tuple(stop if isinstance(stop, list) else [stop]),
        context_window=cw,
    )


def task_from_dict(d: dict, *, source: str = "dict") -> Task:
    """Build and validate a Task from the parsed YAML/TOML mapping."""
    where = d.pop("_where", source)
    for key in ("name", "kind", "fields", "prompts"):
        if key not in d:
            raise TaskError(f"{where}: missing '{key}'")
    kind = d["kind"]
    if kind not in KINDS:
        raise TaskError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    fields = dict(d["fields"])
    need = {"single": ["text", "label"], "pair": ["text", "context", "label"], "qa": ["text", "context"]}[kind]
    for k in need:
        if k not in fields:
            raise TaskError(f"{where}: fields.{k} is required for a {kind} task (the column name in your data)")
    labels: list[Label] = []
    if kind != "qa":
        raw = d.get("labels") or []
        if len(raw) < 2:
            raise TaskError(f"{where}: a classification task needs at least two labels")
        for i, lab in enumerate(raw):
            if isinstance(lab, str):
                lab = {"name": lab}
            if not isinstance(lab, dict) or "name" not in lab:
                raise TaskError(f"{where}: labels[{i}] needs a 'name'")
            labels.append(Label(name=str(lab["name"]), word=str(lab.get("word", lab["name"])),
                                id=int(lab.get("id", i))))
        if len({lab.name for lab in labels}) != len(labels):
            raise TaskError(f"{where}: label names must be distinct")
    prompts = {}
    raw_prompts = d["prompts"]
    if not isinstance(raw_prompts, dict):
        raise TaskError(f"{where}: prompts must be a mapping of stage -> prompt forms")
    for stage, sd in raw_prompts.items():
        if stage not in STAGES:
            raise TaskError(f"{where}: unknown prompt stage {stage!r}; stages: {', '.join(STAGES)}")
        prompts[stage] = _stage(f"{where}: prompts.{stage}", sd)
    for stage in ("seed", "extrapolate"):
        if stage not in prompts:
            raise TaskError(f"{where}: prompts.{stage} is required")
    if kind != "single" and "rationale" in prompts:
        raise TaskError(f"{where}: rationales are for single-text tasks only (the paper skips them for pairs and QA)")
    learner = d.get("learner") or {}
    rat = d.get("rationales") or {}
    return Task(
        name=str(d["name"]), kind=kind, description=str(d.get("description", "")).strip(),
        fields=fields, labels=tuple(labels), prompts=prompts,
        max_length=int(learner.get("max_length", 384 if kind == "qa" else 128)),
        rationale_k=int(rat.get("per_example", 2)), rationale_keep=int(rat.get("keep", 16)),
        rationale_calls=int(rat.get("calls_per_label", 12)), source=source,
    )
