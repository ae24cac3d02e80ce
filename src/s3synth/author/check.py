"""`s3synth check-task`: a task checked against real data, and what the LLM would be asked, calling no LLM.

`check_task` reads a task (a file or a built-in name) and real data and reports every problem of the data
against the task (one line each, naming the first line that has it and how many more do), what a run sends
per stage in each prompt style with the stages that fall back to another style or are skipped
(`method.loop.stage_warnings`, as a run prints them), and one prompt of every stage and style, built by the
run's own code (PromptBuilder, Synthesizer) with a stand-in LLM that answers nothing.

Not handled: the rationales a single-text task's seed prompts show come from the LLM in a run; here they are
placeholders ("<reason 1 from the rationale stage>").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data import Example, parse_columns
from ..errors import DataError
from ..tasks import STAGES, Task, load_task


@dataclass
class Rendered:
    """One prompt as the LLM would get it: its stage, style, what the run calls it, and the request's text."""

    stage: str
    style: str
    what: str
    text: str
    params: str


@dataclass
class TaskCheck:
    """What `check_task` found: the data's problems (one line each), the warnings a run would print per prompt
    style, what each stage sends per style, and one rendered prompt of every stage and style."""

    task: Task
    where: str
    rows: int
    label_counts: dict
    problems: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    plan: dict = field(default_factory=dict)        # style -> [(stage, what it sends)]
    prompts: list = field(default_factory=list)     # of Rendered

    def report(self) -> str:
        """The text `check-task` prints on stdout (the problems go to stderr, one line each)."""
        t = self.task
        labels = ", ".join(f"{lab.name}" + (f" ('{lab.word}')" if lab.word != lab.name else "") for lab in t.labels)
        fields = ", ".join(f"{k}={v}" for k, v in t.fields.items())
        n = sum(self.label_counts.values())
        lines = [f"task {t.name} ({t.kind}) from {t.source}: " + (f"labels {labels}; " if labels else "")
                 + f"fields {fields}",
                 f"data {self.where}: {n} usable examples of {self.rows} rows"
                 + ("; " + ", ".join(f"{k} {v}" for k, v in self.label_counts.items()) if t.labels else ""),
                 "", "what a run sends per stage (method s3; --prompt-style auto is fewshot for the embedded model, "
                 "paper for the others):"]
        for style, stages in self.plan.items():
            lines.append(f"  --prompt-style {style}:")
            lines += [f"    {stage:<12} {what}" for stage, what in stages]
        if t.stage("zerogen") is not None:
            lines.append("  zerogen      zerogen completion prompts (--method zerogen, zerogen-s3, zerogen+gold)")
        lines += ["", "warnings:" if self.warnings else "warnings: none"]
        lines += [f"  {w}" for w in self.warnings]
        for r in self.prompts:
            lines += ["", f"=== {r.stage}, {r.style} style: {r.what} ({r.params}) ===", r.text]
        lines += ["", f"problems: {len(self.problems)}" + (" (one line each on stderr)" if self.problems else "")]
        return "\n".join(lines)


def _lines(numbers: list[int]) -> str:
    """Example: _lines([3, 5, 9, 11, 12, 20]) -> "lines 3, 5, 9, 11, 12 and 1 more" """
    shown = ", ".join(map(str, numbers[:5]))
    return f"line{'s' if len(numbers) > 1 else ''} {shown}" + (f" and {len(numbers) - 5} more" if len(numbers) > 5
                                                              else "")


def data_problems(task: Task, source, columns: dict | None = None) -> tuple[list[Example], int, list[str]]:
    """Every row of `source` (a data file or `hf:NAME[:CONFIG][:SPLIT]`, as `data.read_source` reads) checked
    against `task`: (the usable examples, the rows read, one line per distinct
    problem, naming the file, the first line that has it and how many more do).

    Example: a CSV whose priority column says "urgent" on lines 4 and 9 -> [..., "tickets.csv:4: field
    'priority': unknown label 'urgent'; expected one of: low (0), medium (1), high (2) (also line 9)"]
    """
    from ..data import examples_from_rows, field_columns, read_source

    where, rows = read_source(source, task)
    prefix = where.stem if isinstance(where, Path) else "row"
    if not rows:
        return [], 0, [f"{where}: holds no examples"]
    try:
        field_columns(task, columns, dict.fromkeys(k for _, row in rows for k in row), where)
    except DataError as e:
        return [], len(rows), [str(e)]
    examples: list[Example] = []
    found: dict = {}        # (field, reason) -> line numbers
    for line, row in rows:
        try:
            examples += examples_from_rows([(line, row)], task, where=where, id_prefix=prefix, columns=columns)
        except DataError as e:
            found.setdefault((e.field, e.reason), []).append(e.line if e.line is not None else line)
    problems = [f"{where}:{lines[0]}:" + (f" field '{name}':" if name else "") + f" {reason}"
                + (f" (also {_lines(lines[1:])})" if len(lines) > 1 else "")
                for (name, reason), lines in found.items()]
    return examples, len(rows), problems


def _text_of(req) -> str:
    if req.prompt is not None:
        return req.prompt
    return "\n".join(f"[{role}] {text}" for role, text in req.messages)


def _params(req) -> str:
    p = req.params
    return f"max_tokens {p.max_tokens}" + (f", stop {json.dumps(list(p.stop))}" if p.stop else "")


def render_prompts(task: Task, examples: list[Example], seed: int = 0) -> list[Rendered]:
    """One request of every stage and prompt style of `task`, as a run builds it (the run's PromptBuilder and
    Synthesizer, with a stand-in LLM that answers nothing): seed demonstrations picked from `examples` as a
    run picks them from the gold eval, extrapolation from one of `examples` (not a demonstration), contexts
    from `examples`. The rationales a seed prompt shows come from the LLM in a run; here they are marked
    "<reason N from the rationale stage>"."""
    from ..method.estimate import Recorder, planned
    from ..method.prompts import PromptBuilder
    from ..method.synth import Synthesizer, pick_demos

    rec = Recorder()
    contexts = [{"context": ex.context, **({"answer": ex.answer} if ex.answer else {})}
                for ex in examples if ex.context is not None]
    rationales = None
    if task.kind == "single" and task.stage("rationale") is not None:
        rationales = {lab: [f"<reason {i + 1} from the rationale stage>" for i in range(task.rationale_k)]
                      for lab in task.label_names}
    out = []
    for stage in STAGES:
        sp = task.stage(stage)
        if sp is None:
            continue
        for style in (("paper",) if stage == "zerogen" else sp.styles()):
            builder = PromptBuilder(task, style=style)
            synth = Synthesizer(task, rec, builder, seed)
            what = builder.describe(stage)
            if stage == "rationale":
                reqs = planned(rec, synth.rationales)
            elif stage in ("seed", "zerogen"):
                if task.kind != "single" and not contexts:
                    continue
                n = sp.fewshot.n_demos if stage == "seed" and builder.completes("seed") else 0
                demos = pick_demos(task, examples, n, seed)
                builder.demos["seed"] = [builder.example_fields("seed", d, rationales, seed) for d in demos]
                shown = rationales if stage == "seed" else None
                reqs = planned(rec, lambda: synth.seed_examples(1, rationales=shown, contexts=contexts, stage=stage))
                what = builder.describe(stage, len(demos))
            else:
                if sp.fewshot and sp.fewshot.demos:
                    builder.demos["extrapolate"] = [builder.handwritten_fields(stage, d) for d in sp.fewshot.demos]
                n = task.stage("seed").fewshot.n_demos if task.stage("seed").fewshot else 0
                shown_ids = {d.id for d in pick_demos(task, examples, n, seed)}
                sources = [ex for ex in examples if ex.id not in shown_ids] or examples
                if not sources:
                    continue
                reqs = planned(rec, lambda: synth.extrapolate(sources[:1], 1))
            if reqs:
                out.append(Rendered(stage, "completion" if stage == "zerogen" else style, what, _text_of(reqs[0]),
                                    _params(reqs[0])))
    return out


def check_task(task_ref: str | Path, source: str | Path, *, columns: str | None = None, seed: int = 0) -> TaskCheck:
    """Check a task (a file or a built-in name) against real data and render its prompts, calling no LLM and
    writing nothing. A task file that does not load raises its one-line TaskError; the data's problems are
    collected in the result (`problems`), one line each.

    Example: check_task("tasks/urgency.yaml", "tickets.csv").problems -> [] when every row fits the task
    """
    from ..config import RunConfig
    from ..method.loop import stage_plan, stage_warnings
    from ..method.prompts import PromptBuilder
    from ..method.synth import pick_demos

    task = load_task(task_ref)
    cols = parse_columns(columns)
    examples, n_rows, problems = data_problems(task, source, cols)
    counts = {lab: sum(ex.label == lab for ex in examples) for lab in task.label_names}
    chk = TaskCheck(task=task, where=str(source), rows=n_rows, label_counts=counts, problems=problems)
    missing = [lab for lab, n in counts.items() if n == 0 and examples]
    if missing:
        chk.warnings.append(f"{source}: no example of label {', '.join(missing)}: no seed demonstration shows it "
                            "and no error of it can be extrapolated")
    cfg = RunConfig(task=str(task_ref), gold_eval=str(source), columns=columns)
    names = {"rationales": "rationale", "seed": "seed", "extrapolate": "extrapolate"}
    per_style = {}
    for style in ("paper", "fewshot"):
        builder = PromptBuilder(task, style=style)
        n = task.stage("seed").fewshot.n_demos if builder.completes("seed") else 0
        demos = len(pick_demos(task, examples, n, seed))
        stages = dict.fromkeys(names[s.kind] for s in stage_plan(cfg, task) if s.kind in names)
        chk.plan[style] = [(s, builder.describe(s, demos if s == "seed" else None)) for s in stages]
        per_style[style] = stage_warnings(cfg, task, builder, demos)
    for w in dict.fromkeys(per_style["paper"] + per_style["fewshot"]):
        both = all(w in ws for ws in per_style.values())
        chk.warnings.append(w if both else f"--prompt-style {'paper' if w in per_style['paper'] else 'fewshot'}: {w}")
    chk.prompts = render_prompts(task, examples, seed)
    return chk
