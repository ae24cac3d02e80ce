"""Analyses of synthetic data: Table 6 of the paper, the leakage guard and near-duplicate detection.

Words are `normalize_words` tokens (lower-cased `\\w+` runs), so punctuation and case never count.

- Table 6 (`pair_rows`, `summarize_pairs`): each added example x_add against the gold example x_mis it was
  extrapolated from: cosine similarity of sentence embeddings (MiniLM, mean-pooled and L2-normalised, as
  the fast learner computes them), word-level edit distance (Levenshtein over words), and lengths in words.
  For pair and QA tasks x is the regenerated text (hypothesis / question), as in the paper.
- Leakage (`LeakGuard`): a synthetic example is flagged when at least `LEAK_CONTAINMENT` of its word
  `LEAK_NGRAM`-grams occur in gold-eval texts, or at least that share of one gold-eval text's n-grams
  occur in it (texts shorter than n words use their length as n), or, when an embedder is given, its
  cosine with some gold-eval text is >= `LEAK_COSINE`.
  The cosine threshold is meant for MiniLM embeddings, on which paraphrases score about 0.7-0.9.
- Duplicates (`find_duplicates`): within one label (and one context for pair/QA tasks), the same
  normalised text, or a Jaccard similarity of word `DUP_SHINGLE`-shingles >= `DUP_JACCARD`.
  Exact pairwise search through an inverted index of shingles (no MinHash: it is fast enough at the
  sizes of the paper, tens of thousands of examples per label).
"""

from __future__ import annotations

import math
import re
import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from .data import Example

LEAK_NGRAM = 8
LEAK_CONTAINMENT = 0.5
LEAK_COSINE = 0.95
DUP_SHINGLE = 3
DUP_JACCARD = 0.9
MAX_COSINE_PAIRS = 2000   # Table 6 cosine is computed on a fixed random sample of at most this many pairs

Embedder = Callable[[Sequence[str]], np.ndarray]


def words(text: str | Sequence[str]) -> list[str]:
    return list(text) if not isinstance(text, str) else normalize_words(text)


def normalize_words(s: str) -> list[str]:
    """Example: normalize_words("The film, really!") -> ["the", "film", "really"]."""
    return re.findall(r"\w+", s.lower())


def word_edit_distance(a: str | Sequence[str], b: str | Sequence[str]) -> int:
    """Insertions, deletions and substitutions of whole words turning a into b.

    Example: word_edit_distance("The movie is great", "the film is great!") -> 1
    """
    wa, wb = words(a), words(b)
    return int(Levenshtein.distance(wa, wb))


def ngrams(ws: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Example: ngrams(["a", "b", "c"], 2) -> {("a", "b"), ("b", "c")}"""
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)} if n > 0 else set()


def shingles(ws: Sequence[str], k: int = DUP_SHINGLE) -> frozenset:
    """Word k-shingles; a text shorter than k words is one shingle (empty text: none)."""
    if not ws:
        return frozenset()
    return frozenset(ngrams(ws, k)) if len(ws) >= k else frozenset([tuple(ws)])


def jaccard(a: Iterable, b: Iterable) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if (a or b) else 1.0


def _normed(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def minilm_embedder(threads: int | None = None, precision: str = "auto") -> Embedder:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings, as the fast learner computes them.
    The host task (imdb) only picks the tokenizer length; any text embeds the same way. `precision`
    auto: bf16 autocast where the CPU or GPU computes bf16 natively (cosines move by ~1e-3), else fp32."""
    from .learners.hf import resolve_device, resolve_precision
    from .learners.base import TrainConfig
    from .learners.fast import FastLearner
    from .tasks import load_task

    if threads:
        import torch
        torch.set_num_threads(threads)
    precision = resolve_precision(precision, resolve_device("auto"))
    return FastLearner(load_task("imdb"), TrainConfig.from_dict({"max_length": 256, "precision": precision})).embed


# ------------------------------------------------------------------ Table 6

def pair_rows(pairs: Sequence[tuple[Example, Example]], embed: Embedder | None = None,
              max_cosine_pairs: int = MAX_COSINE_PAIRS, seed: int = 0) -> list[dict]:
    """One row per (x_add, x_mis) pair: edit distance, both lengths, and cosine (None when not computed)."""
    rows = []
    for add, mis in pairs:
        wa, wm = words(add.text), words(mis.text)
        rows.append({"id": add.id, "source_id": mis.id, "edit_distance": word_edit_distance(wm, wa),
                     "len_mis": len(wm), "len_add": len(wa), "cosine": None})
    if embed is not None and pairs:
        idx = list(range(len(pairs)))
        if len(idx) > max_cosine_pairs:
            idx = sorted(random.Random(f"table6:{seed}").sample(idx, max_cosine_pairs))
        a = _normed(embed([pairs[i][0].text for i in idx]))
        m = _normed(embed([pairs[i][1].text for i in idx]))
        for i, c in zip(idx, (a * m).sum(axis=1)):
            rows[i]["cosine"] = float(c)
    return rows


def summarize_pairs(rows: Sequence[dict]) -> dict:
    """Table 6's figures for one set of rows: # added, cosine, edit distance, average lengths."""
    def mean(key):
        v = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(v)) if v else None
    return {"added": len(rows), "cosine": mean("cosine"), "cosine_pairs": sum(r["cosine"] is not None for r in rows),
            "edit_distance": mean("edit_distance"), "len_mis": mean("len_mis"), "len_add": mean("len_add")}


def table6(pairs_by_round: dict[str, Sequence[tuple[Example, Example]]], embed: Embedder | None = None
           ) -> tuple[dict, dict[str, list[dict]]]:
    """({round: summary, ..., "overall": summary}, {round: rows}) for every round's (x_add, x_mis) pairs."""
    rows = {k: pair_rows(v, embed) for k, v in pairs_by_round.items()}
    out = {k: summarize_pairs(r) for k, r in rows.items()}
    out["overall"] = summarize_pairs([r for rs in rows.values() for r in rs])
    return out, rows


# ------------------------------------------------------------------ leakage guard

@dataclass
class LeakResult:
    id: str
    containment: float          # share of the example's word n-grams found in some gold-eval text
    gold_id: str | None         # the gold example sharing the most of them
    cosine: float | None = None
    cosine_gold_id: str | None = None
    flagged: bool = False
    reason: str | None = None   # "ngram", "cosine" or "ngram+cosine"

    def to_dict(self) -> dict:
        return asdict(self)


class _GramIndex:
    """Sorted hashes of every gold text's word k-grams, with the gold index of each (compact at 25k reviews)."""

    def __init__(self, texts_words: Sequence[list[str]], k: int):
        hs, owner = [], []
        for gi, ws in enumerate(texts_words):
            h = {hash(g) for g in ngrams(ws, k)}
            hs.extend(h)
            owner.extend([gi] * len(h))
        h = np.array(hs, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        self.hashes, self.owner = h[order], np.array(owner, dtype=np.int64)[order]

    def lookup(self, grams: set) -> tuple[int, Counter]:
        """(how many of `grams` occur in some gold text, Counter of gold index -> shared grams)."""
        if not grams or not len(self.hashes):
            return 0, Counter()
        q = np.array(sorted({hash(g) for g in grams}), dtype=np.int64)
        lo, hi = np.searchsorted(self.hashes, q, "left"), np.searchsorted(self.hashes, q, "right")
        found = int((hi > lo).sum())
        per = Counter()
        for a, b in zip(lo[hi > lo], hi[hi > lo]):
            per.update(self.owner[a:b].tolist())
        return found, per


class LeakGuard:
    """Flags synthetic examples that copy gold-eval examples (see the module docstring).

    Containment is the larger of two shares: of the example's word n-grams found in any gold-eval text
    (a patchwork of several counts), and of one gold-eval text's n-grams found in the example (a gold
    text pasted into a longer one). A text shorter than n words uses its own length as n; texts shorter
    than `MIN_GRAM` words are never matched (too short to call a copy).
    """

    MIN_GRAM = 4

    def __init__(self, gold: Sequence[Example], *, n: int = LEAK_NGRAM, containment: float = LEAK_CONTAINMENT,
                 cosine: float = LEAK_COSINE, embed: Embedder | None = None):
        self.gold = list(gold)
        self.n, self.min_containment, self.min_cosine, self.embed = n, containment, cosine, embed
        self._words = [words(g.text) for g in self.gold]
        self._index: dict[int, _GramIndex] = {}     # k -> k-grams of every gold text
        self._own: dict[int, tuple[_GramIndex, list[int]]] | None = None   # k -> gold texts whose own n is k
        self._gold_emb: np.ndarray | None = None

    @property
    def thresholds(self) -> dict:
        return {"ngram": self.n, "containment": self.min_containment,
                "cosine": self.min_cosine if self.embed is not None else None}

    def _own_index(self) -> dict[int, tuple[_GramIndex, list[int]]]:
        if self._own is None:
            by_k: dict[int, list[int]] = {}
            for gi, ws in enumerate(self._words):
                if len(ws) >= self.MIN_GRAM:
                    by_k.setdefault(min(self.n, len(ws)), []).append(gi)
            self._own = {k: (_GramIndex([self._words[i] for i in ids], k), ids) for k, ids in by_k.items()}
        return self._own

    def containment(self, text: str) -> tuple[float, str | None]:
        """(containment, id of the gold text it overlaps most) for one text."""
        ws = words(text)
        k = min(self.n, len(ws))
        if k < self.MIN_GRAM:
            return 0.0, None
        if k not in self._index:
            self._index[k] = _GramIndex(self._words, k)
        grams = ngrams(ws, k)
        found, per = self._index[k].lookup(grams)
        best, best_gi = (found / len(grams), min(per, key=lambda i: (-per[i], i))) if per else (0.0, None)
        for gk, (index, ids) in self._own_index().items():     # gold text inside the example
            if gk > len(ws):
                continue
            _, hits = index.lookup(ngrams(ws, gk))
            for j, c in hits.items():
                share = c / len(ngrams(self._words[ids[j]], gk))
                if share > best or (share == best and best_gi is not None and ids[j] < best_gi):
                    best, best_gi = share, ids[j]
        return best, (self.gold[best_gi].id if best_gi is not None else None)

    def check(self, examples: Sequence[Example]) -> list[LeakResult]:
        out = []
        for ex in examples:
            c, gid = self.containment(ex.text)
            out.append(LeakResult(id=ex.id, containment=round(c, 4), gold_id=gid))
        if self.embed is not None and examples and self.gold:
            if self._gold_emb is None:
                self._gold_emb = _normed(self.embed([g.text for g in self.gold]))
            sims = _normed(self.embed([ex.text for ex in examples])) @ self._gold_emb.T
            for r, row in zip(out, sims):
                j = int(row.argmax())
                r.cosine, r.cosine_gold_id = round(float(row[j]), 4), self.gold[j].id
        for r in out:
            why = [name for name, hit in (("ngram", r.containment >= self.min_containment),
                                          ("cosine", r.cosine is not None and r.cosine >= self.min_cosine)) if hit]
            r.flagged, r.reason = bool(why), "+".join(why) or None
        return out

    def summary(self, results: Sequence[LeakResult], dropped: bool = False) -> dict:
        flagged = [r for r in results if r.flagged]
        return {"checked": len(results), "flagged": len(flagged),
                "rate": round(len(flagged) / len(results), 4) if results else 0.0,
                "dropped": len(flagged) if dropped else 0,
                "by_reason": dict(Counter(r.reason for r in flagged)),
                "flagged_ids": [r.id for r in flagged], "thresholds": self.thresholds}


# ------------------------------------------------------------------ near-duplicates

@dataclass
class Duplicate:
    id: str
    of: str         # id of the earlier, kept example it duplicates
    kind: str       # "exact" (same normalised text) or "near" (shingle Jaccard >= threshold)
    jaccard: float

    def to_dict(self) -> dict:
        return asdict(self)


def _group(ex: Example) -> tuple:
    return (ex.label, " ".join(words(ex.context)) if ex.context else None)


def find_duplicates(examples: Sequence[Example], prior: Sequence[Example] = (), *, k: int = DUP_SHINGLE,
                    threshold: float = DUP_JACCARD) -> list[Duplicate]:
    """Duplicates among `examples`, of each other or of `prior` (examples kept earlier, never reported).

    The first of a group is kept; each later one is reported against a kept example. Candidates come
    from prefix filtering (rarest shingles first), then the exact Jaccard is computed.
    Example: ["Great film.", "great film!"] (same label) -> [Duplicate(second id, first id, "exact", 1.0)]
    """
    prepared = [(ex, words(ex.text)) for ex in (*prior, *examples)]
    sets = [shingles(ws, k) for _, ws in prepared]
    freq = Counter(s for sh in sets for s in sh)

    def prefix(sh: frozenset) -> list:
        keep = len(sh) - math.ceil(threshold * len(sh) - 1e-9) + 1
        return sorted(sh, key=lambda s: (freq[s], s))[:max(keep, 0)]

    exact: dict[tuple, str] = {}
    post: dict[tuple, list[int]] = {}      # (group, shingle) -> indices of kept examples
    out: list[Duplicate] = []
    for i, ((ex, ws), sh) in enumerate(zip(prepared, sets)):
        group, key = _group(ex), " ".join(ws)
        if i >= len(prior):
            if (group, key) in exact:
                out.append(Duplicate(ex.id, exact[(group, key)], "exact", 1.0))
                continue
            cands = sorted({j for s in prefix(sh) for j in post.get((group, s), ())})
            best, best_j = None, -1.0
            for j in cands:
                inter = len(sh & sets[j])
                jac = inter / (len(sh) + len(sets[j]) - inter)
                if jac > best_j:
                    best, best_j = j, jac
            if best is not None and best_j >= threshold:
                out.append(Duplicate(ex.id, prepared[best][0].id, "near", round(best_j, 4)))
                continue
        exact.setdefault((group, key), ex.id)
        for s in prefix(sh):
            post.setdefault((group, s), []).append(i)
    return out


def dedup_summary(checked: int, dups: Sequence[Duplicate], dropped: bool = False, *, k: int = DUP_SHINGLE,
                  threshold: float = DUP_JACCARD) -> dict:
    kinds = Counter(d.kind for d in dups)
    return {"checked": checked, "duplicates": len(dups), "exact": kinds.get("exact", 0),
            "near": kinds.get("near", 0), "dropped": len(dups) if dropped else 0,
            "duplicate_ids": [d.id for d in dups], "thresholds": {"shingle": k, "jaccard": threshold}}


# ------------------------------------------------------------------ the pipeline's screen

def screen(examples: Sequence[Example], gold: "LeakGuard", prior: Sequence[Example] = (), *,
           drop_leaks: bool = False, dedup: bool = False) -> tuple[list[Example], list[dict], dict, dict]:
    """Flag leaks (against the gold eval) and duplicates (among `examples` and against `prior`); drop
    them when asked. Returns (kept, dropped rows with meta["dropped"] = reason, leak summary, dup summary)."""
    leaks = gold.check(examples)
    dups = find_duplicates(examples, prior)
    why: dict[str, str] = {}
    if drop_leaks:
        why.update({r.id: "leak" for r in leaks if r.flagged})
    if dedup:
        for d in dups:
            why.setdefault(d.id, "duplicate")
    kept = [ex for ex in examples if ex.id not in why]
    dropped = [{**ex.to_dict(), "meta": {**ex.meta, "dropped": why[ex.id]}} for ex in examples if ex.id in why]
    leak = gold.summary(leaks)
    leak["dropped"] = sum(1 for v in why.values() if v == "leak")
    dup = dedup_summary(len(examples), dups)
    dup["dropped"] = sum(1 for v in why.values() if v == "duplicate")
    return kept, dropped, leak, dup
