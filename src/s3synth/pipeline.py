"""The S3 loop: seed synthesis -> (train -> mine errors -> extrapolate) x R -> final model.

Every stage writes its outputs atomically and records a fingerprint of its inputs in the manifest;
a re-run skips finished stages, and a killed stage resumes with every LLM answer taken from the cache.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from .config import RunConfig, to_toml
from .data import Example, file_sha256, load_contexts, load_examples, stratified_split, subsample
from .errors import S3Error
from .io import atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from .metrics import evaluate, headline_metric, is_error, selection_metric
from .progress import info
from .prompts import PromptBuilder
from .rundir import RunDir, command_line, fingerprint, versions
from .synth import Synthesizer, balance_sources, pick_demos
from .tasks import Task, load_task


def _examples_out(examples: Sequence[Example]) -> list[dict]:
    return [ex.to_dict() for ex in examples]


def _examples_in(path: Path) -> list[Example]:
    return [Example.from_dict(d) for d in read_jsonl(path)]


def label_counts(examples: Sequence[Example]) -> dict:
    return dict(sorted(Counter(str(ex.label) for ex in examples).items()))


class S3:
    """One S3 run. `S3(RunConfig(...)).run("runs/x")`, or from Python:
    `S3(task="rte", gold_eval="rte_train.jsonl", test="rte_val.jsonl", llm="embedded").run("runs/rte")`.
    """

    def __init__(self, config: RunConfig | None = None, *, task: Task | str | None = None, llm=None, **kw):
        if config is None:
            tname = task.name if isinstance(task, Task) else task
            config = RunConfig(task=tname, **({"llm": llm} if isinstance(llm, str) else {}), **kw)
        self.cfg = config
        self._task_obj = task if isinstance(task, Task) else None
        self._llm_obj = llm if (llm is not None and not isinstance(llm, str)) else None
        self._last_model = None

    # ------------------------------------------------------------------ preparation (no writes)
    def prepare(self) -> None:
        """Load and validate every input; raises before anything is written."""
        from .learners import make_learner
        from .learners.base import TrainConfig
        from .llm import Budget, make_llm

        cfg = self.cfg
        self.task = self._task_obj or load_task(cfg.task)
        gold_all = load_examples(cfg.gold_eval, self.task, id_prefix="gold")
        self.gold = subsample(gold_all, cfg.max_gold_eval, cfg.seed)
        self.test = None
        if cfg.test:
            self.test = subsample(load_examples(cfg.test, self.task, id_prefix="test"), cfg.max_test, cfg.seed)
        if self.task.kind != "single":
            if cfg.contexts:
                self.contexts = load_contexts(cfg.contexts, self.task)
            else:
                seen, self.contexts = set(), []
                for ex in self.gold:
                    key = (ex.context, ex.answer["text"] if ex.answer else None)
                    if key not in seen:
                        seen.add(key)
                        self.contexts.append({"context": ex.context, **({"answer": ex.answer} if ex.answer else {})})
        else:
            self.contexts = None
        self.train_config = TrainConfig.from_dict({"seed": cfg.seed, **cfg.learner_settings})
        make_learner(cfg.learner, self.task, self.train_config, model_path=cfg.learner_path).check()
        budget = Budget(max_tokens=cfg.max_tokens, max_cost=cfg.max_cost, price_in=cfg.price_in,
                        price_out=cfg.price_out)
        if self._llm_obj is not None:
            self.llm = self._llm_obj
            self.llm.seed, self.llm.budget, self.llm.cache_mode = cfg.seed, budget, cfg.cache_mode
        else:
            kw = {}
            if cfg.llm.startswith("openai"):
                kw = {"api_key_env": cfg.api_key_env, "concurrency": cfg.concurrency, "mode": cfg.llm_mode,
                      "timeout": cfg.llm_timeout}
                if cfg.base_url:
                    kw["base_url"] = cfg.base_url
            elif cfg.llm.split(":", 1)[0] == "embedded":
                kw = {"weights": cfg.embedded_weights}
            self.llm = make_llm(cfg.llm, seed=cfg.seed, cache_mode=cfg.cache_mode, budget=budget, **kw)
        style = cfg.prompt_style
        if style == "auto":
            style = "fewshot" if self.llm.backend in ("embedded", "fake") else "paper"
        self.style = style
        # split gold eval: error mining / held out for selection; demonstrations come out of mining
        self.mining, self.holdout = stratified_split(self.gold, cfg.holdout_frac, cfg.seed)
        sp = self.task.stage("seed")
        n_demos = sp.fewshot.n_demos if (style == "fewshot" and sp.fewshot and not sp.fewshot.is_chat) else 0
        self.demos = pick_demos(self.task, self.mining, n_demos, cfg.seed)
        demo_ids = {d.id for d in self.demos}
        self.mining = [ex for ex in self.mining if ex.id not in demo_ids]
        if not self.mining:
            raise S3Error(f"{cfg.gold_eval}: too few gold eval examples ({len(self.gold)}) to mine errors from; "
                          "give more or lower --holdout-frac")
        self.builder = PromptBuilder(self.task, style=style, temperature=cfg.temperature, top_p=cfg.top_p)
        self.synth = Synthesizer(self.task, self.llm, self.builder, cfg.seed)
        self.input_hashes = {"gold_eval": file_sha256(cfg.gold_eval)}
        if cfg.test:
            self.input_hashes["test"] = file_sha256(cfg.test)
        if cfg.contexts:
            self.input_hashes["contexts"] = file_sha256(cfg.contexts)

    def _usage(self, before: dict | None = None) -> dict:
        """LLM requests and tokens served since `before` (a snapshot from `_usage()`), cached or new."""
        now = self.llm.stats.to_dict()
        keys = ("requests", "calls", "used_prompt_tokens", "used_completion_tokens")
        return {k: now[k] - (before or {}).get(k, 0) for k in keys}

    def _new_learner(self):
        from .learners import make_learner
        return make_learner(self.cfg.learner, self.task, self.train_config, model_path=self.cfg.learner_path)

    # ------------------------------------------------------------------ the run
    def run(self, out: str | Path) -> dict:
        t0 = time.time()
        self.prepare()
        rd = RunDir(out).open()
        self.rd = rd
        try:
            from .llm.cache import LLMCache
            self.llm.cache = LLMCache(self.cfg.cache_path or (rd / "llm_cache.sqlite"))
            return self._run(rd, t0)
        finally:
            inv = rd.manifest["invocations"]
            if inv and "seconds" not in inv[-1]:
                inv[-1]["seconds"] = round(time.time() - t0, 2)
                inv[-1]["llm"] = self.llm.stats.to_dict()
                inv[-1]["interrupted"] = True
            if self.llm.cache is not None:
                rd.manifest["llm"] = {**rd.manifest.get("llm", {}), "spent_total": self.llm.cache.spent()}
            rd.save_manifest()
            self.llm.close()
            rd.close()

    def _run(self, rd: RunDir, t0: float) -> dict:
        cfg, task = self.cfg, self.task
        atomic_write_text(rd / "config.toml", to_toml(cfg.to_dict()))
        m = rd.manifest
        m.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        m.update({
            "versions": versions(), "seed": cfg.seed, "task": task.name, "task_source": task.source,
            "llm": {**m.get("llm", {}), "name": self.llm.name, "identity": self.llm.identity()},
            "prompt_style": self.style, "method": cfg.method,
            "inputs": {k: {"path": str(getattr(cfg, k)), "sha256": v} for k, v in self.input_hashes.items()},
            "split": {"gold_eval": len(self.gold), "mining": len(self.mining), "holdout": len(self.holdout),
                      "demos": [d.id for d in self.demos], "test": len(self.test) if self.test else 0},
        })
        m["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command_line()})
        rd.save_manifest()

        base_fp = fingerprint(task.source, task.name, repr(task.prompts), self.input_hashes, cfg.max_gold_eval,
                              cfg.seed, cfg.holdout_frac, self.llm.identity(), self.style, cfg.temperature,
                              cfg.top_p)
        method = cfg.method
        rationales = self._rationales(rd, base_fp) if method in ("s3", "seed-only", "goldgen") else None
        if method == "gold":        # the real gold-eval data itself (minus the held-out slice)
            held = {ex.id for ex in self.holdout}
            seed = [ex for ex in self.gold if ex.id not in held]
            seed_fp = fingerprint(base_fp, "gold")
        elif method in ("zerogen", "zerogen-s3"):   # one fixed task prompt per label, no rationales, no feedback
            n = (cfg.size or cfg.seed_size) if method == "zerogen" else cfg.seed_size
            seed_fp = fingerprint(base_fp, "zerogen", n)
            seed = self._seed(rd, seed_fp, None, n=n, stage="zerogen")
        else:
            n = (cfg.size or cfg.seed_size) if method == "seed-only" else cfg.seed_size
            seed_fp = fingerprint(base_fp, n, rationales)
            seed = self._seed(rd, seed_fp, rationales, n=n)

        added: list[Example] = []
        rounds_out, prev_fp, prev_sel = [], seed_fp, None
        stop_reason = f"completed {cfg.rounds} round(s)"
        learn_fp = fingerprint(cfg.learner, cfg.learner_path, self.train_config.to_dict(), cfg.balance,
                               cfg.extrapolate_attempts, cfg.max_test, self.input_hashes.get("test"),
                               *self._screen_key())
        extrapolated_last = True
        n_rounds = cfg.rounds if method in ("s3", "zerogen-s3") else 0
        if method == "goldgen":     # extrapolate every mining example once, not only the errors
            added = self._goldgen(rd, fingerprint(seed_fp, learn_fp, "goldgen", *self._screen_key()), seed)
            prev_fp = fingerprint(seed_fp, "goldgen", len(added))
        if not n_rounds:
            stop_reason = f"method {method}: no error-extrapolation rounds"
        for q in range(1, n_rounds + 1):
            fp = fingerprint(prev_fp, learn_fp, q)
            res = self._train_round(rd, q, fp, seed + added)
            sel = res["holdout"][res["selection_metric"]] if res.get("holdout") else None
            rounds_out.append(res)
            if q > 1 and sel is not None and prev_sel is not None and sel - prev_sel < cfg.min_gain:
                stop_reason = (f"stopped after training round {q}: held-out {res['selection_metric']} "
                               f"{sel:.4f} gained {sel - prev_sel:+.4f} < --min-gain {cfg.min_gain}")
                extrapolated_last = False
                break
            if res["errors"] == 0:
                stop_reason = f"stopped in round {q}: no errors left on the gold eval mining set"
                extrapolated_last = False
                break
            new = self._extrapolate_round(rd, q, fp, seed + added)
            rounds_out[-1] = read_json(rd / f"round-{q}/metrics.json")
            added += new
            prev_fp, prev_sel = fingerprint(fp, "added", len(new)), sel
        m["stop_reason"] = stop_reason
        rd.save_manifest()

        final = self._final(rd, fingerprint(prev_fp, learn_fp, "final", extrapolated_last), seed + added,
                            reuse=not extrapolated_last and rounds_out)
        result = {"task": task.name, "method": method, "out": str(rd.path), "seed_size": len(seed),
                  "added": len(added),
                  "rounds": [{k: r.get(k) for k in ("round", "train_size", "holdout", "test", "errors", "added",
                                                     "added_label_counts")} for r in rounds_out],
                  "final": final, "stop_reason": stop_reason, "headline_metric": headline_metric(task)}
        inv = m["invocations"][-1]
        inv["seconds"] = round(time.time() - t0, 2)
        inv["llm"] = self.llm.stats.to_dict()
        m["llm"]["spent_total"] = self.llm.cache.spent()
        m["result"] = {"final_test": final.get("test"), "seed_size": len(seed), "added": len(added)}
        rd.save_manifest()
        self._write_report(rd)
        return result

    # ------------------------------------------------------------------ stages
    def _rationales(self, rd: RunDir, fp: str) -> dict | None:
        if self.task.kind != "single" or self.task.stage("rationale") is None:
            return None
        if rd.stage_done("rationales", fp, "rationales.json"):
            return read_json(rd / "rationales.json")
        info("stage: rationales")
        t, u = time.time(), self._usage()
        rat = self.synth.rationales()
        empty = [lab for lab, v in rat.items() if not v]
        write_json(rd / "rationales.json", rat)
        rd.manifest["synthesis"]["rationale"] = self.synth.reports["rationale"].to_dict()
        rd.mark("rationales", fp, time.time() - t, per_label={k: len(v) for k, v in rat.items()}, llm=self._usage(u))
        if empty:
            info(f"warning: no usable rationales for {', '.join(empty)}; its seed prompts go without reasons")
        return rat

    def _seed(self, rd: RunDir, fp: str, rationales: dict | None, n: int, stage: str = "seed") -> list[Example]:
        fp = fingerprint(fp, *self._screen_key()) if self._screen_key() else fp
        if rd.stage_done("seed", fp, "seed.jsonl"):
            return _examples_in(rd / "seed.jsonl")
        if self.task.stage(stage) is None:
            raise S3Error(f"task {self.task.name} has no '{stage}' prompt; add prompts.{stage} to the task file")
        info(f"stage: {stage} ({n} examples, {'completion' if stage == 'zerogen' else self.style} prompts)")
        t, u = time.time(), self._usage()
        self.builder.demos["seed"] = [self._demo_fields("seed", d, rationales) for d in self.demos]
        seed = self.synth.seed_examples(n, rationales=rationales, contexts=self.contexts, stage=stage)
        for i, ex in enumerate(seed):
            ex.id = f"seed-{i}"
        if not seed:
            raise S3Error("the LLM produced no usable seed example; see manifest.json 'synthesis' for the "
                          "reject reasons, or try --prompt-style paper/fewshot")
        seed, _ = self._screen(rd, "seed", seed)
        if not seed:
            raise S3Error("--drop-leaks/--dedup dropped every seed example; see seed_dropped.jsonl")
        write_jsonl(rd / "seed.jsonl", _examples_out(seed))
        rd.manifest["synthesis"][stage] = self.synth.reports[stage].to_dict()
        rd.manifest["seed_label_counts"] = label_counts(seed)
        rd.mark("seed", fp, time.time() - t, examples=len(seed), llm=self._usage(u))
        return seed

    def _screen_key(self) -> list:
        """Fingerprint part for --drop-leaks/--dedup (empty when both are off, so older runs still resume)."""
        return [("screen", self.cfg.drop_leaks, self.cfg.dedup)] if (self.cfg.drop_leaks or self.cfg.dedup) else []

    def _screen(self, rd: RunDir, stage: str, examples: list[Example], prior: Sequence[Example] = ()
                ) -> tuple[list[Example], dict]:
        """Flag leaks (n-gram overlap with the gold eval) and duplicates; record the counts in the manifest,
        drop them under --drop-leaks/--dedup (dropped rows go to seed_dropped.jsonl / round-K/dropped.jsonl)."""
        from .analysis import LeakGuard, screen

        if getattr(self, "_guard", None) is None:
            self._guard = LeakGuard(self.gold)
        kept, dropped, leak, dup = screen(examples, self._guard, prior, drop_leaks=self.cfg.drop_leaks,
                                          dedup=self.cfg.dedup)
        write_jsonl(rd / ("seed_dropped.jsonl" if stage == "seed" else f"{stage}/dropped.jsonl"), dropped)
        for key, summary in (("leakage", leak), ("dedup", dup)):
            rd.manifest.setdefault(key, {})[stage] = {k: v for k, v in summary.items() if not k.endswith("_ids")}
        if leak["flagged"] or dup["duplicates"]:
            info(f"{stage}: {leak['flagged']} of {len(examples)} flagged as gold-eval leaks, "
                 f"{dup['duplicates']} duplicates; dropped {len(dropped)}")
        return kept, {"leakage": leak, "dedup": dup}

    def _write_report(self, rd: RunDir) -> None:
        """DIR/report.html, report.md and dataset_card.md; a failure here only warns."""
        try:
            from .report import write_report

            learner = self._last_model[1] if self._last_model else None
            embed = getattr(self, "_report_embed", None) or getattr(learner, "embed", None)
            write_report(rd.path, embed=embed or "minilm")
        except Exception as e:  # the report is a by-product: never fail a finished run for it
            info(f"warning: no report written ({type(e).__name__}: {e}); try `s3synth report {rd.path}`")

    def _demo_fields(self, stage: str, ex: Example, rationales: dict | None) -> dict:
        import random
        sp = self.task.stage(stage)
        rs = []
        if rationales and rationales.get(ex.label):
            rs = random.Random(f"{self.cfg.seed}:demo:{ex.id}").sample(
                rationales[ex.label], min(self.task.rationale_k, len(rationales[ex.label])))
        return self.builder.fields(stage, text=ex.text, context=ex.context or "", answer=ex.answer, label=ex.label,
                                   rationales=rs, shorten=sp.fewshot.demo_max_words if sp.fewshot else None)

    def _handwritten_fields(self, stage: str, d: dict) -> dict:
        ctx = d.get("context", "")
        ans = {"text": d["answer"], "start": ctx.find(d["answer"])} if d.get("answer") else None
        if ans and ans["start"] < 0:
            ans["start"] = 0
        f = self.builder.fields(stage, text=d.get("text", ""), context=ctx, answer=ans, label=d.get("label"),
                                new_text=d.get("new_text", ""))
        return f

    def _goldgen(self, rd: RunDir, fp: str, seed: list[Example]) -> list[Example]:
        if rd.stage_done("goldgen", fp, "round-1/added.jsonl"):
            return _examples_in(rd / "round-1/added.jsonl")
        info(f"stage: goldgen: extrapolate all {len(self.mining)} gold eval examples")
        t, u = time.time(), self._usage()
        self._extrapolate_demos()
        added = self.synth.extrapolate(self.mining, 1, attempts=self.cfg.extrapolate_attempts)
        added, _ = self._screen(rd, "round-1", added, seed)
        write_jsonl(rd / "round-1/added.jsonl", _examples_out(added))
        rd.manifest["synthesis"]["goldgen"] = self.synth.reports["extrapolate-round-1"].to_dict()
        rd.mark("goldgen", fp, time.time() - t, added=len(added), llm=self._usage(u))
        return added

    def _extrapolate_demos(self) -> None:
        sp = self.task.stage("extrapolate")
        if "extrapolate" not in self.builder.demos and sp.fewshot and sp.fewshot.demos:
            self.builder.demos["extrapolate"] = [self._handwritten_fields("extrapolate", d) for d in sp.fewshot.demos]

    def _train_round(self, rd: RunDir, q: int, fp: str, train: list[Example]) -> dict:
        name = f"round-{q}"
        if rd.stage_done(f"{name}/train", fp, f"{name}/metrics.json", f"{name}/errors.jsonl"):
            return read_json(rd / f"{name}/metrics.json")
        info(f"stage: round {q}: train {self.cfg.learner} on {len(train)} synthetic examples")
        t = time.time()
        learner = self._new_learner()
        history = learner.fit(train, self.holdout or self.mining)
        preds = learner.predict(self.mining)
        errors, correct = [], []
        for ex, p in zip(self.mining, preds):
            if is_error(self.task, ex, p):
                errors.append(ex)
            elif p.probs:
                correct.append((ex, p.probs.get(ex.label, 1.0)))
        sources, bal = balance_sources(self.task, errors, correct, self.cfg.balance, self.cfg.seed, q)
        res = {
            "round": q, "train_size": len(train), "train_label_counts": label_counts(train),
            "selection_metric": selection_metric(self.task), "history": history,
            "mining": evaluate(self.task, self.mining, preds),
            "holdout": learner.evaluate(self.holdout) if self.holdout else None,
            "test": learner.evaluate(self.test) if self.test else None,
            "errors": len(errors), "balance": bal, "seconds_train": round(time.time() - t, 2),
        }
        write_jsonl(rd / f"{name}/errors.jsonl", _examples_out(errors))
        write_jsonl(rd / f"{name}/sources.jsonl", _examples_out(sources))
        write_json(rd / f"{name}/metrics.json", res)
        rd.mark(f"{name}/train", fp, time.time() - t)
        self._last_model = (fingerprint([e.to_dict() for e in train]), learner, res)
        self._print_round(res)
        return res

    def _extrapolate_round(self, rd: RunDir, q: int, fp: str, prior: list[Example] = ()) -> list[Example]:
        name = f"round-{q}"
        if rd.stage_done(f"{name}/extrapolate", fp, f"{name}/added.jsonl"):
            return _examples_in(rd / f"{name}/added.jsonl")
        sources = _examples_in(rd / f"{name}/sources.jsonl")
        info(f"stage: round {q}: extrapolate {len(sources)} gold eval examples")
        t, u = time.time(), self._usage()
        self._extrapolate_demos()
        added = self.synth.extrapolate(sources, q, attempts=self.cfg.extrapolate_attempts)
        added, screened = self._screen(rd, name, added, prior)
        write_jsonl(rd / f"{name}/added.jsonl", _examples_out(added))
        res = read_json(rd / f"{name}/metrics.json")
        res.update({"added": len(added), "added_label_counts": label_counts(added), **screened,
                    "seconds_extrapolate": round(time.time() - t, 2),
                    "synthesis": self.synth.reports[f"extrapolate-round-{q}"].to_dict()})
        write_json(rd / f"{name}/metrics.json", res)
        rd.manifest["synthesis"][f"extrapolate-round-{q}"] = res["synthesis"]
        rd.mark(f"{name}/extrapolate", fp, time.time() - t, added=len(added), llm=self._usage(u))
        return added

    def _final(self, rd: RunDir, fp: str, train: list[Example], reuse) -> dict:
        if rd.stage_done("final", fp, "final/metrics.json"):
            return read_json(rd / "final/metrics.json")
        info(f"stage: final: train {self.cfg.learner} on {len(train)} synthetic examples")
        t = time.time()
        key = fingerprint([e.to_dict() for e in train])
        if self._last_model and self._last_model[0] == key:
            _, learner, r = self._last_model
            history, reused = r["history"], f"round-{r['round']}"
        else:
            learner = self._new_learner()
            history, reused = learner.fit(train, self.holdout or self.mining), None
        res = {"train_size": len(train), "train_label_counts": label_counts(train), "history": history,
               "reused_model_of": reused,
               "holdout": learner.evaluate(self.holdout) if self.holdout else None,
               "test": learner.evaluate(self.test) if self.test else None,
               "seconds": round(time.time() - t, 2)}
        learner.save(rd / "final/model")
        self._report_embed = getattr(learner, "embed", None)   # the report reuses its embedding cache
        write_jsonl(rd / "final/train.jsonl", _examples_out(train))
        write_json(rd / "final/metrics.json", res)
        rd.mark("final", fp, time.time() - t)
        return res

    def _print_round(self, res: dict) -> None:
        hm = headline_metric(self.task)
        parts = [f"round {res['round']}: train {res['train_size']}"]
        if res.get("holdout"):
            parts.append(f"held-out {hm} {res['holdout'][hm]:.3f}")
        if res.get("test"):
            parts.append(f"test {hm} {res['test'][hm]:.3f}")
        parts.append(f"errors {res['errors']}")
        info(" | ".join(parts))
