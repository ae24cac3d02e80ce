"""Synthetic labels cleaned by confident learning, and the mining rules beyond "misclassified".

Cleaning (`--clean-labels drop|weight`): every synthetic training example gets an out-of-sample
probability for each label from a k-fold cross-validation (each fold's model never saw the example),
then cleanlab's `find_label_issues` (Northcutt et al., confident learning: per-label confidence
thresholds, the off-diagonal of the confident joint) flags the examples whose given label is likely
wrong. `drop` removes them; `weight` keeps them with their self-confidence (the out-of-sample
probability of the given label) as the loss weight. Gold examples are never judged: their labels are real.

Mining (`--mine`): which mining-set examples a round extrapolates. `misclassified` is the paper's rule;
`margin` adds the correctly predicted ones whose gold label leads the next label by less than a margin;
`loss` takes the share of the mining set with the highest loss (-log p(gold); QA: 1 - F1).
Not handled: cleaning QA examples (no label to judge; the option is refused for QA tasks).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..data import Example, Prediction
from ..errors import S3Error
from ..metrics import is_error

MIN_WEIGHT = 0.05     # --clean-labels weight: the floor of a flagged example's weight


@dataclass
class Cleaning:
    """The outcome of cleaning one training set: the examples to train on, their weights (None: all 1),
    and one row per flagged example for `cleaned.jsonl`."""

    kept: list[Example]
    weights: list[float] | None
    rows: list[dict]
    summary: dict


def fold_ids(labels: Sequence[str], folds: int, seed: int) -> list[int]:
    """A fold number per example, stratified by label: each label's examples are shuffled and dealt
    round-robin, so every fold holds about 1/folds of every label.

    Example: fold_ids(["a", "a", "b", "b"], 2, 0) -> a permutation such as [1, 0, 0, 1]"""
    rng = random.Random(f"{seed}:clean-folds")
    out = [0] * len(labels)
    for lab in sorted(set(labels)):
        idx = [i for i, x in enumerate(labels) if x == lab]
        rng.shuffle(idx)
        for k, i in enumerate(idx):
            out[i] = k % folds
    return out


def out_of_sample_probs(examples: Sequence[Example], label_names: Sequence[str], new_learner: Callable,
                        folds: int, seed: int) -> np.ndarray:
    """(n, labels) probabilities, each row from a model trained on the other folds."""
    labels = [ex.label for ex in examples]
    fid = fold_ids(labels, folds, seed)
    probs = np.zeros((len(examples), len(label_names)))
    for f in range(folds):
        train = [ex for ex, k in zip(examples, fid) if k != f]
        test_idx = [i for i, k in enumerate(fid) if k == f]
        if not test_idx:
            continue
        learner = new_learner()
        learner.fit(train, None)
        for i, p in zip(test_idx, learner.predict([examples[i] for i in test_idx])):
            probs[i] = [float((p.probs or {}).get(n, 1.0 if n == p.label else 0.0)) for n in label_names]
    return probs


def label_issues(labels: Sequence[int], probs: np.ndarray) -> np.ndarray:
    """Boolean mask of likely label errors: cleanlab's confident-learning filter (prune by noise rate)."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(labels=np.asarray(labels), pred_probs=probs,
                                        filter_by="prune_by_noise_rate", n_jobs=1), dtype=bool)


def clean_labels(examples: Sequence[Example], label_names: Sequence[str], mode: str, new_learner: Callable,
                 folds: int, seed: int) -> Cleaning:
    """Judge the labels of `examples` and drop (mode "drop") or down-weight (mode "weight") the likely wrong.

    Too few examples of a label for `folds` folds: the folds shrink to the smallest label's count; below 2
    examples of some label (or a single label) nothing is judged and the summary says why."""
    examples = list(examples)
    counts = {n: sum(ex.label == n for ex in examples) for n in label_names}
    present = [n for n, c in counts.items() if c]
    k = min([folds] + [counts[n] for n in present])
    summary = {"mode": mode, "examples": len(examples), "flagged": 0, "share": 0.0, "folds": k}
    if len(present) < 2 or k < 2:
        summary["skipped"] = "fewer than 2 examples of some label (or one label only): nothing judged"
        return Cleaning(examples, None, [], summary)
    probs = out_of_sample_probs(examples, label_names, new_learner, k, seed)
    index = {n: i for i, n in enumerate(label_names)}
    given = [index[ex.label] for ex in examples]
    # cleanlab wants the labels 0..K-1 all present in pred_probs' columns: restrict to the present labels
    cols = [index[n] for n in present]
    sub = probs[:, cols]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    remap = {c: j for j, c in enumerate(cols)}
    flagged = label_issues([remap[g] for g in given], sub)
    rows, kept, weights = [], [], []
    for i, ex in enumerate(examples):
        self_conf = float(probs[i, given[i]])
        if flagged[i]:
            suggested = label_names[int(np.argmax(probs[i]))]
            w = max(self_conf, MIN_WEIGHT)
            rows.append({"id": ex.id, "label": ex.label, "suggested": suggested,
                         "self_confidence": round(self_conf, 4), "action": "drop" if mode == "drop" else "weight",
                         **({"weight": round(w, 4)} if mode == "weight" else {}), "text": ex.text,
                         **({"context": ex.context} if ex.context is not None else {})})
            if mode == "weight":
                kept.append(ex)
                weights.append(w)
        else:
            kept.append(ex)
            weights.append(1.0)
    summary.update({"flagged": int(flagged.sum()), "share": round(float(flagged.mean()), 4),
                    "flagged_per_label": {n: sum(1 for r in rows if r["label"] == n) for n in label_names}})
    if mode == "drop" and not kept:
        raise S3Error("--clean-labels drop flagged every synthetic example; use --clean-labels weight or none")
    return Cleaning(kept, weights if mode == "weight" else None, rows, summary)


# ---------------------------------------------------------------- mining rules

def gold_prob(ex: Example, p: Prediction) -> float:
    return float((p.probs or {}).get(ex.label, 1.0 if p.label == ex.label else 0.0))


def margin(ex: Example, p: Prediction) -> float:
    """p(gold) minus the largest probability of another label (negative when misclassified)."""
    probs = dict(p.probs or {})
    g = probs.pop(ex.label, 0.0)
    return float(g - max(probs.values(), default=0.0))


def example_loss(task, ex: Example, p: Prediction) -> float:
    """-log p(gold) for classification; 1 - F1 (best over the gold answers) for QA."""
    if task.kind == "qa":
        from ..metrics import gold_answers, squad_f1
        return 1.0 - max((squad_f1(p.answer or "", g) for g in gold_answers(ex)), default=0.0)
    return -math.log(max(gold_prob(ex, p), 1e-12))


def mine(task, examples: Sequence[Example], preds: Sequence[Prediction], rule: str, *, margin_max: float = 0.2,
         share: float = 0.3) -> tuple[list[Example], list[tuple[Example, float]], dict]:
    """(mined, correct-and-not-mined as (example, p(gold)), counts) under `rule`.

    - misclassified: the examples the model gets wrong (the paper)
    - margin: those plus the correct ones whose margin is below `margin_max`
    - loss: the ceil(share * n) examples with the highest loss (ties: input order)
    Under margin and loss, every mined example carries meta["mined"] = "error" | "margin" | "loss" (the
    paper's rule leaves the examples as they are)."""
    if rule not in ("misclassified", "margin", "loss"):
        raise ValueError(f"mining rule must be misclassified, margin or loss, not {rule!r}")
    wrong = [is_error(task, ex, p) for ex, p in zip(examples, preds)]
    take = list(wrong)
    why = ["error" if w else "" for w in wrong]
    if rule == "margin":
        for i, (ex, p) in enumerate(zip(examples, preds)):
            if not wrong[i] and margin(ex, p) < margin_max:
                take[i], why[i] = True, "margin"
    elif rule == "loss":
        losses = [example_loss(task, ex, p) for ex, p in zip(examples, preds)]
        n = math.ceil(share * len(examples))
        top = set(sorted(range(len(examples)), key=lambda i: (-losses[i], i))[:n])
        take = [i in top for i in range(len(examples))]
        why = ["loss" if t else "" for t in take]
    mined, correct = [], []
    for ex, p, t, w, bad in zip(examples, preds, take, why, wrong):
        if t:
            mined.append(ex if rule == "misclassified" else Example(
                text=ex.text, label=ex.label, context=ex.context, answer=ex.answer, id=ex.id,
                meta={**ex.meta, "mined": w}))
        elif not bad and p.probs:
            correct.append((ex, gold_prob(ex, p)))
    counts = {"rule": rule, "errors": sum(wrong), "mined": len(mined),
              "by_reason": {r: why.count(r) for r in ("error", "margin", "loss") if why.count(r)}}
    return mined, correct, counts
