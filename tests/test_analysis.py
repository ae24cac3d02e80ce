"""Table 6 figures, the leakage guard and duplicate detection on hand-worked cases."""


import numpy as np
import pytest

from s3synth.analysis import (LeakGuard, find_duplicates, jaccard, ngrams, pair_rows, screen,
                              shingles, summarize_pairs, table6, word_edit_distance)
from s3synth.data import Example

FOX = "the quick brown fox jumps over the lazy dog near the river bank"   # 13 words: six 8-grams


def ex(text, label="positive", id="", context=None):
    return Example(text=text, label=label, id=id or text[:12], context=context)


# ------------------------------------------------------------------ edit distance and Table 6

@pytest.mark.parametrize("a,b,d", [
    ("the cat sat on the mat", "the cat sat on a mat", 1),          # one substitution
    ("the movie was good", "movie was very good indeed", 3),          # delete "the", insert "very", "indeed"
    ("Great, GREAT film!", "great great film", 0),                    # case and punctuation never count
    ("a b c", "", 3),
    ("one two three", "three two one", 2),                            # two substitutions, not a move
])
def test_word_edit_distance_hand_worked(a, b, d):
    assert word_edit_distance(a, b) == d
    assert word_edit_distance(a.lower().replace(",", "").replace("!", "").split(), b.lower().split()) == d


def test_table6_rows_and_summary():
    mis = ex("the movie was good", id="g1")
    add = ex("movie was very good indeed", id="r1-0")
    mis2 = ex("bad acting", "negative", id="g2")
    add2 = ex("bad acting and a bad plot", "negative", id="r1-1")
    vecs = {"the movie was good": [1.0, 0.0], "movie was very good indeed": [1.0, 1.0],
            "bad acting": [0.0, 2.0], "bad acting and a bad plot": [0.0, 1.0]}
    embed = lambda texts: np.array([vecs[t] for t in texts], dtype=np.float32)  # noqa: E731
    rows = pair_rows([(add, mis), (add2, mis2)], embed)
    assert [(r["edit_distance"], r["len_mis"], r["len_add"]) for r in rows] == [(3, 4, 5), (4, 2, 6)]
    assert rows[0]["cosine"] == pytest.approx(2 ** -0.5) and rows[1]["cosine"] == pytest.approx(1.0)
    s = summarize_pairs(rows)
    assert s["added"] == 2 and s["edit_distance"] == 3.5 and s["len_mis"] == 3.0 and s["len_add"] == 5.5
    assert s["cosine"] == pytest.approx((2 ** -0.5 + 1) / 2)
    out, per_round = table6({"round-1": [(add, mis)], "round-2": [(add2, mis2)]})
    assert out["round-1"]["edit_distance"] == 3 and out["round-2"]["edit_distance"] == 4
    assert out["overall"]["added"] == 2 and out["overall"]["cosine"] is None   # no embedder, no cosine


def test_cosine_is_computed_on_a_capped_sample():
    pairs = [(ex(f"added text number {i}", id=f"a{i}"), ex(f"gold text number {i}", id=f"g{i}")) for i in range(10)]
    embed = lambda texts: np.ones((len(texts), 3), dtype=np.float32)  # noqa: E731
    rows = pair_rows(pairs, embed, max_cosine_pairs=4)
    assert sum(r["cosine"] is not None for r in rows) == 4
    assert summarize_pairs(rows)["cosine_pairs"] == 4


# ------------------------------------------------------------------ leakage

def test_ngram_and_shingle_helpers():
    assert ngrams(["a", "b", "c"], 2) == {("a", "b"), ("b", "c")}
    assert ngrams(["a"], 2) == set()
    assert shingles(["a", "b"], 3) == frozenset([("a", "b")])
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5


@pytest.mark.parametrize("text,containment,flagged", [
    ("the quick brown fox jumps over the lazy dog today", 2 / 3, True),          # 2 of its 3 8-grams
    ("the quick brown fox jumps over the lazy dog x y", 0.5, True),              # exactly the threshold
    ("the quick brown fox jumps over the lazy dog x y z", 0.4, False),           # 2 of 5
    ("a quick brown fox jumps over the lazy cat in the garden", 0.0, False),
    ("we saw that the quick brown fox jumps over the lazy dog near the river bank yesterday", 1.0, True),
    ("lazy dog near the", 1.0, True),                                            # short: its own length as n
    ("lazy dog near", 0.0, False),                                               # under 4 words: never
])
def test_ngram_leak_flag(text, containment, flagged):
    guard = LeakGuard([ex(FOX, id="gold-1"), ex("an unrelated gold example about the weather", id="gold-2")])
    (r,) = guard.check([ex(text, id="s")])
    assert r.containment == pytest.approx(containment, abs=1e-4)
    assert r.flagged is flagged and r.reason == ("ngram" if flagged else None)
    assert r.gold_id == ("gold-1" if containment else None)


def test_short_gold_text_pasted_into_a_longer_one_is_a_leak():
    guard = LeakGuard([ex("The film was great and superb.", id="gold-7")])
    (r,) = guard.check([ex("The film was great and superb. I would say this again today.", id="s")])
    assert r.containment == 1.0 and r.flagged and r.gold_id == "gold-7"


def test_cosine_leak_flag_with_an_injected_embedder():
    vecs = {"gold sentence one": [1, 0, 0], "gold sentence two": [0, 1, 0],
            "a paraphrase of gold one": [0.99, 0.1, 0], "something else entirely": [0, 0.3, 1]}
    embed = lambda texts: np.array([vecs[t] for t in texts], dtype=np.float32)  # noqa: E731
    guard = LeakGuard([ex("gold sentence one", id="g1"), ex("gold sentence two", id="g2")], embed=embed)
    res = guard.check([ex("a paraphrase of gold one", id="a"), ex("something else entirely", id="b")])
    assert res[0].flagged and res[0].reason == "cosine" and res[0].cosine_gold_id == "g1"
    assert res[0].cosine == pytest.approx(0.99 / np.hypot(0.99, 0.1), abs=1e-4)
    assert not res[1].flagged and res[1].cosine == pytest.approx(0.3 / np.hypot(0.3, 1), abs=1e-4)
    s = guard.summary(res)
    assert s["checked"] == 2 and s["flagged"] == 1 and s["rate"] == 0.5 and s["by_reason"] == {"cosine": 1}
    assert s["thresholds"] == {"ngram": 8, "containment": 0.5, "cosine": 0.95}


# ------------------------------------------------------------------ duplicates

W22 = " ".join(f"w{i}" for i in range(1, 23))


def test_exact_duplicates_within_a_label_only():
    made = [ex("Great film.", id="a"), ex("great  film!", id="b"), ex("great film", "negative", id="c")]
    dups = find_duplicates(made)
    assert [(d.id, d.of, d.kind, d.jaccard) for d in dups] == [("b", "a", "exact", 1.0)]


def test_near_duplicate_by_shingle_jaccard():
    changed = W22.replace("w11", "x11")          # 3 of 20 shingles change: Jaccard 17/23
    dups = find_duplicates([ex(W22, id="d"), ex(W22 + " w23", id="e"), ex(changed, id="f")])
    assert [(d.id, d.of, d.kind) for d in dups] == [("e", "d", "near")]
    assert dups[0].jaccard == round(20 / 21, 4)


def test_duplicates_of_prior_examples_and_per_context():
    prior = [ex("the plot is thin", id="seed-0"), ex("the plot is thin", id="seed-1")]
    new = [ex("The plot is thin.", id="r1-0"), ex("a fresh review text", id="r1-1")]
    dups = find_duplicates(new, prior)
    assert [(d.id, d.of) for d in dups] == [("r1-0", "seed-0")]           # duplicates among prior: not reported
    pair = [ex("Is it red?", "entailment", id="p1", context="A red car."),
            ex("Is it red?", "entailment", id="p2", context="A blue car."),
            ex("is it red", "entailment", id="p3", context="A red car.")]
    assert [(d.id, d.of) for d in find_duplicates(pair)] == [("p3", "p1")]


def test_screen_drops_only_when_asked():
    gold = LeakGuard([ex(FOX, id="gold-1")])
    made = [ex(FOX + " again", id="r1-0"), ex("a brand new review of a film", id="r1-1"),
            ex("A brand new review of a film!", id="r1-2"), ex("another original text about movies", id="r1-3")]
    kept, dropped, leak, dup = screen(made, gold)
    assert len(kept) == 4 and dropped == [] and leak["flagged"] == 1 and leak["flagged_ids"] == ["r1-0"]
    assert dup["duplicates"] == 1 and dup["exact"] == 1 and leak["dropped"] == dup["dropped"] == 0
    kept, dropped, leak, dup = screen(made, gold, drop_leaks=True, dedup=True)
    assert [e.id for e in kept] == ["r1-1", "r1-3"]
    assert {d["id"]: d["meta"]["dropped"] for d in dropped} == {"r1-0": "leak", "r1-2": "duplicate"}
    assert leak["dropped"] == 1 and dup["dropped"] == 1 and leak["rate"] == 0.25
