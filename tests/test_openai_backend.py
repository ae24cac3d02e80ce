"""The OpenAI-compatible backend against a local stub server (tests/openai_stub.py); no internet."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest
from openai_stub import OpenAIStub

from s3synth.errors import LLMError
from s3synth.llm import make_llm
from s3synth.llm.base import GenParams, Request
from s3synth.llm.cache import LLMCache
from s3synth.llm.openai_compat import OpenAICompatLLM, TokenBucket

SECRET = "sk-test-SECRET-0123456789"
FAST = dict(backoff_base=0.01, backoff_cap=0.05, timeout=5.0)


@pytest.fixture
def stub():
    with OpenAIStub() as s:
        yield s


@pytest.fixture
def llm_for(stub, monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", SECRET)
    made = []

    def make(**kw):
        kw = {**FAST, "base_url": stub.url, "api_key_env": "TEST_OPENAI_KEY", **kw}
        llm = OpenAICompatLLM(kw.pop("model", "stub-model"), **kw)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


def prompts(n, prefix="prompt"):
    return [Request(prompt=f"{prefix} number {i}: write something") for i in range(n)]


# -- bodies and answers ------------------------------------------------------------------------
def test_chat_mode_bodies_texts_seeds_and_usage(stub, llm_for):
    llm = llm_for(seed=7)
    params = GenParams(max_tokens=33, temperature=0.5, top_p=0.9, stop=("\n\n", "###"))
    reqs = [Request(messages=(("system", "be brief"), ("user", "Tell me about cats")), params=params),
            Request(prompt="A plain prompt in chat mode")]
    out = llm.generate(reqs)
    seeds = [llm.request_seed(llm.key(r)) for r in reqs]
    assert [b["seed"] for b in stub.bodies] == seeds
    b0, b1 = stub.bodies
    assert {r["path"] for r in stub.received} == {"/v1/chat/completions"}
    assert b0["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Tell me about cats"}]
    assert (b0["model"], b0["max_tokens"], b0["temperature"], b0["top_p"], b0["n"]) == ("stub-model", 33, 0.5, 0.9, 1)
    assert b0["stop"] == ["\n\n", "###"]
    assert "stop" not in b1 and "repeat_penalty" not in b0 and "prompt" not in b0
    assert b1["messages"] == [{"role": "user", "content": "A plain prompt in chat mode"}]
    assert out[0].text == f"answer to: Tell me about cats #{seeds[0]}"
    assert out[1].text == f"answer to: A plain prompt in chat mode #{seeds[1]}"
    assert out[0].prompt_tokens == 4 and out[0].completion_tokens == len(out[0].text.split())   # from `usage`
    assert out[0].finish_reason == "stop" and out[0].error is None
    assert all(r["auth"] == f"Bearer {SECRET}" for r in stub.received)
    assert llm.http_stats["attempts"] == 2 and llm.http_stats["retries"] == 0
    assert llm.http_stats["status"] == {200: 2}


def test_completions_mode(stub, llm_for):
    llm = llm_for(mode="completions")
    out = llm.generate([Request(prompt="Once upon a time")])
    assert stub.received[0]["path"] == "/v1/completions"
    body = stub.bodies[0]
    assert body["prompt"] == "Once upon a time" and "messages" not in body
    assert out[0].text == f"answer to: Once upon a time #{body['seed']}"


def test_chat_request_in_completions_mode_raises_before_any_http(stub, llm_for):
    llm = llm_for(mode="completions")
    with pytest.raises(LLMError, match="completions"):
        llm.generate([Request(messages=(("user", "hi"),))])
    assert stub.count == 0


def test_usage_estimated_when_absent(stub, llm_for):
    stub.usage = False
    llm = llm_for()
    req = Request(prompt="x" * 41)
    c = llm.generate([req])[0]
    assert c.prompt_tokens == math.ceil(41 / 4) == 11
    assert c.completion_tokens == math.ceil(len(c.text) / 4)


def test_extra_body_merges_and_repeat_penalty_only_on_request(stub, llm_for):
    llm = llm_for(extra_body={"repeat_penalty": True, "repetition_penalty": 1.3, "top_k": 40,
                              "max_tokens": None, "max_completion_tokens": 12})
    llm.generate([Request(prompt="p", params=GenParams(repeat_penalty=1.2))])
    body = stub.bodies[0]
    assert body["repeat_penalty"] == 1.2 and body["repetition_penalty"] == 1.3 and body["top_k"] == 40
    assert "max_tokens" not in body and body["max_completion_tokens"] == 12


def test_make_llm_registry(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm = make_llm("openai:reg-model", base_url=stub.url, **FAST)
    try:
        assert isinstance(llm, OpenAICompatLLM) and llm.batch_size % llm.concurrency == 0
        assert llm.generate(prompts(1))[0].error is None
        assert stub.bodies[0]["model"] == "reg-model" and stub.received[0]["auth"] is None   # no key: no header
    finally:
        llm.close()


# -- retries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["429", "500", "503", "hang", "truncated", "not_json", "empty_choices",
                                   "empty_content"])
def test_each_fault_is_retried_until_success(stub, llm_for, fault):
    stub.hang_s = 0.8
    llm = llm_for(max_retries=3, timeout=0.25)
    stub.fail_next(fault, 2)
    c = llm.generate(prompts(1))[0]
    assert c.error is None and c.text.startswith("answer to:")
    assert stub.count == 3
    assert llm.http_stats["attempts"] == 3 and llm.http_stats["retries"] == 2
    assert len({b["seed"] for b in stub.bodies}) == 1     # the same request each time


def test_faults_at_a_rate_all_recover(stub, llm_for):
    stub.fail_rate(0.3, ["500", "503", "truncated", "empty_choices"], seed=3)
    llm = llm_for(max_retries=8)
    out = llm.generate(prompts(20))
    assert all(c.error is None for c in out)
    assert llm.http_stats["attempts"] == stub.count > 20
    assert llm.http_stats["retries"] == stub.count - 20


def test_retry_after_is_honoured(stub, llm_for):
    stub.retry_after = "0.3"
    llm = llm_for(backoff_base=0.001, backoff_cap=0.001)
    stub.fail_next("429", 1)
    assert llm.generate(prompts(1))[0].error is None
    t0, t1 = (r["t"] for r in stub.received)
    assert t1 - t0 >= 0.28
    assert llm.http_stats["status"] == {429: 1, 200: 1}


def test_exhausted_retries_give_an_error_completion(stub, llm_for):
    stub.fail_next("500", 10)
    llm = llm_for(max_retries=2)
    out = llm.generate(prompts(1))
    assert out[0].error is not None and "500" in out[0].error and out[0].text == ""
    assert stub.count == 3 and llm.http_stats["attempts"] == 3
    assert llm.stats.failures == 1 and llm.stats.calls == 0


def test_context_too_long_400_fails_only_that_request(stub, llm_for):
    llm = llm_for()
    llm.generate(prompts(1, "warm"))          # the probe
    stub.fail_next("400_context", 1)
    out = llm.generate(prompts(1))
    assert out[0].error is not None and "context length" in out[0].error
    assert llm.http_stats["retries"] == 0


# -- configuration errors ----------------------------------------------------------------------
def test_wrong_key_raises_at_once_with_one_attempt(stub, llm_for):
    stub.api_key = "sk-the-right-one"       # the stub echoes the wrong key in its message, as OpenAI does
    llm = llm_for()
    with pytest.raises(LLMError) as ei:
        llm.generate(prompts(16))
    msg = str(ei.value)
    assert "401" in msg and "TEST_OPENAI_KEY" in msg and "Incorrect API key" in msg
    assert SECRET not in msg and "\n" not in msg
    assert stub.count == 1 and llm.http_stats["attempts"] == 1 and llm.http_stats["retries"] == 0


def test_wrong_model_raises_at_once_with_one_attempt(stub, llm_for):
    stub.models = {"real-model"}
    llm = llm_for(model="no-such-model")
    with pytest.raises(LLMError) as ei:
        llm.generate(prompts(16))
    msg = str(ei.value)
    assert "404" in msg and "no-such-model" in msg and "does not exist" in msg and SECRET not in msg
    assert stub.count == 1 and llm.http_stats["attempts"] == 1


def test_401_mid_run_is_not_retried(stub, llm_for):
    llm = llm_for(max_retries=5)
    llm.generate(prompts(1, "warm"))
    stub.fail_next("401", 1)
    with pytest.raises(LLMError, match="401"):
        llm.generate(prompts(1))
    assert stub.count == 2 and llm.http_stats["retries"] == 0


def test_unreachable_server_raises(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]         # closed again at once: nothing listens there
    llm = OpenAICompatLLM("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, **FAST)
    try:
        with pytest.raises(LLMError, match="cannot reach"):
            llm.generate(prompts(3))
        assert llm.http_stats["attempts"] == 2
    finally:
        llm.close()


def test_bad_arguments():
    with pytest.raises(LLMError):
        OpenAICompatLLM("m", mode="edits")
    with pytest.raises(LLMError, match="base_url"):
        OpenAICompatLLM("m", base_url="localhost:8000/v1")


# -- secrets and identity ----------------------------------------------------------------------
def test_key_never_in_identity_repr_or_errors(stub, monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", SECRET)
    url = stub.url.replace("http://", "http://user:pw-SECRET@")
    llm = OpenAICompatLLM("m", base_url=url, api_key_env="TEST_OPENAI_KEY", **FAST)
    try:
        ident = llm.identity()
        assert ident == {"backend": "openai", "model": "m", "base_url": stub.url.removeprefix("http://"),
                         "mode": "chat"}
        for text in (str(ident), repr(llm), str(llm.__dict__.get("http_stats"))):
            assert SECRET not in text and "pw-SECRET" not in text
        stub.api_key = "other"
        with pytest.raises(LLMError) as ei:
            llm.generate(prompts(1))
        assert SECRET not in str(ei.value) and "pw-SECRET" not in str(ei.value)
    finally:
        llm.close()


def test_identity_separates_servers_and_modes(stub, llm_for):
    a, b = llm_for(), llm_for(mode="completions")
    c = llm_for(base_url="http://other-host:8000/v1")
    req = Request(prompt="same")
    assert len({a.key(req), b.key(req), c.key(req)}) == 3


# -- cache, concurrency, rate limits -----------------------------------------------------------
def test_cache_hit_sends_no_http(stub, llm_for, tmp_path):
    cache = LLMCache(tmp_path / "llm.sqlite")
    reqs = prompts(5)
    first = llm_for(cache=cache).generate(reqs)
    assert stub.count == 5
    llm2 = llm_for(cache=cache)
    second = llm2.generate(reqs)
    assert stub.count == 5 and llm2.http_stats["attempts"] == 0
    assert [c.text for c in second] == [c.text for c in first] and all(c.cached for c in second)
    cache.close()


def test_requests_overlap(stub, llm_for):
    stub.delay = 0.2
    llm = llm_for(concurrency=8)
    out = llm.generate(prompts(8))
    assert all(c.error is None for c in out)
    assert stub.max_in_flight >= 2
    assert stub.max_in_flight <= 8


def test_concurrency_bound_is_kept(stub, llm_for):
    stub.delay = 0.05
    llm = llm_for(concurrency=3)
    llm.generate(prompts(12))
    assert 2 <= stub.max_in_flight <= 3


def test_rpm_spaces_requests(stub, llm_for):
    llm = llm_for(rpm=600, concurrency=8)      # 10 per second, at most 10 at once
    llm.generate(prompts(15))
    ts = sorted(r["t"] for r in stub.received)
    assert ts[-1] - ts[0] >= 0.4


def test_tpm_counts_prompt_and_max_tokens(stub, llm_for):
    llm = llm_for(tpm=60_000)                   # 1000 tokens per second, bucket of 1000
    params = GenParams(max_tokens=495)
    reqs = [Request(prompt=f"{i:02d}" + "x" * 38, params=params) for i in range(3)]   # 10 + 495 tokens each
    llm.generate(reqs)
    ts = sorted(r["t"] for r in stub.received)
    assert ts[-1] - ts[0] >= 0.45               # 3 x 505 tokens from a bucket of 1000 at 1000/s
    assert llm._tpm.waits >= 1
    small = llm_for(tpm=60_000)
    small.generate([Request(prompt=f"q{i}", params=GenParams(max_tokens=5)) for i in range(20)])
    assert small._tpm.waits == 0 and stub.count == 23   # 20 x 6 tokens fit in the bucket at once


def test_token_bucket_debt():
    bucket = TokenBucket(6000)                  # 100 per second, bucket of 100

    async def go():
        t0 = time.monotonic()
        await bucket.take(130)                  # bigger than the bucket: goes at once, leaves a debt of 30
        waits_first, level = bucket.waits, bucket.level
        await bucket.take(1)                    # waits for the debt plus one: 0.31 s
        return waits_first, level, time.monotonic() - t0

    waits_first, level, total = asyncio.run(go())
    assert waits_first == 0 and level == pytest.approx(-30, abs=1) and bucket.waits >= 1 and total >= 0.29


def test_generate_from_inside_a_running_loop(stub, llm_for):
    llm = llm_for()

    async def inside():
        return llm.generate(prompts(2))

    out = asyncio.run(inside())
    assert [c.error for c in out] == [None, None] and stub.count == 2


# -- reasoning models ----------------------------------------------------------------------------
def test_think_block_is_cleaned_to_the_answer(stub, llm_for):
    stub.reasoning = "think"
    llm = llm_for()
    out = llm.generate([Request(prompt="Write a review")])
    seed = llm.request_seed(llm.key(Request(prompt="Write a review")))
    assert out[0].error is None and out[0].text == f"answer to: Write a review #{seed}"


@pytest.mark.parametrize("text,want", [
    ("<think>plan</think>\n\nA fine film.", ("A fine film.", None)),
    ("<THINK>a</THINK> one <think>b</think> two", ("two", None)),
    ("<think>never closes because max_tokens ran out", ("", "the <think> block never closed (cut off by max_tokens?)")),
    ("<think>all thought</think>\n  ", ("", "nothing after the </think> block")),
])
def test_strip_think_hand_worked(text, want):
    from s3synth.llm.openai_compat import strip_think
    assert strip_think(text) == want


def test_reasoning_only_answer_is_a_reject_with_its_reason_not_retried(stub, llm_for):
    from s3synth.method.synth import reject_reason

    stub.reasoning = "only"
    llm = llm_for()
    out = llm.generate(prompts(2))
    assert all(c.text == "" and c.error.startswith("reasoning only: the answer holds only reasoning_content")
               and "finish_reason=length" in c.error for c in out)
    assert stub.count == 2 and llm.http_stats["retries"] == 0           # asked once each: thinking is paid
    assert reject_reason(out[0].error) == "reasoning_only" and reject_reason("HTTP 500: x") == "llm_error"


def test_a_model_refusing_max_tokens_gets_max_completion_tokens_for_the_rest_of_the_run(stub, llm_for):
    stub.refuse_max_tokens = True
    llm = llm_for(concurrency=2)
    out = llm.generate([Request(prompt="first", params=GenParams(max_tokens=21))] + prompts(3))
    assert all(c.error is None for c in out)
    bodies = stub.bodies
    assert "max_tokens" in bodies[0] and "max_completion_tokens" not in bodies[0]     # the refused probe
    assert all("max_tokens" not in b for b in bodies[1:]) and bodies[1]["max_completion_tokens"] == 21
    assert len(bodies) == 5 and llm.http_stats["status"] == {400: 1, 200: 4}
