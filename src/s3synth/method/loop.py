"""The loop: seed synthesis -> (train -> mine errors -> extrapolate) x R -> final model.

What runs is read from the method's row of `config.METHODS` through `stage_plan`, which the
estimate reads too; nothing here names a method. Every stage goes through the run directory's stage
guard: it writes its outputs atomically and records a fingerprint of its inputs, so a re-run skips
finished stages and a killed stage resumes with every LLM answer taken from the cache.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import DATA_FIELDS, RunConfig, final_counts, to_toml
from ..data import (Example, content_sha256, example_row, load_contexts, load_examples, parse_columns, source_record,
                    stratified_split, subsample)
from ..errors import S3Error
from ..io import atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from ..metrics import evaluate, headline_metric, is_error, selection_metric
from ..progress import info
from ..rundir import LAYOUT, RunDir, command_line, fingerprint, versions
from ..serve.onnx_export import export_note
from ..tasks import Task, load_task
from .clean import Cleaning, clean_labels, mine
from .prompts import PromptBuilder
from .synth import Synthesizer, balance_sources, pick_demos


def _examples_out(examples: Sequence[Example]) -> list[dict]:
    return [ex.to_dict() for ex in examples]


def _examples_in(path: Path) -> list[Example]:
    return [Example.from_dict(d) for d in read_jsonl(path)]


def prediction_rows(task: Task, examples: Sequence[Example], preds: Sequence, splits: Sequence[str]) -> list[dict]:
    """One row per example for predictions.jsonl: id (as in the input file), split, gold (QA: every gold
    answer), prediction, confidence (the probability of the predicted label; QA: the span score), whether
    it is correct, and the text (and context) so that the errors can be read.

    Example: {"id": "gold-12", "split": "mining", "gold": "positive", "prediction": "negative",
              "confidence": 0.91, "correct": false, "text": "..."}"""
    from ..metrics import gold_answers

    rows = []
    for ex, p, split in zip(examples, preds, splits):
        if task.kind == "qa":
            gold, pred, conf = gold_answers(ex), p.answer or "", p.score
        else:
            gold, pred, conf = ex.label, p.label, (p.probs or {}).get(p.label, p.score)
        rows.append({"id": ex.id, "split": split, "gold": gold, "prediction": pred,
                     "confidence": None if conf is None else round(float(conf), 6),
                     "correct": not is_error(task, ex, p), "text": ex.text,
                     **({"context": ex.context} if ex.context is not None else {})})
    return rows


def label_counts(examples: Sequence[Example]) -> dict:
    return dict(sorted(Counter(str(ex.label) for ex in examples).items()))


@dataclass(frozen=True)
class Step:
    """One LLM stage of a run's plan. kind: rationales | seed | zerogen | gold | extrapolate_all | extrapolate.
    `name` is the stage's key in manifest.json; `n` the examples to keep (seed); `round` for extrapolation."""

    name: str
    kind: str
    n: int = 0
    round: int = 0

    @property
    def label(self) -> str:
        """Example: Step("seed", "zerogen").label -> "seed (zerogen prompts)"."""
        return f"{self.name} (zerogen prompts)" if self.kind == "zerogen" else self.name


def stage_plan(cfg: RunConfig, task: Task) -> list[Step]:
    """The stages a run of `cfg` goes through, in order, read from its method's row; every round is listed
    although the loop may stop earlier (--min-gain, no errors left)."""
    m = cfg.method_spec
    steps = []
    if m.rationales and task.kind == "single" and task.stage("rationale") is not None:
        steps.append(Step("rationales", "rationales"))
    n = (cfg.size or cfg.seed_size) if m.sized else cfg.seed_size
    steps.append(Step("seed", m.seed, n) if m.seed else Step("seed", "gold"))
    if m.extrapolate_all:
        steps.append(Step("goldgen", "extrapolate_all", round=1))
    if m.rounds:
        steps += [Step(f"{LAYOUT.round_dir(q)}/extrapolate", "extrapolate", round=q) for q in range(1, cfg.rounds + 1)]
    return steps


def stage_warnings(cfg: RunConfig, task: Task, builder: PromptBuilder, seed_demos: int) -> list[str]:
    """One line for each LLM stage of a run of `cfg` that does not send what was asked: the rationale stage
    skipped for want of a prompt, a stage that falls back to the task's other prompt style, a few-shot
    completion prompt without demonstrations (`seed_demos`: the seed's, picked from the gold eval).

    Example (a single-text task with paper prompts only, style fewshot): ["stage rationales skipped: ...",
    "stage seed: task t has no fewshot prompt for it (prompts.seed.fewshot), so it sends its paper prompt: ..."]
    """
    out = []
    if cfg.method_spec.rationales and task.kind == "single" and task.stage("rationale") is None:
        out.append(f"stage rationales skipped: task {task.name} has no prompts.rationale, so the seed prompts "
                   "show no reasons ({rationales} is left empty); add prompts.rationale to the task file "
                   "(`s3synth new-task` writes one)")
    stages = {"rationales": "rationale", "seed": "seed", "extrapolate_all": "extrapolate", "extrapolate": "extrapolate"}
    for stage in dict.fromkeys(stages[s.kind] for s in stage_plan(cfg, task) if s.kind in stages):
        note = builder.fallback(stage)
        if note:
            out.append(note)
        elif stage != "rationale" and builder.completes(stage):
            n = seed_demos if stage == "seed" else len(task.stage(stage).fewshot.demos)
            if n == 0:
                where = ("the gold eval gave none (fewshot.n_demos)" if stage == "seed"
                         else f"prompts.{stage}.fewshot.demos is empty")
                out.append(f"stage {stage}: its fewshot completion prompt shows no demonstrations: {where}")
    return out


class S3:
    """One S3 run. `S3(RunConfig(...)).run("runs/x")`, or from Python:
    `S3(task="rte", gold_eval="rte_train.jsonl", test="rte_val.jsonl", llm="embedded").run("runs/rte")`.
    `llm` and `task` may also be objects (an LLM instance, a Task). The report is written by the caller
    (`s3synth.report.write_report(out)`), as the CLI does after `run`.
    """

    def __init__(self, config: RunConfig | None = None, *, task: Task | str | None = None, llm=None, **kw):
        if config is None:
            tname = task.name if isinstance(task, Task) else task
            config = RunConfig(task=tname, **({"llm": llm} if isinstance(llm, str) else {}), **kw)
        self.cfg = config
        self._task_obj = task if isinstance(task, Task) else None
        self._llm_obj = llm if (llm is not None and not isinstance(llm, str)) else None
        self._last_model = None
        self._guard = None

    # ------------------------------------------------------------------ preparation (no writes)
    def prepare(self) -> None:
        """Load and validate every input; raises before anything is written."""
        from ..hub import offline_mode
        from ..learners import DEFAULT_LEARNER, learner_class, learner_options
        from ..llm import Budget, make_llm
        from ..plugins import option_names

        cfg = self.cfg
        self.task = self._task_obj or load_task(cfg.task)
        columns = parse_columns(cfg.columns)
        gold_all = self._read("gold_eval", load_examples, id_prefix="gold", columns=columns)
        self.gold = subsample(gold_all, cfg.max_gold_eval, cfg.seed)
        # what the fingerprints take of each input: its loaded content (the same rows under other column
        # names fingerprint alike); the files' sha256 are recorded beside (see _input_keys)
        self.input_hashes = {"gold_eval": content_sha256(gold_all)}
        self.test = None
        if cfg.test:
            test_all = self._read("test", load_examples, id_prefix="test", columns=columns)
            self.input_hashes["test"] = content_sha256(test_all)
            self.test = subsample(test_all, cfg.max_test, cfg.seed if cfg.test_seed is None else cfg.test_seed)
        self.contexts = None
        if self.task.kind != "single":
            if cfg.contexts:
                self.contexts = self._read("contexts", load_contexts, columns=columns)
                self.input_hashes["contexts"] = content_sha256(self.contexts)
            else:
                self.contexts = self._gold_contexts()
        kind = (cfg.learner or DEFAULT_LEARNER).partition(":")[0]
        lopts = dict(cfg.learner_options)
        if cfg.executor == "ray" and "launcher" in option_names(learner_class(kind).Options):
            lopts.setdefault("launcher", "ray")     # --executor ray: workers > 1 train on Ray Train too
        self.train_config = learner_options(learner_class(kind), lopts, cfg.seed)
        with offline_mode(cfg.offline):      # a Hub encoder: downloaded once, or found in the cache, here
            learner = self._new_learner()
        learner.check()
        self.learner_source = getattr(learner, "model_source", None)
        self._check_quality_options()
        budget = Budget(max_tokens=cfg.max_tokens, max_cost=cfg.max_cost, price_in=cfg.price_in,
                        price_out=cfg.price_out, batch_discount=cfg.batch_discount)
        if self._llm_obj is not None:
            self.llm = self._llm_obj
            self.llm.seed, self.llm.budget, self.llm.cache_mode = cfg.seed, budget, cfg.cache_mode
        else:
            self.llm = make_llm(cfg.llm, seed=cfg.seed, cache_mode=cfg.cache_mode, budget=budget, **cfg.llm_options)
        from ..llm.executor import make_executor
        ex_opts = {**cfg.executor_options, **({"address": cfg.ray_address} if cfg.ray_address else {})}
        self.executor = make_executor(cfg.executor, **ex_opts)   # where uncached requests run; never in a fingerprint
        self.llm.executor = self.executor
        self.style = self.llm.default_prompt_style if cfg.prompt_style == "auto" else cfg.prompt_style
        # split gold eval: error mining / held out for selection; demonstrations come out of mining
        self.mining, self.holdout = stratified_split(self.gold, cfg.holdout_frac, cfg.seed)
        self.builder = PromptBuilder(self.task, style=self.style, temperature=cfg.temperature, top_p=cfg.top_p)
        # the seed's demonstrations, when its prompts are few-shot completions (asked for, or the task's only form)
        n_demos = self.task.stage("seed").fewshot.n_demos if self.builder.completes("seed") else 0
        self.demos = pick_demos(self.task, self.mining, n_demos, cfg.seed)
        demo_ids = {d.id for d in self.demos}
        self.mining = [ex for ex in self.mining if ex.id not in demo_ids]
        if not self.mining:
            raise S3Error(f"{cfg.gold_eval}: too few gold eval examples ({len(self.gold)}) to mine errors from; "
                          "give more or lower --holdout-frac")
        if cfg.per_context > 1 and self.task.kind == "single":
            raise S3Error(f"--per-context {cfg.per_context}: task {self.task.name} is a single-text task without "
                          "contexts; use --per-call")
        self.synth = Synthesizer(self.task, self.llm, self.builder, cfg.seed, per_call=cfg.per_call,
                                 per_context=cfg.per_context)
        self.plan = stage_plan(cfg, self.task)
        for step in self.plan:
            if step.kind in ("seed", "zerogen") and self.task.stage(step.kind) is None:
                raise S3Error(f"task {self.task.name} has no '{step.kind}' prompt; add prompts.{step.kind} "
                              "to the task file")
        for line in stage_warnings(cfg, self.task, self.builder, len(self.demos)):
            info(f"warning: {line}")
        if cfg.batch:
            self._use_batches()
        # what manifest.json records of each input: a file's path and sha256, a Hub dataset's commit and rows
        with offline_mode(cfg.offline):
            self.input_files = {k: source_record(getattr(cfg, k), revision=cfg.data_revision) for k in DATA_FIELDS
                                if getattr(cfg, k)}

    def _read(self, name: str, loader, **kw):
        """Input `name` of the config (gold_eval, test, contexts) read by `loader` (load_examples, load_contexts):
        a Hub dataset at --data-revision, downloaded once into the Hugging Face cache or, under --offline,
        found there."""
        from ..hub import offline_mode

        with offline_mode(self.cfg.offline):
            return loader(getattr(self.cfg, name), self.task, revision=self.cfg.data_revision, **kw)

    def _input_keys(self, m: dict) -> dict:
        """What the stages' fingerprints take of each input: the sha256 of its loaded content
        (`self.input_hashes`); a run directory of an earlier version, whose manifest records the files' sha256
        only, keeps fingerprinting those (the `sha256` of `self.input_files`), so that it still resumes."""
        old = m.get("inputs") if isinstance(m.get("inputs"), dict) else {}
        if m.get("stages") and old and not any(isinstance(v, dict) and "content_sha256" in v for v in old.values()):
            return {k: r.get("sha256") for k, r in self.input_files.items()}
        return self.input_hashes

    def _use_batches(self) -> None:
        """--batch: the LLM's uncached requests go to the provider's batch API (llm/batch.py), priced at the
        batch price by the budget; the backend must have one (openai, anthropic)."""
        from ..llm.batch import BatchExecutor

        if not hasattr(self.llm, "batch_provider"):
            raise S3Error(f"--batch: the {self.llm.backend} backend has no batch API; it works with openai:MODEL "
                          "and anthropic:MODEL - drop --batch")
        cfg = self.cfg
        if cfg.executor != "local":
            raise S3Error(f"--batch and --executor {cfg.executor} exclude each other: the provider runs a batch "
                          "itself - drop one")
        self.executor = self.llm.executor = BatchExecutor(fallback=cfg.batch_fallback, discount=cfg.batch_discount,
                                                          poll=cfg.batch_poll)

    def _check_quality_options(self) -> None:
        """--clean-labels / --mine / --final-train against the task and the learner (before any write)."""
        cfg, kind = self.cfg, self.task.kind
        if kind == "qa" and cfg.clean_labels != "none":
            raise S3Error(f"--clean-labels {cfg.clean_labels}: QA examples have no label to judge; use "
                          "--clean-labels none for task " + self.task.name)
        if kind == "qa" and cfg.mine == "margin":
            raise S3Error("--mine margin needs label probabilities; QA tasks take --mine misclassified or loss")
        if cfg.clean_labels != "none" and cfg.clean_with == "fast":
            self._clean_learner().check()
        weighted = cfg.clean_labels == "weight" or (cfg.final_with_gold and cfg.gold_weight != 1.0)
        if weighted and not _takes_weights(self._new_learner()):
            raise S3Error(f"learner {cfg.learner!r} does not take example weights (its fit has no `weights`), "
                          "which --clean-labels weight and --gold-weight need; use --clean-labels drop and "
                          "--gold-weight 1, or the minilm/hf/fast learner")
        self._clean_memo: dict[str, Cleaning] = {}

    def _clean_learner(self):
        from ..learners import make_learner

        if self.cfg.clean_with == "learner":
            return self._new_learner()
        return make_learner("fast", self.task, {"seed": self.cfg.seed})

    def _quality_key(self) -> list:
        """Fingerprint part of the rounds for --clean-labels / --mine (empty at the defaults, so that
        runs of earlier versions still resume)."""
        cfg, key = self.cfg, []
        if cfg.clean_labels != "none":
            key.append(("clean", cfg.clean_labels, cfg.clean_with, cfg.clean_folds))
        if cfg.mine == "margin":
            key.append(("mine", "margin", cfg.mine_margin))
        elif cfg.mine == "loss":
            key.append(("mine", "loss", cfg.mine_share))
        return key

    def _final_key(self) -> list:
        """Fingerprint part of the final stage for --final-train synthetic+gold (empty otherwise)."""
        return [("final-train", "synthetic+gold", self.cfg.gold_weight)] if self.cfg.final_with_gold else []

    def _training_set(self, rd: RunDir, cleaned_file: str, synthetic: list[Example], with_gold: bool = False
                      ) -> tuple[list[Example], list[float] | None, dict]:
        """What a learner trains on: the synthetic examples (cleaned under --clean-labels; what was dropped or
        down-weighted goes to `cleaned_file`), plus the gold eval's mining part when `with_gold`.
        Returns (examples, weights or None when all weigh 1, summary for metrics.json)."""
        cfg = self.cfg
        info_out: dict = {}
        train, weights = list(synthetic), None
        if cfg.clean_labels != "none" and synthetic:
            key = fingerprint([e.to_dict() for e in synthetic], self._quality_key())
            c = self._clean_memo.get(key)
            if c is None:
                c = clean_labels(synthetic, self.task.label_names, cfg.clean_labels, self._clean_learner,
                                 cfg.clean_folds, cfg.seed)
                self._clean_memo[key] = c
            write_jsonl(rd / cleaned_file, c.rows)
            train, weights, info_out["cleaning"] = list(c.kept), c.weights, c.summary
        if with_gold:
            gold = self._mining_gold()
            if weights is not None or cfg.gold_weight != 1.0:
                weights = (weights or [1.0] * len(train)) + [cfg.gold_weight] * len(gold)
            info_out["parts"] = {"synthetic": len(train), "gold": len(gold), "gold_weight": cfg.gold_weight}
            train = train + gold
        return train, weights, info_out

    def _mining_gold(self) -> list[Example]:
        """The gold eval less its held-out slice (the mining part with its demonstrations): what method gold
        trains on, and what `--final-train synthetic+gold` adds to the synthetic data."""
        held = {ex.id for ex in self.holdout}
        return [ex for ex in self.gold if ex.id not in held]

    def _fit(self, learner, train: list[Example], weights: list[float] | None) -> dict:
        if weights is None:
            return learner.fit(train, self.holdout or self.mining)
        return learner.fit(train, self.holdout or self.mining, weights=weights)

    def _gold_contexts(self) -> list[dict]:
        """Pair/QA tasks without --contexts: the gold eval's distinct contexts (with their answers for QA)."""
        seen, out = set(), []
        for ex in self.gold:
            key = (ex.context, ex.answer["text"] if ex.answer else None)
            if key not in seen:
                seen.add(key)
                out.append({"context": ex.context, **({"answer": ex.answer} if ex.answer else {})})
        return out

    def _usage(self) -> dict:
        """LLM requests and tokens served so far (cached or new); a stage records its difference."""
        now = self.llm.stats.to_dict()
        return {k: now[k] for k in ("requests", "calls", "batch_calls", "used_prompt_tokens", "used_completion_tokens")}

    def _record_batches(self, m: dict) -> None:
        """manifest.json's llm.batch: the provider batches recorded in the cache, the stages whose answers came
        (partly) from batches, and the settings (nothing when no batch was ever used)."""
        batches = self.llm.cache.batches()
        if not batches and not self.cfg.batch:
            return
        stages = [name for name, st in m.get("stages", {}).items()
                  if isinstance(st, dict) and (st.get("llm") or {}).get("batch_calls")]
        m["llm"]["batch"] = {"used": self.cfg.batch, "fallback": self.cfg.batch_fallback,
                             "discount": self.cfg.batch_discount, "stages": stages, "batches": batches,
                             "spent": self.llm.cache.batch_spent()}

    def _new_learner(self):
        from ..learners import make_learner
        return make_learner(self.cfg.learner, self.task, self.train_config, model_path=self.cfg.learner_path)

    # ------------------------------------------------------------------ what each LLM stage sends
    def synthesize(self, step: Step, synth: Synthesizer, rationales: dict | None = None,
                   sources: Sequence[Example] = ()) -> object:
        """Run `step` through `synth`: the run calls this with the real LLM, the estimate with one that
        records the requests. Returns the synthesizer's output (rationales or examples)."""
        if step.kind == "rationales":
            return synth.rationales()
        if step.kind in ("seed", "zerogen"):
            shown = rationales if step.kind == "seed" else None
            self.builder.demos["seed"] = [self.builder.example_fields("seed", d, shown, self.cfg.seed)
                                          for d in self.demos]
            return synth.seed_examples(step.n, rationales=shown, contexts=self.contexts, stage=step.kind)
        if step.kind in ("extrapolate", "extrapolate_all"):
            self._extrapolate_demos()
            return synth.extrapolate(sources, step.round, attempts=self.cfg.extrapolate_attempts)
        raise ValueError(f"step {step.name} ({step.kind}) sends no LLM requests")

    # ------------------------------------------------------------------ the run
    def run(self, out: str | Path) -> dict:
        from ..hub import offline_mode

        t0 = time.time()
        self.prepare()
        note = export_note(self.cfg.learner)
        if note:
            info(note)
        fetch = getattr(self.llm, "fetch", None)
        if fetch is not None:
            with offline_mode(self.cfg.offline):    # a Hub generator's files, before anything is written
                fetch()
        rd = RunDir(out).open()
        self.rd = rd
        try:
            self.llm.cache = rd.open_cache(self.cfg.cache_path)
            result = self._run(rd, t0)
        finally:
            try:
                inv = rd.manifest["invocations"]
                if inv and "seconds" not in inv[-1]:
                    inv[-1]["seconds"] = round(time.time() - t0, 2)
                    inv[-1]["llm"] = self.llm.stats.to_dict()
                    inv[-1]["interrupted"] = True
                if self.llm.cache is not None:
                    rd.manifest["llm"] = {**rd.manifest.get("llm", {}), "spent_total": self.llm.cache.spent()}
                    self._record_batches(rd.manifest)
                rd.save_manifest()
            finally:        # the lock is let go even when the manifest cannot be written (disk full)
                if self.llm.cache is not None:
                    self.llm.cache.close()      # checkpoints the WAL: the cache is one file again
                try:
                    self.llm.close()
                finally:
                    self.executor.close()
                    rd.close()
        self._write_model_card(rd.path)
        return result

    @staticmethod
    def _write_model_card(path: Path) -> None:
        """final/model/README.md, once the run is finished and its lock let go: a by-product built from the run
        directory like the report (not a stage output: `s3synth report` writes it again), so a failure warns."""
        from ..report.cards import write_model_card

        try:
            write_model_card(path)
        except (S3Error, OSError, ValueError) as e:
            info(f"warning: no model card written ({e}); try `s3synth report {path}`")

    def _run(self, rd: RunDir, t0: float) -> dict:
        cfg, task = self.cfg, self.task
        atomic_write_text(rd / LAYOUT.config, to_toml(cfg.to_dict()))
        m = rd.manifest
        inputs = self._input_keys(m)
        m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        m.update({
            "versions": versions(), "seed": cfg.seed, "task": task.name, "task_source": task.source,
            "llm": {**m.get("llm", {}), "name": self.llm.name, "identity": self.llm.identity()},
            "prompt_style": self.style, "method": cfg.method, "models": self._model_sources(),
            "inputs": {k: {**r, **({"content_sha256": self.input_hashes[k]} if inputs is self.input_hashes and
                                   k in self.input_hashes else {})}
                       for k, r in self.input_files.items()},
            "split": {"gold_eval": len(self.gold), "mining": len(self.mining), "holdout": len(self.holdout),
                      "demos": [d.id for d in self.demos], "test": len(self.test) if self.test else 0},
        })
        m["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command_line(),
                                 "executor": self.executor.describe()})
        rd.save_manifest()

        base_fp = fingerprint(task.source, task.name, repr(task.prompts), inputs, cfg.max_gold_eval,
                              cfg.seed, cfg.holdout_frac, self.llm.identity(), self.style, cfg.temperature,
                              cfg.top_p)
        learn_fp = fingerprint(cfg.learner, cfg.learner_path, self._learner_key(),
                               cfg.balance, cfg.extrapolate_attempts, cfg.max_test, inputs.get("test"),
                               *self._screen_key(), *self._quality_key(), *self._learner_sha(),
                               *([("test-seed", cfg.test_seed)] if cfg.test_seed is not None else []))
        rationales, seed, seed_fp = None, [], base_fp
        added: list[Example] = []
        prev_fp = None
        rounds = []
        for step in self.plan:
            if step.kind == "rationales":
                rationales = self._rationales(rd, base_fp, step)
            elif step.name == "seed":
                seed, seed_fp = self._seed(rd, base_fp, step, rationales)
                prev_fp = seed_fp
            elif step.kind == "extrapolate_all":
                added = self._extrapolate_all(rd, fingerprint(seed_fp, learn_fp, "goldgen", *self._screen_key()),
                                              step, seed)
                prev_fp = fingerprint(seed_fp, "goldgen", len(added))
            else:
                rounds.append(step)

        rounds_out, prev_sel, extrapolated_last = [], None, True
        stop_reason = (f"completed {len(rounds)} round(s)" if rounds
                       else f"method {cfg.method}: no error-extrapolation rounds")
        for step in rounds:
            q = step.round
            fp = fingerprint(prev_fp, learn_fp, q)
            res = self._train_round(rd, q, fp, seed + added)
            sel = res["holdout"][res["selection_metric"]] if res.get("holdout") else None
            rounds_out.append(res)
            if q > 1 and sel is not None and prev_sel is not None and sel - prev_sel < cfg.min_gain:
                stop_reason = (f"stopped after training round {q}: held-out {res['selection_metric']} "
                               f"{sel:.4f} gained {sel - prev_sel:+.4f} < --min-gain {cfg.min_gain}")
                extrapolated_last = False
                break
            if res.get("mined", res["errors"]) == 0:
                stop_reason = (f"stopped in round {q}: no errors left on the gold eval mining set" if cfg.mine ==
                               "misclassified" else f"stopped in round {q}: --mine {cfg.mine} found nothing to mine")
                extrapolated_last = False
                break
            new = self._extrapolate_round(rd, step, fp, seed + added)
            rounds_out[-1] = read_json(rd / LAYOUT.round(q, "metrics"))
            added += new
            prev_fp, prev_sel = fingerprint(fp, "added", len(new)), sel
        m["stop_reason"] = stop_reason
        rd.save_manifest()

        final = self._final(rd, fingerprint(prev_fp, learn_fp, "final", extrapolated_last, *self._final_key()),
                            seed + added)
        synthetic, real = final_counts(cfg.method, final)
        result = {"task": task.name, "method": cfg.method, "out": str(rd.path),
                  "seed_size": len(seed) if cfg.method_spec.seed else 0, "added": len(added),
                  "synthetic": synthetic, "real": real,
                  "rounds": [{k: r.get(k) for k in ("round", "train_size", "holdout", "test", "errors", "added",
                                                     "added_label_counts")} for r in rounds_out],
                  "final": final, "stop_reason": stop_reason, "headline_metric": headline_metric(task)}
        inv = m["invocations"][-1]
        inv["seconds"] = round(time.time() - t0, 2)
        inv["llm"] = self.llm.stats.to_dict()
        m["llm"]["spent_total"] = self.llm.cache.spent()
        self._record_batches(m)
        m["result"] = {"final_test": final.get("test"), "seed_size": result["seed_size"], "added": len(added),
                       "synthetic": synthetic, "real": real}
        rd.save_manifest()
        return result

    # ------------------------------------------------------------------ stages
    def _rationales(self, rd: RunDir, fp: str, step: Step) -> dict:
        st = rd.stage("rationales", fp, LAYOUT.rationales, usage=self._usage)
        if st.done:
            return read_json(rd / LAYOUT.rationales)
        info(f"stage: rationales ({self.builder.describe('rationale')})")
        with st:
            rat = self.synthesize(step, self.synth)
            write_json(rd / LAYOUT.rationales, rat)
            rd.manifest["synthesis"]["rationale"] = self.synth.reports["rationale"].to_dict()
            st.extra["per_label"] = {k: len(v) for k, v in rat.items()}
        empty = [lab for lab, v in rat.items() if not v]
        if empty:
            info(f"warning: no usable rationales for {', '.join(empty)}; its seed prompts go without reasons")
        return rat

    def _seed(self, rd: RunDir, base_fp: str, step: Step, rationales: dict | None) -> tuple[list[Example], str]:
        """The seed set and its fingerprint (which the later stages build on)."""
        if step.kind == "gold":        # the real gold-eval data itself (minus the held-out slice)
            return self._mining_gold(), fingerprint(base_fp, "gold")
        seed_fp = (fingerprint(base_fp, "zerogen", step.n) if step.kind == "zerogen"
                   else fingerprint(base_fp, step.n, rationales))
        if self.synth.per_request > 1:     # list requests (the default of one leaves older runs' fingerprints)
            seed_fp = fingerprint(seed_fp, "per-request", self.cfg.per_call, self.cfg.per_context)
        key = self._screen_key()
        st = rd.stage("seed", fingerprint(seed_fp, *key) if key else seed_fp, LAYOUT.seed, usage=self._usage)
        if st.done:
            return _examples_in(rd / LAYOUT.seed), seed_fp
        info(f"stage: {step.label} ({step.n} examples, {self.builder.describe(step.kind, len(self.demos))})")
        with st:
            seed = self.synthesize(step, self.synth, rationales)
            for i, ex in enumerate(seed):
                ex.id = f"seed-{i}"
            if not seed:
                rep = self.synth.reports[step.kind]
                rd.manifest["synthesis"][step.kind] = rep.to_dict()
                why = ", ".join(f"{n} {reason}" for reason, n in rep.rejects.most_common(3))
                if rep.first_error is not None:     # every request failed the same way, most often: say how
                    why += f"; the first LLM error: {rep.first_error}"
                raise S3Error(f"the LLM produced no usable seed example ({why or 'no answers'}); see manifest.json "
                              "'synthesis' for the reject reasons, or try --prompt-style paper/fewshot")
            seed, _ = self._screen(rd, "seed", seed)
            if not seed:
                raise S3Error(f"--drop-leaks/--dedup dropped every seed example; see {LAYOUT.seed_dropped}")
            write_jsonl(rd / LAYOUT.seed, _examples_out(seed))
            rd.manifest["synthesis"][step.kind] = self.synth.reports[step.kind].to_dict()
            rd.manifest["seed_label_counts"] = label_counts(seed)
            st.extra["examples"] = len(seed)
        return seed, seed_fp

    def _model_sources(self) -> dict:
        """manifest.json "models": where the learner's and the generator's weights came from (a folder, or a
        Hub name with the revision asked for and the commit sha it resolved to)."""
        out = {}
        for role, src in (("learner", self.learner_source), ("llm", getattr(self.llm, "model_source", None))):
            if src is not None:
                out[role] = src.to_dict()
        return out

    # options that say where or how fast a learner trains, not what it learns: left out of the fingerprint
    # (a run resumed with --learner-option workers=2 keeps its trained rounds)
    PLACEMENT_OPTIONS = ("revision", "workers", "launcher")

    def _learner_key(self) -> dict:
        """The learner's options for its stages' fingerprint; a Hub revision enters as the commit it resolved
        to (`_learner_sha`), so "main" and that commit's sha are the same weights."""
        return {k: v for k, v in dataclasses.asdict(self.train_config).items() if k not in self.PLACEMENT_OPTIONS}

    def _learner_sha(self) -> list:
        """Fingerprint part for a Hub encoder: its commit (empty for a folder, so older runs still resume)."""
        src = self.learner_source
        return [("base_sha", src.sha)] if src is not None and src.sha else []

    def _screen_key(self) -> list:
        """Fingerprint part for --drop-leaks/--dedup (empty when both are off, so older runs still resume)."""
        return [("screen", self.cfg.drop_leaks, self.cfg.dedup)] if (self.cfg.drop_leaks or self.cfg.dedup) else []

    def _screen(self, rd: RunDir, stage: str, examples: list[Example], prior: Sequence[Example] = ()
                ) -> tuple[list[Example], dict]:
        """Flag leaks (n-gram overlap with the gold eval) and duplicates; record the counts in the manifest,
        drop them under --drop-leaks/--dedup (dropped rows go to LAYOUT.dropped(stage))."""
        from ..analysis import LeakGuard, screen

        if self._guard is None:
            self._guard = LeakGuard(self.gold)
        kept, dropped, leak, dup = screen(examples, self._guard, prior, drop_leaks=self.cfg.drop_leaks,
                                          dedup=self.cfg.dedup)
        write_jsonl(rd / LAYOUT.dropped(stage), dropped)
        for key, summary in (("leakage", leak), ("dedup", dup)):
            rd.manifest.setdefault(key, {})[stage] = {k: v for k, v in summary.items() if not k.endswith("_ids")}
        if leak["flagged"] or dup["duplicates"]:
            info(f"{stage}: {leak['flagged']} of {len(examples)} flagged as gold-eval leaks, "
                 f"{dup['duplicates']} duplicates; dropped {len(dropped)}")
        return kept, {"leakage": leak, "dedup": dup}

    def _extrapolate_demos(self) -> None:
        sp = self.task.stage("extrapolate")
        if "extrapolate" not in self.builder.demos and sp.fewshot and sp.fewshot.demos:
            self.builder.demos["extrapolate"] = [self.builder.handwritten_fields("extrapolate", d)
                                                 for d in sp.fewshot.demos]

    def _extrapolate_all(self, rd: RunDir, fp: str, step: Step, seed: list[Example]) -> list[Example]:
        added_file = LAYOUT.round(1, "added")
        st = rd.stage(step.name, fp, added_file, usage=self._usage)
        if st.done:
            return _examples_in(rd / added_file)
        info(f"stage: {step.name}: extrapolate all {len(self.mining)} gold eval examples "
             f"({self.builder.describe('extrapolate')})")
        with st:
            added = self.synthesize(step, self.synth, sources=self.mining)
            added, _ = self._screen(rd, LAYOUT.round_dir(1), added, seed)
            write_jsonl(rd / added_file, _examples_out(added))
            rd.manifest["synthesis"][step.name] = self.synth.reports["extrapolate-round-1"].to_dict()
            st.extra["added"] = len(added)
        return added

    def _train_round(self, rd: RunDir, q: int, fp: str, synthetic: list[Example]) -> dict:
        name, cfg = LAYOUT.round_dir(q), self.cfg
        outputs = [LAYOUT.round(q, "metrics"), LAYOUT.round(q, "errors")]
        if cfg.clean_labels != "none":
            outputs.append(LAYOUT.round(q, "cleaned"))
        st = rd.stage(f"{name}/train", fp, *outputs)
        if st.done:
            return read_json(rd / LAYOUT.round(q, "metrics"))
        info(f"stage: round {q}: train {cfg.learner} on {len(synthetic)} synthetic examples")
        with st:
            train, weights, parts = self._training_set(rd, LAYOUT.round(q, "cleaned"), synthetic)
            if parts.get("cleaning"):
                self._print_cleaning(f"round {q}", parts["cleaning"])
            learner = self._new_learner()
            history = self._fit(learner, train, weights)
            preds, scores = self._predict_all(learner)
            gold_preds = preds["mining"] + preds["holdout"]
            write_jsonl(rd / LAYOUT.round(q, "predictions"), prediction_rows(
                self.task, self.mining + (self.holdout or []), gold_preds,
                ["mining"] * len(self.mining) + ["holdout"] * len(self.holdout or [])))
            preds = preds["mining"]
            errors = [ex for ex, p in zip(self.mining, preds) if is_error(self.task, ex, p)]
            mined, correct, mined_info = mine(self.task, self.mining, preds, cfg.mine, margin_max=cfg.mine_margin,
                                              share=cfg.mine_share)
            sources, bal = balance_sources(self.task, mined, correct, cfg.balance, cfg.seed, q)
            res = {
                "round": q, "train_size": len(train), "train_label_counts": label_counts(train),
                "selection_metric": selection_metric(self.task), "history": history,
                "mining": evaluate(self.task, self.mining, preds), **scores,
                "errors": len(errors), "balance": bal, "seconds_train": st.seconds, **parts,
            }
            if cfg.mine != "misclassified":
                res.update({"mined": len(mined), "mine": mined_info})
            write_jsonl(rd / LAYOUT.round(q, "errors"), _examples_out(errors))
            write_jsonl(rd / LAYOUT.round(q, "sources"), _examples_out(sources))
            write_json(rd / LAYOUT.round(q, "metrics"), res)
        self._last_model = (fingerprint([e.to_dict() for e in train], weights), learner, res)
        self._print_round(res)
        return res

    def _extrapolate_round(self, rd: RunDir, step: Step, fp: str, prior: list[Example]) -> list[Example]:
        q = step.round
        st = rd.stage(step.name, fp, LAYOUT.round(q, "added"), usage=self._usage)
        if st.done:
            return _examples_in(rd / LAYOUT.round(q, "added"))
        sources = _examples_in(rd / LAYOUT.round(q, "sources"))
        info(f"stage: round {q}: extrapolate {len(sources)} gold eval examples "
             f"({self.builder.describe('extrapolate')})")
        with st:
            added = self.synthesize(step, self.synth, sources=sources)
            added, screened = self._screen(rd, LAYOUT.round_dir(q), added, prior)
            write_jsonl(rd / LAYOUT.round(q, "added"), _examples_out(added))
            res = read_json(rd / LAYOUT.round(q, "metrics"))
            res.update({"added": len(added), "added_label_counts": label_counts(added), **screened,
                        "seconds_extrapolate": st.seconds,
                        "synthesis": self.synth.reports[f"extrapolate-round-{q}"].to_dict()})
            write_json(rd / LAYOUT.round(q, "metrics"), res)
            rd.manifest["synthesis"][f"extrapolate-round-{q}"] = res["synthesis"]
            st.extra["added"] = len(added)
        return added

    def _final(self, rd: RunDir, fp: str, synthetic: list[Example]) -> dict:
        cfg = self.cfg
        st = rd.stage("final", fp, LAYOUT.final_metrics)
        if st.done:
            return read_json(rd / LAYOUT.final_metrics)
        with_gold = cfg.final_with_gold
        if cfg.method_spec.seed is None:        # method gold: `synthetic` is the real mining part itself
            info(f"stage: final: train {cfg.learner} on {len(synthetic)} real examples (the gold eval's mining part)")
        else:
            info(f"stage: final: train {cfg.learner} on {len(synthetic)} synthetic examples"
                 + (f" + {len(self._mining_gold())} real ones (the gold eval's mining part)" if with_gold else ""))
        with st:
            train, weights, parts = self._training_set(rd, LAYOUT.final_cleaned, synthetic, with_gold)
            key = fingerprint([e.to_dict() for e in train], weights)
            if self._last_model and self._last_model[0] == key:
                _, learner, r = self._last_model
                history, reused = r["history"], LAYOUT.round_dir(r["round"])
            else:
                if parts.get("cleaning"):
                    self._print_cleaning("final", parts["cleaning"])
                learner = self._new_learner()
                history, reused = self._fit(learner, train, weights), None
            preds, scores = self._predict_all(learner, mining=False)
            res = {"train_size": len(train), "train_label_counts": label_counts(train), "history": history,
                   "reused_model_of": reused, **parts, **scores, "seconds": st.seconds}
            if self.test:
                write_jsonl(rd / LAYOUT.final_predictions,
                            prediction_rows(self.task, self.test, preds["test"], ["test"] * len(self.test)))
            learner.save(rd / LAYOUT.final_model)
            write_jsonl(rd / LAYOUT.final_train, [example_row(ex, self.task) for ex in train])   # the task's names
            write_json(rd / LAYOUT.final_metrics, res)
        return res

    def _predict_all(self, learner, mining: bool = True) -> tuple[dict, dict]:
        """One prediction pass over the mining, held-out and test examples: ({split: predictions},
        {"holdout": metrics or None, "test": metrics or None})."""
        parts = [("mining", self.mining if mining else []), ("holdout", self.holdout or []),
                 ("test", self.test or [])]
        preds = learner.predict([ex for _, exs in parts for ex in exs])
        out, i = {}, 0
        for name, exs in parts:
            out[name] = preds[i:i + len(exs)]
            i += len(exs)
        scores = {name: evaluate(self.task, exs, out[name]) if exs else None for name, exs in parts[1:]}
        return out, scores

    def _print_cleaning(self, where: str, c: dict) -> None:
        if c.get("skipped"):
            info(f"{where}: --clean-labels: {c['skipped']}")
        else:
            verb = "dropped" if c["mode"] == "drop" else "down-weighted"
            info(f"{where}: --clean-labels {verb} {c['flagged']} of {c['examples']} synthetic examples "
                 f"({c['share']:.1%}) as likely mislabelled")

    def _print_round(self, res: dict) -> None:
        hm = headline_metric(self.task)
        parts = [f"round {res['round']}: train {res['train_size']}"]
        if res.get("holdout"):
            parts.append(f"held-out {hm} {res['holdout'][hm]:.3f}")
        if res.get("test"):
            parts.append(f"test {hm} {res['test'][hm]:.3f}")
        parts.append(f"errors {res['errors']}")
        info(" | ".join(parts))


def _takes_weights(learner) -> bool:
    """True when the learner's fit accepts per-example loss weights (`weights=`)."""
    import inspect

    try:
        return "weights" in inspect.signature(learner.fit).parameters
    except (TypeError, ValueError):
        return False
