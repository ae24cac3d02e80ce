"""The LLM stages of S3: rationales (Alg. 1), seed synthesis, error extrapolation (Alg. 2/3), and
label balancing of each round's added data.

Everything random is drawn from `random.Random` seeded by (run seed, stage, pass), and every
request carries a sample index, so a re-run builds the same requests and the cache answers them.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..data import Example
from ..errors import S3Error
from ..llm.base import LLM, REASONING_ONLY
from ..rundir import ATTEMPT_STRIDE, SAMPLE_BANDS, list_sample_index
from ..tasks import Task
from .prompts import PromptBuilder, clean_answer, numbered, parse_list, parse_rationales

SEED_PASSES = 3              # seed passes at most: the first, then up to two that replace rejected answers
REPLAN_FACTOR = 1.25         # a replacing pass asks for this many times the examples still missing
REJECT_LOG_MAX = 50          # malformed list answers kept (raw text) per stage in manifest.json
REJECT_RAW_MAX = 2000        # characters of each


def reject_reason(error: str) -> str:
    """The reject counter of a failed LLM request: "reasoning_only" (a reasoning model gave no answer
    after its thinking) or "llm_error"."""
    return "reasoning_only" if error.startswith(REASONING_ONLY) else "llm_error"


@dataclass
class StageReport:
    """What a stage asked for and what it kept: `rejects` counts reasons (empty, too_short, ...)."""

    requested: int = 0
    kept: int = 0
    rejects: Counter = field(default_factory=Counter)
    calls: int = 0               # requests sent, when one request asks for several examples (--per-call)
    per_request: int = 1
    reject_log: list = field(default_factory=list)   # malformed list answers: reason, counts, raw text
    first_error: str | None = None   # the first failed request's error, as the backend gave it

    def llm_failed(self, error: str, n: int = 1) -> None:
        """`n` examples lost to one failed LLM request."""
        self.rejects[reject_reason(error)] += n
        if self.first_error is None:
            self.first_error = error

    def to_dict(self) -> dict:
        d = {"requested": self.requested, "kept": self.kept, "rejects": dict(self.rejects),
             "kept_share": round(self.kept / self.requested, 4) if self.requested else None}
        if self.first_error is not None:
            d["first_error"] = self.first_error
        if self.calls:           # only for list requests: a one-example stage's record is as before
            d.update(calls=self.calls, per_request=self.per_request, reject_log=list(self.reject_log))
        return d

    def log_reject(self, entry: dict) -> None:
        if len(self.reject_log) < REJECT_LOG_MAX:
            self.reject_log.append({**entry, "raw": entry.get("raw", "")[:REJECT_RAW_MAX]})


@dataclass
class _Item:
    """One planned example: the fields for its prompt and how to make the Example from the text."""

    index: int
    fields: dict
    make: Callable[[str], Example]
    check: dict  # keyword arguments for clean_answer (context, shown, answer)


@dataclass
class _Group:
    """One list request's plan (`--per-call`, `--per-context`): its index and the examples it asks for."""

    index: int
    targets: list   # of _Item


class Synthesizer:
    """`per_call` N: seed and ZeroGen requests ask for N examples each (one label, the same rationales or
    context); `per_context` K (pair and QA tasks): K examples for one context in one request, one per
    label in turn (pair) or one per answer of that context (QA). `schema`: ask for JSON under a response
    schema (default: when the backend supports one), else a numbered list."""

    def __init__(self, task: Task, llm: LLM, builder: PromptBuilder, seed: int, *, per_call: int = 1,
                 per_context: int = 1, schema: bool | None = None):
        self.task, self.llm, self.builder, self.seed = task, llm, builder, seed
        self.reports: dict[str, StageReport] = {}
        if per_call < 1 or per_context < 1:
            raise S3Error("--per-call and --per-context must be >= 1")
        if per_call > 1 and per_context > 1:
            raise S3Error("--per-call and --per-context: use one of them (both ask for several examples per request)")
        if per_context > 1 and task.kind == "single":
            raise S3Error(f"--per-context: task {task.name} has no contexts (it is a single-text task); "
                          "use --per-call")
        self.per_call, self.per_context = per_call, per_context
        self.schema = bool(getattr(llm, "supports_schema", False)) if schema is None else schema

    @property
    def per_request(self) -> int:
        """Examples one seed/ZeroGen request asks for."""
        return max(self.per_call, self.per_context)

    def _rng(self, *parts) -> random.Random:
        return random.Random(":".join(map(str, (self.seed, *parts))))

    def _report(self, stage: str) -> StageReport:
        return self.reports.setdefault(stage, StageReport())

    def _kind(self) -> str:
        return "question" if (self.task.kind == "qa" or "question" in self.task.fields.get("text", "")) else "text"

    def _run(self, stage: str, items: list[_Item], attempt: int, desc: str, report_as: str | None = None
             ) -> tuple[dict[int, Example], list[_Item]]:
        """Ask for every item once; return kept examples by item index and the rejected items."""
        sp = self.task.stage(stage)
        rep = self._report(report_as or stage)
        reqs = [self.builder.build(stage, it.fields, SAMPLE_BANDS[stage] + attempt * ATTEMPT_STRIDE + it.index)
                for it in items]
        order = sorted(range(len(items)), key=lambda i: (reqs[i].prompt or str(reqs[i].messages)))
        answers = self.llm.generate([reqs[i] for i in order], desc=desc)
        kept, rejected = {}, []
        for i, ans in zip(order, answers):
            it = items[i]
            rep.requested += 1
            if ans.error is not None:
                rep.llm_failed(ans.error)
                rejected.append(it)
                continue
            text, why = clean_answer(ans.text, kind=self._kind(), min_words=sp.min_words,
                                     single_line=self.task.kind != "single", **it.check)
            if text is None:
                rep.rejects[why] += 1
                rejected.append(it)
                continue
            rep.kept += 1
            kept[it.index] = it.make(text)
        return kept, rejected

    # ---------------------------------------------------------------- rationales (Alg. 1)
    def rationales(self) -> dict[str, list[str]]:
        """label -> up to K distinct reasons, from `calls_per_label` sampled list prompts per label."""
        task, rep = self.task, self._report("rationale")
        style = self.builder.stage_style("rationale")
        sp = task.stage("rationale")
        reqs, owners = [], []
        for label in task.label_names:
            if style == "fewshot":
                demo = next((d for d in sp.fewshot.demos if d.get("label") == label), None)
                shown = demo["rationales"] if demo else []
                f = self.builder.fields("rationale", label=label, rationales=numbered(shown, open_next=True))
            else:
                f = self.builder.fields("rationale", label=label, n=task.rationale_keep)
            for j in range(task.rationale_calls):
                reqs.append(self.builder.build("rationale", f, SAMPLE_BANDS["rationale"] + j))
                owners.append(label)
        answers = self.llm.generate(reqs, desc="rationales")
        out: dict[str, list[str]] = {lab: [] for lab in task.label_names}
        seen: dict[str, set] = {lab: set() for lab in task.label_names}
        for label, ans in zip(owners, answers):
            rep.requested += 1
            if ans.error is not None:
                rep.llm_failed(ans.error)
                continue
            items = parse_rationales(ans.text, first_is_item=style == "fewshot")
            if not items:
                rep.rejects["no_list"] += 1
                continue
            rep.kept += 1
            for it in items:
                key = " ".join(it.lower().split())
                if key not in seen[label] and len(out[label]) < task.rationale_keep:
                    seen[label].add(key)
                    out[label].append(it)
        return out

    # ---------------------------------------------------------------- seed
    def seed_examples(self, n: int, *, rationales: dict | None = None, contexts: Sequence[dict] | None = None,
                      stage: str = "seed", max_passes: int = SEED_PASSES) -> list[Example]:
        """n kept examples; labels uniform; rejected answers are replaced by new plans (up to max_passes).
        With list requests (`per_request` > 1) each pass sends ceil(missing / per_request) requests, and every
        parsed item is one example with its request's sample index and its position."""
        m = self.per_request
        kept: dict = {}
        next_index = 0
        for p in range(max_passes):
            missing = n - len(kept)
            if missing <= 0:
                break
            count = missing if p == 0 else math.ceil(missing * REPLAN_FACTOR)
            rng = self._rng(stage, "plan", p)
            desc = f"{stage} (pass {p + 1})" if p else stage
            if m > 1:
                calls = math.ceil(count / m)
                groups = [self._plan_group(stage, next_index + j, rng, rationales, contexts) for j in range(calls)]
                next_index += calls
                kept.update(self._run_lists(stage, groups, desc))
            else:
                items = [self._plan(stage, next_index + j, rng, rationales, contexts) for j in range(count)]
                next_index += count
                kept.update(self._run(stage, items, 0, desc)[0])
        return [kept[k] for k in sorted(kept)][:n]

    def _plan(self, stage: str, index: int, rng: random.Random, rationales, contexts, label=None) -> _Item:
        task = self.task
        if label is None:
            label = rng.choice(task.label_names) if task.kind != "qa" else None
        if task.kind == "single":
            rs: list[str] = []
            if rationales and rationales.get(label):
                pool = rationales[label]
                rs = rng.sample(pool, min(task.rationale_k, len(pool)))
            return self._item(stage, index, label, rs=rs)
        return self._item(stage, index, label, c=rng.choice(contexts))

    def _item(self, stage: str, index: int, label, *, rs=None, c=None) -> _Item:
        """The plan of one example: a label and rationales (single-text tasks) or a context (and answer)."""
        meta = {"stage": stage}
        if c is None:
            rs = rs or []
            f = self.builder.fields(stage, label=label, rationales=rs)
            meta["rationales"] = rs
            make = lambda t, label=label, meta=meta: Example(text=t, label=label, meta=dict(meta))  # noqa: E731
            return _Item(index, f, make, {})
        f = self.builder.fields(stage, label=label, context=c["context"], answer=c.get("answer"))
        make = lambda t, c=c, label=label, meta=meta: Example(  # noqa: E731
            text=t, label=label, context=c["context"], answer=c.get("answer"), meta=dict(meta))
        return _Item(index, f, make, {"context": c["context"],
                                      "answer": c["answer"]["text"] if c.get("answer") else None})

    # ---------------------------------------------------------------- several examples per request
    def _plan_group(self, stage: str, index: int, rng: random.Random, rationales, contexts) -> _Group:
        if self.per_call > 1:        # one plan, asked for per_call times
            # labels in turn, not drawn: N examples share a request's label, and a draw per request would
            # leave a small seed N times as unbalanced as a draw per example
            labels = self.task.label_names
            label = labels[(self._label_start(stage) + index) % len(labels)] if self.task.kind != "qa" else None
            it = self._plan(stage, index, rng, rationales, contexts, label=label)
            return _Group(index, [it] * self.per_call)
        task, k = self.task, self.per_context
        c = rng.choice(contexts)
        if task.kind == "qa":        # the context's answers in turn (repeated when it has fewer than k)
            same = [x for x in contexts if x["context"] == c["context"] and x.get("answer")]
            others = [x for x in same if x["answer"]["text"] != c["answer"]["text"]]
            picked = [c] + rng.sample(others, min(k - 1, len(others)))
            return _Group(index, [self._item(stage, index, None, c=picked[j % len(picked)]) for j in range(k)])
        labels = task.label_names
        start = rng.randrange(len(labels))
        return _Group(index, [self._item(stage, index, labels[(start + j) % len(labels)], c=c) for j in range(k)])

    def first_pass_requests(self, n: int, stage: str) -> int:
        """Requests the first pass of `seed_examples(n)` sends (what the plan sends when nothing is rejected)."""
        m = self.per_request
        if m > 1 and self.per_context > 1 and self.builder.completes(stage):
            return math.ceil(n / m) * m       # one request per target, sharing the context's prefix
        return math.ceil(n / m)

    def max_seed_requests(self, n: int, stage: str) -> int:
        """Requests `seed_examples(n)` sends at most: every answer rejected, so every pass asks again for all n
        (the first for n, each later one for ceil(n x REPLAN_FACTOR)).

        Example: one example per request, n = 8 -> 8 + 10 + 10 = 28."""
        counts = [n] + [math.ceil(n * REPLAN_FACTOR)] * (SEED_PASSES - 1)
        return sum(self.first_pass_requests(c, stage) for c in counts)

    def _label_start(self, stage: str) -> int:
        return self._rng(stage, "label-start").randrange(len(self.task.label_names))

    def _run_lists(self, stage: str, groups: list[_Group], desc: str) -> dict[tuple, Example]:
        """Ask every group in one request (completion prompts with one target per label: one request per
        target, sharing the context's prefix); keep each parsed item that cleans, count the rest."""
        sp = self.task.stage(stage)
        rep = self._report(stage)
        rep.per_request = self.per_request
        singles = self.per_context > 1 and self.builder.completes(stage)
        jobs = []        # (request, group, [positions])
        for g in groups:
            if singles:
                for j, t in enumerate(g.targets):
                    si = list_sample_index(stage, self.per_call, self.per_context, g.index * len(g.targets) + j)
                    jobs.append((self.builder.build(stage, t.fields, si), g, [j]))
            else:
                si = list_sample_index(stage, self.per_call, self.per_context, g.index)
                jobs.append((self.builder.build_list(stage, [t.fields for t in g.targets], si, schema=self.schema),
                             g, list(range(len(g.targets)))))
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i][0].prompt or str(jobs[i][0].messages)))
        answers = self.llm.generate([jobs[i][0] for i in order], desc=desc)
        kept: dict[tuple, Example] = {}
        for i, ans in zip(order, answers):
            req, g, positions = jobs[i]
            rep.calls += 1
            rep.requested += len(positions)
            if ans.error is not None:
                rep.llm_failed(ans.error, len(positions))
                continue
            if singles:
                texts, problem = [ans.text], None
            else:
                texts, problem = parse_list(ans.text, len(positions), first_is_item=self.builder.completes(stage))
            if problem:
                rep.rejects[problem] += len(positions) - len(texts)
                rep.log_reject({"sample_index": req.sample_index, "reason": problem, "asked": len(positions),
                                "parsed": len(texts), "raw": ans.text})
            for j, text in zip(positions, texts):
                it = g.targets[j]
                clean, why = clean_answer(text, kind=self._kind(), min_words=sp.min_words,
                                          single_line=True, **it.check)
                if clean is None:
                    rep.rejects[why] += 1
                    continue
                rep.kept += 1
                ex = it.make(clean)
                ex.meta.update(sample_index=req.sample_index, item=j, per_request=len(g.targets))
                kept[(g.index, j)] = ex
        return kept

    # ---------------------------------------------------------------- error extrapolation (Alg. 2/3)
    def extrapolate(self, sources: Sequence[Example], round_no: int, attempts: int = 2,
                    stage: str = "extrapolate") -> list[Example]:
        """One new example per source (a gold-eval error), keeping its gold label and context.
        A rejected answer is asked again with a new sample index, up to `attempts` calls in all."""
        sp = self.task.stage(stage)
        shorten = sp.fewshot.demo_max_words if (sp.fewshot and self.builder.stage_style(stage) == "fewshot") else None
        items = []
        for j, src in enumerate(sources):
            f = self.builder.fields(stage, text=src.text, context=src.context or "", answer=src.answer,
                                    label=src.label, shorten=shorten)
            meta = {"stage": stage, "round": round_no, "source_id": src.id}
            meta.update({k: v for k, v in src.meta.items() if k in ("balance", "mined")})
            make = lambda t, src=src, meta=meta: Example(  # noqa: E731
                text=t, label=src.label, context=src.context, answer=src.answer, meta=dict(meta))
            items.append(_Item(j, f, make, {"context": src.context, "shown": src.text,
                                            "answer": src.answer["text"] if src.answer else None}))
        kept: dict[int, Example] = {}
        todo = items
        for a in range(attempts):
            if not todo:
                break
            got, todo = self._run(stage, todo, a, f"round {round_no}: extrapolate" + (f" (retry {a})" if a else ""),
                                  report_as=f"{stage}-round-{round_no}")
            kept.update(got)
        out = [kept[i] for i in sorted(kept)]
        for k, ex in enumerate(out):
            ex.id = f"r{round_no}-{k}"
        return out


def pick_demos(task: Task, pool: Sequence[Example], n: int, seed: int) -> list[Example]:
    """n demonstrations from gold eval, balanced over labels and interleaved (a, b, a, b ...)."""
    rng = random.Random(f"{seed}:demos")
    if task.kind == "qa" or n <= 0:
        return rng.sample(list(pool), min(n, len(pool)))
    by_label = {lab: [ex for ex in pool if ex.label == lab] for lab in task.label_names}
    for v in by_label.values():
        rng.shuffle(v)
    out, i = [], 0
    while len(out) < n and any(len(v) > i for v in by_label.values()):
        for lab in task.label_names:
            if len(by_label[lab]) > i and len(out) < n:
                out.append(by_label[lab][i])
        i += 1
    return out


def balance_sources(task: Task, errors: list[Example], correct: list[tuple[Example, float]],
                    mode: str, seed: int, round_no: int) -> tuple[list[Example], dict]:
    """Choose what to extrapolate this round so that the added data is label-balanced.

    - `none`: every error once (the paper).
    - `cap`: every label gets as many as the label with the fewest errors (a random subset).
    - `fill` (default): every label gets as many as the label with the most errors; a label short of
      errors is topped up with its correctly-predicted gold examples of lowest confidence (nearest the
      decision boundary), then by extrapolating its errors again.
    `correct`: (example, confidence in the gold label) for correctly predicted mining examples.
    Returns (sources, info); a source used twice is a copy with meta["balance"] = "repeat".
    """
    by = {lab: [e for e in errors if e.label == lab] for lab in task.label_names}
    info = {"mode": mode, "errors_per_label": {k: len(v) for k, v in by.items()}}
    if mode == "none" or task.kind == "qa" or not errors:
        info["sources_per_label"] = info["errors_per_label"]
        return list(errors), info
    rng = random.Random(f"{seed}:balance:{round_no}")
    out: list[Example] = []
    if mode == "cap":
        target = min(len(v) for v in by.values())
        for lab in task.label_names:
            out += rng.sample(by[lab], target) if len(by[lab]) > target else by[lab]
    elif mode == "fill":
        target = max(len(v) for v in by.values())
        for lab in task.label_names:
            got = list(by[lab])
            near = sorted([(c, e) for e, c in correct if e.label == lab], key=lambda t: t[0])
            for conf, e in near:
                if len(got) >= target:
                    break
                got.append(Example(text=e.text, label=e.label, context=e.context, answer=e.answer, id=e.id,
                                   meta={**e.meta, "balance": "near_boundary"}))
            k = 0
            base = list(got)
            while len(got) < target and base:
                e = base[k % len(base)]
                got.append(Example(text=e.text, label=e.label, context=e.context, answer=e.answer, id=e.id,
                                   meta={**e.meta, "balance": "repeat"}))
                k += 1
            out += got
    else:
        raise ValueError(f"balance mode must be none, cap or fill, not {mode!r}")
    info["sources_per_label"] = dict(Counter(e.label for e in out))
    return out, info
