"""Metrics: accuracy, macro-F1, balanced accuracy, prediction shares; SQuAD EM/F1.

The SQuAD answer normalisation follows the official evaluation script's rules: lower case,
remove punctuation, remove the articles a/an/the, collapse whitespace. All scores are fractions in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from .data import Example, Prediction
    from .tasks import Task

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Example: 'The  Eiffel Tower!' -> 'eiffel tower'"""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def squad_exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def classification_metrics(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Example: gold [a, a, b], pred [a, a, a] -> accuracy 0.667, balanced_accuracy 0.5, macro_f1 0.4."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    n = len(gold)
    if n == 0:
        return {"n": 0, "accuracy": 0.0, "macro_f1": 0.0, "balanced_accuracy": 0.0,
                "pred_share": {lab: 0.0 for lab in labels}, "per_label": {}}
    correct = sum(g == p for g, p in zip(gold, pred))
    f1s, recalls, per_label = [], [], {}
    for lab in labels:
        tp = sum(g == lab and p == lab for g, p in zip(gold, pred))
        n_gold = sum(g == lab for g in gold)
        n_pred = sum(p == lab for p in pred)
        prec = tp / n_pred if n_pred else 0.0
        rec = tp / n_gold if n_gold else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_label[lab] = {"gold": n_gold, "predicted": n_pred, "precision": prec, "recall": rec, "f1": f1}
        if n_gold:
            recalls.append(rec)
            f1s.append(f1)
    return {
        "n": n,
        "accuracy": correct / n,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
        "pred_share": {lab: sum(p == lab for p in pred) / n for lab in labels},
        "per_label": per_label,
    }


def qa_metrics(gold_answers: Sequence[str | Sequence[str]], pred_answers: Sequence[str]) -> dict:
    """Per-question SQuAD EM and F1, each the maximum over the question's gold answers (a text, or a list
    of them), as the official SQuAD v1.1 script scores.

    Example: qa_metrics([["Paris", "the city of Paris"]], ["city of Paris"]) -> EM 1.0, F1 1.0"""
    n = len(gold_answers)
    if n == 0:
        return {"n": 0, "exact_match": 0.0, "f1": 0.0}
    golds = [[g] if isinstance(g, str) else list(g) for g in gold_answers]
    em = sum(max(squad_exact(p, g) for g in gs) for p, gs in zip(pred_answers, golds)) / n
    f1 = sum(max(squad_f1(p, g) for g in gs) for p, gs in zip(pred_answers, golds)) / n
    return {"n": n, "exact_match": em, "f1": f1}


def gold_answers(example: "Example") -> list[str]:
    """Every gold answer text of a QA example: the one trained on first, then the alternatives."""
    return [example.answer["text"], *example.answer.get("alternatives", ())]


def evaluate(task: "Task", examples: Sequence["Example"], predictions: Sequence["Prediction"]) -> dict:
    if task.kind == "qa":
        return qa_metrics([gold_answers(ex) for ex in examples], [p.answer or "" for p in predictions])
    return classification_metrics([ex.label for ex in examples], [p.label for p in predictions], task.label_names)


def is_error(task: "Task", example: "Example", prediction: "Prediction") -> bool:
    """Misclassified (classification) or an exact match with none of the gold answers (QA), as in the paper."""
    if task.kind == "qa":
        return max(squad_exact(prediction.answer or "", g) for g in gold_answers(example)) < 1.0
    return prediction.label != example.label


def selection_metric(task: "Task") -> str:
    """The class-balanced metric used to choose epochs and to stop: a constant predictor never wins."""
    return "f1" if task.kind == "qa" else "macro_f1"


def headline_metric(task: "Task") -> str:
    return "f1" if task.kind == "qa" else "accuracy"
