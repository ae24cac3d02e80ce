"""Seed synthesis, rationales, error extrapolation and label balancing, with a queued fake LLM."""

from collections import Counter

from conftest import QueuedLLM

from s3synth.data import Example
from s3synth.method.prompts import PromptBuilder
from s3synth.method.synth import Synthesizer, balance_sources, pick_demos
from s3synth.tasks import load_task

RTE = load_task("rte")
IMDB = load_task("imdb")
QA = load_task("adversarial_qa")


def test_rationales_parse_dedup_and_keep_k():
    llm = QueuedLLM(lambda r: " reason one here\n4. reason two here\n5. Reason One Here")
    s = Synthesizer(IMDB, llm, PromptBuilder(IMDB, "fewshot"), seed=0)
    rat = s.rationales()
    assert rat == {"negative": ["reason one here", "reason two here"],
                   "positive": ["reason one here", "reason two here"]}
    assert len(llm.seen) == 2 * IMDB.rationale_calls
    assert llm.seen[0].prompt.endswith("\n3.")   # list completion with hand-written items 1 and 2


def test_seed_replaces_rejects_until_n_kept_and_is_deterministic():
    answers = iter(["", " A short hypothesis here."] * 100)
    contexts = [{"context": f"Premise number {i} is here."} for i in range(5)]

    def run():
        it = iter(["", " A short hypothesis here."] * 100)
        llm = QueuedLLM(lambda r: next(it))
        s = Synthesizer(RTE, llm, PromptBuilder(RTE, "fewshot"), seed=3)
        return s.seed_examples(10, contexts=contexts), s, llm

    seed, s, llm = run()
    assert len(seed) == 10
    rep = s.reports["seed"]
    assert rep.kept >= 10 and rep.rejects["empty"] == rep.requested - rep.kept
    assert all(e.context in {c["context"] for c in contexts} for e in seed)
    assert all(e.label in RTE.label_names for e in seed)
    seed2, _, _ = run()
    assert [(e.text, e.context, e.label) for e in seed] == [(e.text, e.context, e.label) for e in seed2]
    assert len({r.sample_index for r in llm.seen}) == len(llm.seen)   # every request distinct
    del answers


def test_extrapolate_keeps_gold_label_context_and_answer_and_retries_rejects():
    srcs = [Example(text="Who built it?", context="Anna built the bridge in 1932.",
                    answer={"text": "Anna", "start": 0}, id="g1"),
            Example(text="When was it built?", context="Anna built the bridge in 1932.",
                    answer={"text": "1932", "start": 25}, id="g2")]
    calls = []

    def fn(r):
        calls.append(r.sample_index)
        if "Who built it?" in r.messages[-1][1] and r.sample_index < 20_000_000 + 1_000_000:
            return "Who built it?"         # a copy of the shown question: rejected, asked again
        return " Which person built the bridge?"

    llm = QueuedLLM(fn)
    s = Synthesizer(QA, llm, PromptBuilder(QA, "paper"), seed=0)
    out = s.extrapolate(srcs, round_no=1, attempts=2)
    assert len(out) == 2 and len(calls) == 3
    assert [(e.context, e.answer, e.meta["source_id"], e.meta["round"]) for e in out] == [
        ("Anna built the bridge in 1932.", {"text": "Anna", "start": 0}, "g1", 1),
        ("Anna built the bridge in 1932.", {"text": "1932", "start": 25}, "g2", 1)]
    assert s.reports["extrapolate-round-1"].rejects["copy_of_source"] == 1


def _ex(i, label):
    return Example(text=f"t{i}", context="c", label=label, id=f"g{i}")


def test_balance_fill_cap_none():
    errors = [_ex(i, "not_entailment") for i in range(6)] + [_ex(10, "entailment")]
    correct = [(_ex(20 + i, "entailment"), 0.5 + i / 10) for i in range(3)]
    out, info = balance_sources(RTE, errors, correct, "fill", seed=0, round_no=1)
    assert Counter(e.label for e in out) == {"not_entailment": 6, "entailment": 6}
    # the least confident correct examples come first, then repeats of the errors
    ent = [e for e in out if e.label == "entailment"]
    assert [e.id for e in ent] == ["g10", "g20", "g21", "g22", "g10", "g20"]
    assert [e.meta.get("balance") for e in ent] == [None, "near_boundary", "near_boundary", "near_boundary",
                                                    "repeat", "repeat"]
    out, info = balance_sources(RTE, errors, correct, "cap", seed=0, round_no=1)
    assert Counter(e.label for e in out) == {"not_entailment": 1, "entailment": 1}
    out, info = balance_sources(RTE, errors, correct, "none", seed=0, round_no=1)
    assert out == errors and info["errors_per_label"] == {"entailment": 1, "not_entailment": 6}


def test_pick_demos_balanced_interleaved():
    pool = [_ex(i, "entailment") for i in range(5)] + [_ex(10 + i, "not_entailment") for i in range(5)]
    d = pick_demos(RTE, pool, 4, seed=0)
    assert [e.label for e in d] == ["entailment", "not_entailment", "entailment", "not_entailment"]
    assert d == pick_demos(RTE, pool, 4, seed=0)
