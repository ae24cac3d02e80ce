"""--per-call N / --per-context K: several examples per LLM request, parsed into one example each with its
own provenance; a malformed answer keeps what parses and logs the rest; the default of one is unchanged."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from openai_stub import OpenAIStub

from s3synth.cli import cli
from s3synth.config import RunConfig
from s3synth.errors import S3Error
from s3synth.io import read_json, read_jsonl
from s3synth.llm.base import GenParams, Request
from s3synth.llm.openai_compat import OpenAICompatLLM
from s3synth.llm.vllm_backend import structured_kwargs, structured_outputs_kind
from s3synth.method.prompts import LIST_KEY, PromptBuilder, list_schema, parse_list
from s3synth.method.synth import REJECT_LOG_MAX, Synthesizer
from s3synth.rundir import SAMPLE_BANDS, band_of, list_sample_index
from s3synth.tasks import load_task

IMDB, QNLI, RTE, QA = (load_task(n) for n in ("imdb", "qnli", "rte", "adversarial_qa"))
REVIEW = "the acting was wonderful and the story kept me watching until the very end"


# -- cache keys: the default is byte-identical to the version before --per-call -------------------------------
def _fixed_run_keys() -> tuple[str, int]:
    """The cache keys of a fixed small set of seed/ZeroGen stages (several tasks and styles, with rejects)."""
    keys = []
    for tname, style, stage in (("imdb", "fewshot", "seed"), ("imdb", "paper", "seed"), ("qnli", "paper", "seed"),
                                ("qnli", "fewshot", "zerogen"), ("adversarial_qa", "paper", "seed")):
        task = load_task(tname)
        llm = QueuedLLM(lambda r: "" if r.sample_index % 3 == 0 else " A fairly long answer written here for you.")
        b = PromptBuilder(task, style)
        b.demos["seed"] = [b.fields("seed", text="A demo text of some words",
                                    label=task.label_names[0] if task.labels else None, context="Demo context.")]
        contexts = [{"context": f"Context {i} says the bridge opened in 19{i}2.",
                     "answer": {"text": f"19{i}2", "start": 31}} for i in range(4)]
        rat = {lab: ["good acting", "bad plot", "nice music"] for lab in task.label_names}
        s = Synthesizer(task, llm, b, seed=5)
        s.seed_examples(6, rationales=rat if task.kind == "single" else None, contexts=contexts, stage=stage)
        keys += [llm.key(r) for r in llm.seen]
    return hashlib.sha256("\n".join(keys).encode()).hexdigest(), len(keys)


def test_default_per_call_sends_the_same_requests_and_keys_as_before():
    # computed with the code before --per-call existed (main at b53b41b): same requests, same cache keys
    assert _fixed_run_keys() == ("0f5cd1636f2f8d89d6d564a98e5208cf5e007297cd34666642cfa7e78fe97c32", 45)


def test_response_schema_is_left_out_of_the_key_when_unset():
    llm = QueuedLLM()
    plain = Request(prompt="p", params=GenParams(), sample_index=3)
    assert "response_schema" not in plain.payload()["params"]
    assert set(plain.payload()["params"]) == {"max_tokens", "temperature", "top_p", "repeat_penalty", "stop"}
    blob = json.dumps({"llm": llm.identity(), "prompt": "p", "messages": None,
                       "params": {"max_tokens": 64, "temperature": 0.8, "top_p": 0.95, "repeat_penalty": 1.15,
                                  "stop": []}, "sample_index": 3}, sort_keys=True, ensure_ascii=False)
    assert llm.key(plain) == hashlib.sha256(blob.encode()).hexdigest()
    schema = Request(prompt="p", params=GenParams(response_schema=list_schema()), sample_index=3)
    assert schema.payload()["params"]["response_schema"] == list_schema()
    assert llm.key(schema) != llm.key(plain)


def test_list_sample_indices_are_distinct_per_shape_and_band():
    seen = {}
    for stage in ("seed", "zerogen"):
        for pc, pk in [(n, 1) for n in (2, 3, 5, 49)] + [(1, k) for k in (2, 3, 49)]:
            for i in (0, 1, 99_999):
                si = list_sample_index(stage, pc, pk, i)
                assert si not in seen, (stage, pc, pk, i, seen.get(si))
                seen[si] = (stage, pc, pk, i)
                assert band_of(si) == f"{stage}_list"
    one = {SAMPLE_BANDS["seed"] + i for i in range(1000)} | {SAMPLE_BANDS["zerogen"] + i for i in range(1000)}
    assert not one & set(seen)          # never the sample index of a one-example request
    with pytest.raises(S3Error, match="at most"):
        list_sample_index("seed", 5, 1, 100_000)


# -- parsing --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw,n,first,items,problem", [
    ('{"answers": ["a b", "c d", "e f"]}', 3, False, ["a b", "c d", "e f"], None),
    ('```json\n{"answers": ["a b", "c d"]}\n```', 2, False, ["a b", "c d"], None),
    ('["a b", "c d", "e f", "g h"]', 3, False, ["a b", "c d", "e f"], None),
    ('{"answers": ["a b", "c d", "e f', 3, False, ["a b", "c d"], "truncated_json"),
    ('{"answers": ["a b"]}', 3, False, ["a b"], "fewer_items"),
    ('{"answers": 5}', 3, False, [], "no_list"),
    ("1. first one\n2. second one\n3. third one", 3, False, ["first one", "second one", "third one"], None),
    (" first one\n2) second one\n\n3: third one\n4. extra", 3, True, ["first one", "second one", "third one"], None),
    ("Here are three:\n1. first one\n2. second one", 3, False, ["first one", "second one"], "fewer_items"),
    ("no list at all", 3, False, [], "no_list"),
])
def test_parse_list(raw, n, first, items, problem):
    assert parse_list(raw, n, first_is_item=first) == (items, problem)


# -- the synthesizer with a queued fake LLM ---------------------------------------------------------------------
def _review_list(r: Request) -> str:
    """A numbered list continuing an open "1." with a different review per line."""
    n = r.params.max_tokens // IMDB.stage("seed").max_tokens
    return "\n".join(f"{'' if k == 0 else f'{k + 1}.'} {REVIEW} take {r.sample_index} {k}" for k in range(n))


def test_per_call_five_gives_five_examples_per_answer_each_with_provenance():
    llm = QueuedLLM(_review_list)
    b = PromptBuilder(IMDB, "fewshot")
    b.demos["seed"] = [b.fields("seed", text=f"demo review {i} was good", label=IMDB.label_names[i % 2],
                                rationales=["r1", "r2"]) for i in range(4)]
    s = Synthesizer(IMDB, llm, b, seed=1, per_call=5)
    out = s.seed_examples(12, rationales={lab: ["good acting", "a dull plot"] for lab in IMDB.label_names})
    assert len(out) == 12                                   # seed size still means examples kept
    assert len(llm.seen) == math.ceil(12 / 5) == 3          # ceil(remaining / N) requests
    r = llm.seen[0]
    assert r.prompt.endswith(":\n1.") and r.params.stop == ("\n\n",) and r.params.max_tokens == 5 * 80
    assert r.prompt.count("\n1. ") == 2                     # the demonstrations, grouped into one list per label
    by_request: dict = {}
    for ex in out:
        assert ex.meta["per_request"] == 5 and ex.meta["stage"] == "seed"
        by_request.setdefault(ex.meta["sample_index"], []).append(ex)
    assert all(si // 100_000 == (SAMPLE_BANDS["seed_list"] + 5 * 100_000) // 100_000 for si in by_request)
    for si, exs in by_request.items():
        assert [e.meta["item"] for e in exs] == list(range(len(exs)))
        assert len({e.label for e in exs}) == 1 and len({tuple(e.meta["rationales"]) for e in exs}) == 1
        assert [e.text for e in exs] == [f"{REVIEW} take {si} {k}" for k in range(len(exs))]
    rep = s.reports["seed"].to_dict()
    assert rep["calls"] == 3 and rep["requested"] == 15 and rep["kept"] == 15 and rep["per_request"] == 5


def test_a_malformed_answer_keeps_what_parses_and_logs_the_rest():
    answers = iter([json.dumps({LIST_KEY: [f"{REVIEW} {k}" for k in range(5)]}),
                    '{"answers": ["' + REVIEW + ' cut", "' + REVIEW + ' also',      # truncated JSON
                    "I cannot write reviews.",                                       # no list at all
                    None])                                                           # a failed request
    llm = QueuedLLM(lambda r: next(answers))
    s = Synthesizer(IMDB, llm, PromptBuilder(IMDB, "paper"), seed=2, per_call=5, schema=True)
    out = s.seed_examples(20, max_passes=1)
    assert len(llm.seen) == 4 and all(r.params.response_schema == list_schema() for r in llm.seen)
    assert "as JSON" in llm.seen[0].messages[-1][1]
    assert len(out) == 6
    rep = s.reports["seed"].to_dict()
    assert rep["requested"] == 20 and rep["kept"] == 6
    assert rep["rejects"] == {"truncated_json": 4, "no_list": 5, "llm_error": 5}
    assert sum(rep["rejects"].values()) + rep["kept"] == rep["requested"]
    log = {e["reason"]: e for e in rep["reject_log"]}
    assert set(log) == {"truncated_json", "no_list"}
    assert log["truncated_json"]["parsed"] == 1 and log["truncated_json"]["raw"].startswith('{"answers": ["')
    assert log["no_list"]["raw"] == "I cannot write reviews."
    assert len(rep["reject_log"]) <= REJECT_LOG_MAX


def test_per_context_pair_task_asks_each_label_for_one_context_in_one_request():
    def answer(r):
        return "1. Where did the bridge open first?\n2. Who paid for the bridge to be built?"
    llm = QueuedLLM(answer)
    contexts = [{"context": f"The bridge number {i} opened in 1932 after four years of work."} for i in range(3)]
    s = Synthesizer(QNLI, llm, PromptBuilder(QNLI, "paper"), seed=0, per_context=2)
    out = s.seed_examples(6, contexts=contexts)
    assert len(out) == 6 and len(llm.seen) == 3
    for r in llm.seen:
        text = r.messages[-1][1]
        ctx = next(c["context"] for c in contexts if c["context"] in text)
        assert text.count(ctx) == 1                         # the context once for both labels
        assert "\n1. in\n2. not in" in text or "\n1. not in\n2. in" in text
    for si in {e.meta["sample_index"] for e in out}:
        pair = [e for e in out if e.meta["sample_index"] == si]
        assert {e.label for e in pair} == set(QNLI.label_names) and len({e.context for e in pair}) == 1
    # completion prompts: one request per label, adjacent, sharing the context's prefix
    llm2 = QueuedLLM(lambda r: " Where did the bridge open first?")
    b = PromptBuilder(QNLI, "fewshot")
    s2 = Synthesizer(QNLI, llm2, b, seed=0, per_context=2)
    assert len(s2.seed_examples(6, contexts=contexts)) == 6 and len(llm2.seen) == 6
    assert all(r.prompt.rstrip().endswith("the information:") for r in llm2.seen)
    assert len({r.sample_index for r in llm2.seen}) == 6


def test_per_context_qa_uses_the_contexts_answers_in_turn():
    ctx = "Anna built the bridge in 1932 with stone from the hills."
    contexts = [{"context": ctx, "answer": {"text": "Anna", "start": 0}},
                {"context": ctx, "answer": {"text": "1932", "start": 25}}]
    llm = QueuedLLM(lambda r: "1. Who built the bridge with stone?\n2. When was the bridge built?")
    s = Synthesizer(QA, llm, PromptBuilder(QA, "paper"), seed=0, per_context=2)
    out = s.seed_examples(2, contexts=contexts)
    assert {e.answer["text"] for e in out} == {"Anna", "1932"}
    assert "in place of" in llm.seen[0].messages[-1][1]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(S3Error, match="--per-context"):
        Synthesizer(IMDB, QueuedLLM(), PromptBuilder(IMDB, "paper"), seed=0, per_context=2)
    with pytest.raises(S3Error, match="use one of them"):
        RunConfig(task="rte", gold_eval="g.jsonl", per_call=2, per_context=2)
    with pytest.raises(S3Error, match="--per-call 0"):
        RunConfig(task="rte", gold_eval="g.jsonl", per_call=0)


# -- backends: the schema parameter ------------------------------------------------------------------------------
def test_openai_body_carries_response_format_in_chat_mode_only():
    req = Request(messages=(("user", "hi"),), params=GenParams(response_schema=list_schema()))
    chat = OpenAICompatLLM("m", base_url="http://127.0.0.1:9/v1")
    body = chat._body(req, 7)
    assert chat.supports_schema
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answers", "strict": True, "schema": json.loads(list_schema())}}
    assert "response_format" not in chat._body(Request(messages=(("user", "hi"),)), 7)
    comp = OpenAICompatLLM("m", base_url="http://127.0.0.1:9/v1", mode="completions")
    assert not comp.supports_schema
    assert "response_format" not in comp._body(Request(prompt="hi", params=req.params), 7)


def test_vllm_structured_outputs_parameters_new_and_old_api():
    class Params:
        def __init__(self, **kw):
            self.kw = kw

    class NewSP:                     # vllm.sampling_params on vLLM >= 0.10.2
        StructuredOutputsParams = Params

    class OldSP:                     # before: GuidedDecodingParams
        GuidedDecodingParams = Params

    class New:
        sampling_params = NewSP

    class Old:
        sampling_params = OldSP

    schema = json.loads(list_schema())
    kw = structured_kwargs(structured_outputs_kind(New), list_schema())
    assert list(kw) == ["structured_outputs"] and kw["structured_outputs"].kw == {"json": schema}
    kw = structured_kwargs(structured_outputs_kind(Old), list_schema())
    assert list(kw) == ["guided_decoding"] and kw["guided_decoding"].kw == {"json": schema}
    assert structured_kwargs(structured_outputs_kind(object()), list_schema()) == {}


# -- end to end through the CLI and the OpenAI-compatible stub ---------------------------------------------------
def test_per_call_five_on_the_stub(tmp_path, shared_data, monkeypatch):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(shared_data / "rte" / "validation.jsonl")[:30]))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import s3synth.report as report_mod
    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: None)
    with OpenAIStub() as stub:
        def run(out, *extra):
            return CliRunner().invoke(cli, [
                "run", "--task", "rte", "--gold-eval", str(gold), "--llm", "openai:stub-model",
                "-o", f"base_url={stub.url}", "-o", "concurrency=1", "--learner", "fake", "--seed-size", "12",
                "--rounds", "0", "--out", str(out), "-q", *extra])

        stub.fail_next("cut_content")        # the first answer is cut off by max_tokens mid-JSON
        r = run(tmp_path / "pc5", "--per-call", "5")
        assert r.exit_code == 0, r.output
        seed_bodies = [b for b in stub.bodies if b and "response_format" in b]
        assert seed_bodies and len(seed_bodies) == len(stub.bodies)
        assert all(b["max_tokens"] == 5 * RTE.stage("seed").max_tokens for b in seed_bodies)
        seed = read_jsonl(tmp_path / "pc5" / "seed.jsonl")
        assert len(seed) == 12 and len({e["id"] for e in seed}) == 12
        groups: dict = {}
        for e in seed:
            groups.setdefault(e["meta"]["sample_index"], []).append(e["meta"]["item"])
        assert all(len(v) == len(set(v)) for v in groups.values())
        assert max(len(v) for v in groups.values()) == 5          # five examples from one answer
        syn = read_json(tmp_path / "pc5" / "manifest.json")["synthesis"]["seed"]
        assert syn["per_request"] == 5 and syn["calls"] == len(stub.bodies)
        assert syn["rejects"].get("truncated_json", 0) >= 1
        assert sum(syn["rejects"].values()) + syn["kept"] == syn["requested"]
        assert syn["reject_log"][0]["reason"] == "truncated_json" and syn["reject_log"][0]["raw"].startswith("{")

        n = stub.count               # run again: every answer from the cache, nothing sent
        assert run(tmp_path / "pc5", "--per-call", "5").exit_code == 0 and stub.count == n
        # the default sends one request per example, without response_format, with other sample indices
        assert run(tmp_path / "pc1").exit_code == 0
        plain = stub.bodies[n:]
        assert plain and all("response_format" not in b for b in plain)


def test_estimate_counts_list_requests(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"premise": f"Premise {i}: the town of Brill has {i} stone bridges.",
                                        "hypothesis": f"Brill has {i} bridges.",
                                        "label": ["entailment", "not_entailment"][i % 2]}) + "\n" for i in range(20)))
    def est(*extra):
        r = CliRunner().invoke(cli, ["estimate", "--task", "rte", "--gold-eval", str(gold), "--learner", "fake",
                                     "--seed-size", "8", "--rounds", "0", "--json", "-q", "--llm", "openai:m",
                                     "--base-url", "http://127.0.0.1:9/v1", *extra])
        assert r.exit_code == 0, r.output
        stage = json.loads(r.stdout)["stages"][0]
        return {**stage["expected"], "requests": stage["requests"]}
    one, five = est(), est("--per-call", "5")
    assert one["calls"] == 9 and five["calls"] == math.ceil(9 / 5) == 2 and five["requests"] == 2
    assert five["completion_tokens"] == 2 * 5 * RTE.stage("seed").max_tokens
    assert five["prompt_tokens"] < one["prompt_tokens"]
    pk = est("--per-context", "2")                         # chat: one request per context
    assert pk["calls"] == math.ceil(9 / 2) == 5 and pk["requests"] == 4
    pkc = est("--per-context", "2", "--prompt-style", "fewshot")    # completions: one per target, shared prefix
    assert pkc["calls"] == 10 and pkc["requests"] == 8


def test_per_call_labels_take_turns_so_a_small_seed_stays_balanced():
    llm = QueuedLLM(lambda r: "\n".join(f"{k + 1}. {REVIEW} {r.sample_index} {k}" for k in range(5)))
    s = Synthesizer(IMDB, llm, PromptBuilder(IMDB, "paper"), seed=4, per_call=5)
    out = s.seed_examples(20)
    assert len(llm.seen) == 4
    assert sorted(Counter(e.label for e in out).values()) == [10, 10]
