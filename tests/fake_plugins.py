"""Plugins for unit tests, registered through a real entry point (see conftest.py), never shipped:

- `FakeLearner` (learner `fake`): deterministic and instant, no torch. Classification: a word-count
  naive-Bayes model over the words of text and context. QA: a fixed rule over the context (no training).
  Its `mode` option forces known error patterns:
    - "words" (default): naive Bayes (ties go to the first label); QA: the first capitalised word of the
      context that is not a word of the question.
    - "constant": always the task's first label; QA: the first word of the context.
- `EchoLLM` (LLM backend `echo`): a third-party backend with options of its own; every instance is kept
  in `ECHO_INSTANCES` and every answer starts with its `greeting`.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from s3synth.data import Example, Prediction
from s3synth.errors import S3Error
from s3synth.learners.base import Learner
from s3synth.llm.base import LLM, Completion
from s3synth.metrics import evaluate

META_FILE = "s3synth_learner.json"
MODEL_FILE = "fake_model.json"
MODES = ("words", "constant")
_WORD = re.compile(r"[a-z0-9']+")
_CAP = re.compile(r"\b[A-Z][A-Za-z0-9]*")


def words(ex: Example) -> list[str]:
    """Example: Example("Great film", context="A town") -> ["great", "film", "ctx:a", "ctx:town"]."""
    return _WORD.findall(ex.text.lower()) + ["ctx:" + w for w in _WORD.findall((ex.context or "").lower())]


def qa_answer(question: str, context: str, mode: str) -> str:
    if mode == "constant":
        return context.split()[0] if context.split() else ""
    asked = set(_WORD.findall(question.lower()))
    for w in _CAP.findall(context):
        if w.lower() not in asked:
            return w
    return ""


class FakeLearner(Learner):
    """Test learner: word-count naive Bayes (or a constant), deterministic, instant."""

    name = "fake"

    @dataclass
    class Options:
        mode: str = "words"     # words | constant
        seed: int = 0
        epochs: int = 1         # history rows (identical metrics; the loss shrinks)

        def __post_init__(self):
            if self.mode not in MODES:
                raise S3Error(f"fake learner: mode {self.mode!r} must be one of {', '.join(MODES)}")
            if self.epochs < 1:
                raise S3Error(f"fake learner: epochs {self.epochs} must be >= 1")

        def to_dict(self) -> dict:
            return asdict(self)

    def __init__(self, task, config=None, *, model_path: str | None = None):
        super().__init__(task, config, model_path=model_path)
        self.counts: dict[str, dict[str, int]] | None = None
        self.priors: dict[str, int] | None = None
        self.history: dict | None = None

    # ------------------------------------------------------------ model
    def fit(self, train: Sequence[Example], eval: Sequence[Example] | None = None,
            weights: Sequence[float] | None = None) -> dict:
        """Naive Bayes over word counts; `weights` scale each example's counts (recorded in `self.weights`)."""
        train = list(train)
        weights = [1] * len(train) if weights is None else [float(w) for w in weights]
        self.weights = weights
        if not train:
            raise S3Error("no training examples for the learner")
        names = self.task.label_names
        if self.task.kind != "qa":
            for ex in train:
                if ex.label not in names:
                    raise S3Error(f"training example {ex.id or ex.text[:40]!r} has label {ex.label!r}; "
                                  f"task {self.task.name} expects one of {names}")
        self.priors = {}
        self.counts = {}
        for ex, wt in zip(train, weights):
            self.priors[str(ex.label)] = self.priors.get(str(ex.label), 0) + wt
            c = self.counts.setdefault(str(ex.label), {})
            for w in words(ex):
                c[w] = c.get(w, 0) + wt
        rows = []
        eval = list(eval or [])
        metrics = evaluate(self.task, eval, self.predict(eval)) if eval else {}
        base = self._train_loss(train)
        for e in range(1, self.config.epochs + 1):
            rows.append({"epoch": e, "train_loss": round(base / e, 6), "seconds": 0.0, **metrics})
        self.history = {"epochs": rows, "best_epoch": 1, "selection_metric": self.selection_metric,
                        "train_examples": len(train), "seconds": 0.0}
        return self.history

    def _train_loss(self, train: list[Example]) -> float:
        if self.task.kind == "qa":
            return 1.0
        nll = [-math.log(max(self._probs(ex)[ex.label], 1e-12)) for ex in train]
        return sum(nll) / len(nll) + 1e-3     # > 0 like a real loss

    def _probs(self, ex: Example) -> dict[str, float]:
        names = self.task.label_names
        if self.config.mode == "constant":
            return {n: float(n == names[0]) for n in names}
        vocab = {w for c in self.counts.values() for w in c}
        total = sum(self.priors.values())
        scores = {}
        for n in names:
            c = self.counts.get(n, {})
            size = sum(c.values())
            s = math.log((self.priors.get(n, 0) + 1) / (total + len(names)))
            for w in words(ex):
                s += math.log((c.get(w, 0) + 1) / (size + len(vocab) + 1))
            scores[n] = s
        top = max(scores.values())
        exp = {n: math.exp(s - top) for n, s in scores.items()}
        z = sum(exp.values())
        return {n: exp[n] / z for n in names}

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        if self.counts is None:
            raise S3Error("the learner has no trained model yet: call fit() first")
        out = []
        for ex in examples:
            if self.task.kind == "qa":
                out.append(Prediction(answer=qa_answer(ex.text, ex.context or "", self.config.mode), score=1.0))
                continue
            p = self._probs(ex)
            label = max(self.task.label_names, key=lambda n: p[n])     # first label on ties
            out.append(Prediction(label=label, probs=p, score=p[label]))
        return out

    # ------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        if self.counts is None:
            raise S3Error("nothing to save: call fit() first")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / MODEL_FILE).write_text(json.dumps({"counts": self.counts, "priors": self.priors}, sort_keys=True),
                                    encoding="utf-8")
        meta = {"learner": self.name, "task": self.task.name, "kind": self.task.kind,
                "labels": self.task.label_names, "config": self.config.to_dict(), "history": self.history,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (d / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, task) -> "FakeLearner":
        d = Path(directory)
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        if meta.get("task") != task.name:
            raise S3Error(f"{d} holds a fake learner for {meta.get('task')!r}, not for {task.name!r}")
        obj = cls(task, cls.Options(**meta["config"]))
        model = json.loads((d / MODEL_FILE).read_text(encoding="utf-8"))
        obj.counts, obj.priors, obj.history = model["counts"], model["priors"], meta.get("history")
        return obj


# ---------------------------------------------------------------- a third-party LLM backend

ECHO_INSTANCES: list["EchoLLM"] = []


class EchoLLM(LLM):
    """Test backend: answers "<greeting> statement N about the place ..." (a numbered list to rationale prompts)."""

    backend = "echo"

    @dataclass
    class Options:
        greeting: str = "hi"
        temperature_bias: float = 0.0

        def __post_init__(self):
            if not self.greeting.strip():
                raise S3Error("echo backend: greeting must not be empty")

    def __init__(self, model: str, **kw):
        super().__init__(model, **kw)
        ECHO_INSTANCES.append(self)
        self.seen = []

    def identity(self) -> dict:
        return {**super().identity(), "greeting": self.options.greeting}

    def _generate_batch(self, requests, seeds):
        from s3synth.rundir import band_of

        out = []
        for r, s in zip(requests, seeds):
            self.seen.append(r)
            g = self.options.greeting
            if band_of(r.sample_index) == "rationale":
                text = f"1. {g} the acting is strong\n2. {g} the story moves well\n3. {g} reason {s % 1000}"
            else:
                text = f"{g} statement {s % 100000} about the place and its people."
            out.append(Completion(text=text, prompt_tokens=len((r.prompt or str(r.messages)).split()),
                                  completion_tokens=len(text.split())))
        return out


# ---------------------------------------------------------------- a stand-in for the report's MiniLM embedder

def fake_embed(texts, dim: int = 64):
    """Hashed bag of words, L2-normalised: texts -> (n, dim) float32, deterministic across processes."""
    import zlib

    import numpy as np

    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in _WORD.findall(t.lower()):
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
        n = float(np.linalg.norm(out[i]))
        out[i] = out[i] / n if n else out[i]
    return out


def use_fake_embedder(monkeypatch) -> None:
    """Reports (written by the CLI and the bench with embed="minilm") embed with `fake_embed` instead."""
    import s3synth.report.pages as pages

    monkeypatch.setattr(pages, "minilm_embedder", lambda *a, **k: fake_embed)


def main_without_reports() -> None:
    """`s3synth` in a subprocess, writing no report after a run (no matplotlib, no MiniLM):
    python -c "import fake_plugins; fake_plugins.main_without_reports()" run ..."""
    import s3synth.report as report
    from s3synth.cli import main

    report.write_report = lambda path, embed=None: {}
    main()
