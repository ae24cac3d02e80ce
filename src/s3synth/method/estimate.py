"""`s3synth estimate`: the LLM calls, tokens and money a run would need, before any call is made.

The stages are planned exactly as the pipeline plans them (same PromptBuilder, demonstrations,
sample plans and contexts) with a stand-in LLM that records each stage's requests and answers
none: nothing is called and nothing is written. Each stage gets two figures:

- expected: at the assumed error rate (--assume-error-rate), with an allowance for rejected answers.
  Calls: rationales = labels x the task's `rationale_calls`; seed = ceil(seed size x 1.1) (about
  one answer in ten is rejected and replaced), divided by `--per-call`/`--per-context` (rounded up;
  completion prompts with `--per-context` send one request per target, sharing the context's
  prefix); each extrapolation round = ceil(sources x 1.1) when `extrapolate_attempts` > 1 (rejected
  answers are asked again), with sources = errors = ceil(error rate x mining examples), times the
  number of labels for `--balance fill` (every error in one label, the other labels filled up to it),
  at most the bound's sources.
- at most: a bound on the calls (and so on the completion tokens) that no run of these settings
  passes. Calls: rationales as expected (never asked again); seed = every answer rejected in all
  SEED_PASSES passes (n, then ceil(n x 1.25) twice); each extrapolation round = every mining example
  an error (`--balance fill`: every label present filled up to the most frequent label's count) x
  `--extrapolate-attempts`; GoldGen = every mining example x `--extrapolate-attempts`.
- prompt tokens: of the real prompts, ceil(chars / 4) each, or counted with the embedded model's
  tokenizer when the backend is `embedded` and llama-cpp-python is installed. Expected: extrapolation
  prompts averaged over every mining example (which ones will be errors is not known yet); at most:
  every call at the longest prompt planned for its stage (every mining example is planned).
- completion tokens: calls x the stage's max_tokens, for both figures (answers are usually shorter,
  never longer).
- money: per million tokens, prompt x --price-in + completion x --price-out; with --batch at the batch
  price, (1 - --batch-discount) of that (every request counted as batched; the online fallback for
  unanswered requests is not foreseen).
Every round is counted, though the loop may stop early (--min-gain, no errors left). Chat templates
add a few tokens per message that are not counted; `--max-tokens`/`--max-cost` are checked against
the bound.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

from ..config import RunConfig
from ..errors import S3Error
from ..llm.base import LLM, Completion, Request, estimate_prompt_tokens
from .synth import SEED_PASSES

SEED_FACTOR = 1.1       # seed requests per kept seed example
RETRY_FACTOR = 1.1      # extrapolation requests per source when rejected answers are asked again
# stands in for the rationales a single-text task's seed prompts will show (not known before the run)
PLACEHOLDER_RATIONALE = "the acting is strong and the story keeps you interested"


def scaled(n: int, factor: float) -> int:
    """ceil(n x factor) without float noise: scaled(10, 1.1) == 11."""
    return math.ceil(round(n * factor, 6))


@dataclass
class Figures:
    """LLM calls and tokens of a stage (or of the whole run), expected or at most.

    Example: Figures(9, 1200, 432).tokens -> 1632"""

    calls: int
    prompt_tokens: int
    completion_tokens: int      # every call at its max_tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Figures") -> "Figures":
        return Figures(self.calls + other.calls, self.prompt_tokens + other.prompt_tokens,
                       self.completion_tokens + other.completion_tokens)


NONE = Figures(0, 0, 0)


@dataclass
class StageEstimate:
    stage: str                  # the stage's name in manifest.json (seed, rationales, round-1/extrapolate, ...)
    expected: Figures           # at the assumed error rate, with the allowance for rejected answers asked again
    at_most: Figures            # the bound: every mining example an error, every answer rejected till its last try
    requests: int = 0           # requests of the first pass (what the plan sends when nothing is rejected)
    label: str = ""


@dataclass
class Estimate:
    task: str
    llm: str
    prompt_style: str
    token_counter: str
    stages: list[StageEstimate]
    assumptions: dict = field(default_factory=dict)
    price_in: float = 0.0
    price_out: float = 0.0
    max_tokens: int | None = None
    max_cost: float | None = None
    batch_discount: float | None = None     # --batch: the share of the price batches take off

    @property
    def priced(self) -> bool:
        return bool(self.price_in or self.price_out)

    def cost(self, f: Figures) -> float:
        full = (f.prompt_tokens * self.price_in + f.completion_tokens * self.price_out) / 1e6
        return full * (1 - self.batch_discount) if self.batch_discount is not None else full

    def total(self) -> StageEstimate:
        return StageEstimate("total", sum((s.expected for s in self.stages), NONE),
                             sum((s.at_most for s in self.stages), NONE), sum(s.requests for s in self.stages))

    def budget_notes(self) -> list[str]:
        """Whether a --max-tokens / --max-cost budget holds the run: checked against the bound (at most), and
        where the run would stop if even the expected figure passes it."""
        out = []
        for name, limit, measure, fmt in (("--max-tokens", self.max_tokens, lambda f: f.tokens, "{:,}"),
                                          ("--max-cost", self.max_cost, self.cost, "{:.4f}")):
            if limit is None:
                continue
            stops = {}
            for kind in ("expected", "at_most"):
                run = 0.0
                for s in self.stages:
                    run += measure(getattr(s, kind))
                    if run > limit:
                        stops[kind] = s.stage
                        break
            total = self.total()
            expected, at_most = fmt.format(measure(total.expected)), fmt.format(measure(total.at_most))
            head = f"{name} {fmt.format(limit)}: "
            if "expected" in stops:
                out.append(head + f"expected {expected} passes it: the run would stop (exit code 3) in stage "
                           f"'{stops['expected']}' - run again with a larger budget to go on")
            elif "at_most" in stops:
                out.append(head + f"expected {expected} fits, at most {at_most} does not: the run may stop (exit "
                           f"code 3), at the earliest in stage '{stops['at_most']}' - run again with a larger "
                           "budget to go on")
            else:
                out.append(head + f"at most {at_most} fits: the budget cannot stop the run")
        return out

    def to_dict(self) -> dict:
        """The estimate for --json: per stage (and in total) its `expected` and `at_most` figures."""
        def figures(f: Figures) -> dict:
            d = {**asdict(f), "tokens": f.tokens}
            if self.priced:
                d["cost"] = round(self.cost(f), 6)
            return d

        def row(s: StageEstimate) -> dict:
            return {"stage": s.stage, "label": s.label, "requests": s.requests,
                    "expected": figures(s.expected), "at_most": figures(s.at_most)}
        return {"task": self.task, "llm": self.llm, "prompt_style": self.prompt_style,
                "token_counter": self.token_counter, "assumptions": self.assumptions,
                "stages": [row(s) for s in self.stages], "total": row(self.total()),
                "prices_per_million": {"in": self.price_in, "out": self.price_out} if self.priced else None,
                "batch": {"discount": self.batch_discount} if self.batch_discount is not None else None,
                "budget": self.budget_notes()}

    def _rows(self, kind: str) -> list[str]:
        """The table of one figure (`expected` or `at_most`): a row per stage and the total."""
        head = f"{'stage':<24} {'calls':>7} {'prompt tokens':>14} {'completion tokens':>18} {'total tokens':>13}"
        head += f" {'cost':>11}" if self.priced else ""
        rule = "-" * len(head)
        lines = [head, rule]
        for s in self.stages + [self.total()]:
            if s.stage == "total":
                lines.append(rule)
            f = getattr(s, kind)
            lines.append(f"{s.label or s.stage:<24} {f.calls:>7,} {f.prompt_tokens:>14,} {f.completion_tokens:>18,} "
                         f"{f.tokens:>13,}" + (f" {self.cost(f):>11.4f}" if self.priced else ""))
        return lines

    def table(self) -> str:
        a = self.assumptions
        lines = [f"estimate for task {self.task} with {self.llm} ({self.prompt_style} prompts); "
                 "no LLM was called and nothing was written", "",
                 "expected (at the assumed error rate, some answers asked again):", *self._rows("expected"), "",
                 "at most (every mining example an error in every round, every answer rejected while it may be "
                 "asked again):", *self._rows("at_most"), ""]
        lines += [f"prompt tokens: {self.token_counter} of the real prompts"
                  + (" (extrapolation: averaged over the mining examples; at most: the longest one)"
                     if a.get("rounds") else ""),
                  "completion tokens: every call at the stage's max_tokens, expected and at most"]
        if a.get("seed_requests") and a.get("per_request", 1) > 1:
            lines.append(f"seed: expected {a['seed_size']} examples x {SEED_FACTOR} in {a['seed_requests']} calls of "
                         f"{a['per_request']} examples each (rejected answers are replaced); at most "
                         f"{a['seed_max_requests']} calls ({SEED_PASSES} passes, every answer rejected)")
        elif a.get("seed_requests"):
            lines.append(f"seed: expected {a['seed_size']} examples x {SEED_FACTOR} = {a['seed_requests']} calls "
                         f"(rejected answers are replaced); at most {a['seed_max_requests']} calls ({SEED_PASSES} "
                         "passes, every answer rejected)")
        if a.get("rounds"):
            lines.append(f"extrapolation: expected: assumed error rate {a['error_rate']:g} x {a['mining']} mining "
                         f"examples = {a['errors_per_round']} errors per round -> {a['sources_per_round']} sources "
                         f"(--balance {a['balance']}" + (", every error in one label" if a["balance"] == "fill" else "")
                         + ")" + (f" x {RETRY_FACTOR} for answers asked again" if a["retry_factor"] > 1 else ""))
            lines.append(f"extrapolation: at most: every one of the {a['mining']} mining examples an error -> "
                         f"{a['max_sources_per_round']} sources (--balance {a['balance']}) x {a['attempts']} "
                         "attempts each")
            lines.append(f"rounds: all {a['rounds']} counted; the loop may stop earlier (--min-gain, no errors left)")
        if self.priced:
            lines.append(f"cost: per million tokens {self.price_in:g} in, {self.price_out:g} out" + (
                f", at the batch price (--batch: {1 - self.batch_discount:g} of it)"
                if self.batch_discount is not None else ""))
        lines += self.budget_notes()
        return "\n".join(lines)


class _Planned(Exception):
    """Raised by the stand-in LLM once it has recorded the requests of a stage."""


class Recorder(LLM):
    """Stands in for the LLM while stages are planned: keeps the requests of a `generate` call and stops
    (`planned`); `s3synth check-task` renders prompts with it too."""

    backend = "estimate"

    def __init__(self):
        super().__init__("recorder")
        self.requests: list[Request] = []

    def generate(self, requests: Sequence[Request], desc: str = "generate") -> list[Completion]:
        self.requests = list(requests)
        raise _Planned

    def _generate_batch(self, requests, seeds):   # never reached: generate() stops first
        raise AssertionError("the estimate never calls an LLM")


def planned(rec: Recorder, stage_fn: Callable[[], object]) -> list[Request]:
    """The requests the first `generate` call of `stage_fn` would send (none when it sends none)."""
    rec.requests = []
    try:
        stage_fn()
    except _Planned:
        pass
    return rec.requests


def _text(r: Request) -> str:
    return r.prompt if r.prompt is not None else "\n".join(str(c) for _, c in r.messages)


@contextlib.contextmanager
def _stderr_muted():
    """Silence file descriptor 2 (C-level logging) for the duration."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def token_counter(llm) -> tuple[str, Callable[[Request], int]]:
    """(description, count): the embedded model's tokenizer where it can be loaded, else chars / 4."""
    path = getattr(llm, "path", None)
    if llm.backend == "embedded" and path is not None:
        try:
            from llama_cpp import Llama

            with _stderr_muted():   # llama.cpp logs from C even with verbose=False
                vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        except Exception:       # llama-cpp-python missing or the file unreadable: fall back
            pass
        else:
            return (f"{path.name} tokenizer",
                    lambda r: len(vocab.tokenize(_text(r).encode("utf-8"), add_bos=True, special=False)))
    return "ceil(chars / 4)", estimate_prompt_tokens


def estimate_run(cfg: RunConfig, *, error_rate: float = 0.2) -> Estimate:
    """The estimate for `cfg`; loads and checks the inputs like `run` does, calls no LLM, writes nothing."""
    from .loop import S3

    if not 0 <= error_rate <= 1:
        raise S3Error(f"--assume-error-rate {error_rate}: must be in [0, 1]")
    s3 = S3(cfg)
    s3.prepare()
    try:
        return _estimate(s3, error_rate)
    finally:
        s3.llm.close()


def _estimate(s3, error_rate: float) -> Estimate:
    """Walk the run's own stage plan (`s3.plan`), recording the requests each stage would send."""
    from .synth import Synthesizer

    cfg, task = s3.cfg, s3.task
    counter_name, count = token_counter(s3.llm)
    rec = Recorder()
    synth = Synthesizer(task, rec, s3.builder, cfg.seed, per_call=cfg.per_call, per_context=cfg.per_context,
                        schema=s3.synth.schema)
    retry = RETRY_FACTOR if cfg.extrapolate_attempts > 1 else 1.0
    fill = cfg.balance == "fill" and task.kind != "qa"
    per_label = Counter(str(ex.label) for ex in s3.mining)
    # the bound: every mining example an error; --balance fill tops every label present up to the largest
    max_sources = len(per_label) * max(per_label.values()) if fill else len(s3.mining)
    errors = scaled(len(s3.mining), error_rate)
    sources = min(errors * (len(task.labels) if fill else 1), max_sources)
    stages: list[StageEstimate] = []
    a: dict = {"method": cfg.method, "error_rate": error_rate, "mining": len(s3.mining), "balance": cfg.balance,
               "seed_factor": SEED_FACTOR, "retry_factor": retry, "attempts": cfg.extrapolate_attempts}

    def add(step, reqs: list[Request], requests: int, calls: int, max_calls: int) -> None:
        """A stage of `calls` requests like `reqs` (all of them, or a sample to average over), and of
        `max_calls` at most: `reqs` themselves when they are all it sends, else each at the longest of them;
        every call at the largest max_tokens."""
        if not reqs:
            stages.append(StageEstimate(step.name, NONE, NONE, 0, step.label))
            return
        sizes = [count(r) for r in reqs]
        pt = sum(sizes) if len(sizes) == calls else round(sum(sizes) / len(sizes) * calls)
        most = sum(sizes) if len(sizes) == max_calls else max(sizes) * max_calls
        top = max(r.params.max_tokens for r in reqs)
        stages.append(StageEstimate(step.name, Figures(calls, pt, calls * reqs[0].params.max_tokens),
                                    Figures(max_calls, most, max_calls * top), requests, step.label))

    rationales = None
    for step in s3.plan:
        if step.kind == "gold":
            continue        # no LLM: the gold eval itself
        if step.kind == "rationales":     # never asked again: expected = at most
            reqs = planned(rec, lambda: s3.synthesize(step, synth))
            add(step, reqs, len(reqs), len(reqs), len(reqs))
            rationales = {lab: [PLACEHOLDER_RATIONALE] * task.rationale_keep for lab in task.label_names}
        elif step.kind in ("seed", "zerogen"):
            wanted = scaled(step.n, SEED_FACTOR)      # examples asked for, with the allowance for rejects
            reqs = planned(rec, lambda: s3.synthesize(replace(step, n=wanted), synth, rationales))
            calls = len(reqs)      # --per-call N: ceil(wanted / N) list requests (--per-context: per context)
            most = synth.max_seed_requests(step.n, step.kind)
            a.update(seed_size=step.n, seed_requests=calls, seed_max_requests=most, per_request=synth.per_request)
            add(step, reqs, synth.first_pass_requests(step.n, step.kind), calls, most)
        else:   # extrapolation: prompts averaged over every mining example (the errors are not known yet)
            reqs = planned(rec, lambda: s3.synthesize(step, synth, sources=s3.mining))
            n, most = (len(s3.mining), len(s3.mining)) if step.kind == "extrapolate_all" else (sources, max_sources)
            if step.kind == "extrapolate":
                a.update(rounds=step.round, errors_per_round=errors, sources_per_round=sources,
                         max_sources_per_round=max_sources)
            add(step, reqs, n, scaled(n, retry), most * cfg.extrapolate_attempts)

    return Estimate(task=task.name, llm=s3.llm.name, prompt_style=s3.style, token_counter=counter_name,
                    stages=stages, assumptions=a, price_in=cfg.price_in, price_out=cfg.price_out,
                    max_tokens=cfg.max_tokens, max_cost=cfg.max_cost,
                    batch_discount=cfg.batch_discount if cfg.batch else None)
