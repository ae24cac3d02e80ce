"""`--batch`: provider batch jobs through loopback stubs of OpenAI's Batch API (tests/openai_stub.py) and
Anthropic's Messages + Message Batches APIs (tests/anthropic_stub.py), both driven by the official SDKs.
Batch ids recorded before polling, answers matched by custom_id, unanswered requests (and only those)
resubmitted, a killed run that polls its recorded batch instead of paying twice, and prices at the batch
discount (estimate and --max-cost)."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from anthropic_stub import AnthropicStub
from click.testing import CliRunner
from conftest import plugin_env
from openai_stub import OpenAIStub

from s3synth.cli import cli
from s3synth.errors import BudgetExceeded, LLMError
from s3synth.io import read_json, read_jsonl
from s3synth.llm import Budget, make_llm
from s3synth.llm.base import GenParams, Request, estimate_prompt_tokens
from s3synth.llm.batch import BatchExecutor
from s3synth.llm.cache import LLMCache

OPENAI_KEY = "sk-test-BATCH-0123456789"
ANTHROPIC_KEY = "sk-ant-test-SECRET-9876543210"
POLL = 0.01


def reqs(n, prefix="Write a sentence about"):
    return [Request(messages=(("system", "Be brief."), ("user", f"{prefix} topic {i}.")),
                    params=GenParams(max_tokens=16)) for i in range(n)]


def openai_llm(stub, tmp_path, name="c", **kw):
    llm = make_llm("openai:stub-model", base_url=stub.url, api_key_env="TEST_BATCH_KEY", backoff_base=0.01,
                   cache=LLMCache(tmp_path / f"{name}.sqlite"), **kw)
    llm.executor = BatchExecutor(poll=POLL)
    return llm


@pytest.fixture
def ostub(monkeypatch):
    monkeypatch.setenv("TEST_BATCH_KEY", OPENAI_KEY)
    with OpenAIStub() as s:
        s.api_key = OPENAI_KEY
        yield s


def submitted(stub) -> Counter:
    return Counter(k for b in stub.batch_log for k in b["custom_ids"])


# -- OpenAI: states, error file, expired batch ---------------------------------------------------
def test_openai_batch_goes_through_the_documented_states_and_equals_online(ostub, tmp_path):
    ostub.polls_per_state = 2
    llm = openai_llm(ostub, tmp_path)
    online = make_llm("openai:stub-model", base_url=ostub.url, api_key_env="TEST_BATCH_KEY").generate(reqs(7))
    n_online = len(ostub.answered)
    out = llm.generate(reqs(7))
    assert [c.text for c in out] == [c.text for c in online] and all(c.error is None for c in out)
    assert [c.prompt_tokens for c in out] == [c.prompt_tokens for c in online]      # usage of the output lines
    (b,) = ostub.batch_log
    assert b["custom_ids"] == [llm.key(r) for r in reqs(7)]        # custom_id = the request's cache key
    line = json.loads(ostub.files["file-0001"]["content"].decode().splitlines()[0])
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["body"] == ostub.answered[0] and line["body"]["seed"] == llm.request_seed(llm.key(reqs(7)[0]))
    batch = ostub.batches[b["id"]]
    assert batch["status"] == "completed" and batch["completion_window"] == "24h"
    assert all(batch[f"{s}_at"] for s in ("in_progress", "finalizing", "completed"))
    assert ostub.retrievals[b["id"]] >= 6                          # 2 polls in each of 3 states
    assert ostub.files["file-0001"]["purpose"] == "batch"
    assert len(ostub.answered) - n_online == 7
    assert llm.stats.batch_calls == llm.stats.calls == 7
    assert llm.cache.batches() == [{"id": b["id"], "provider": "openai", "input_file": "file-0001", "requests": 7,
                                    "status": "completed", "collected": True}]
    again = llm.generate(reqs(7))                                   # all cached now: nothing submitted
    assert len(ostub.batch_log) == 1 and all(c.cached for c in again)


def test_error_file_lines_and_an_expired_batch_resubmit_only_the_unanswered(ostub, tmp_path):
    llm = openai_llm(ostub, tmp_path)
    rs = reqs(8)
    keys = [llm.key(r) for r in rs]
    ostub.line_errors = {1: 500, 2: 400}       # a server error (retried) and a refusal (a reject)
    ostub.expire_next = 6                      # lines 6 and 7 unanswered: batch_expired in the error file
    out = llm.generate(rs)
    first, second = ostub.batch_log
    assert ostub.batches[first["id"]]["status"] == "expired"
    err = [json.loads(x) for x in ostub.files[ostub.batches[first["id"]]["error_file_id"]]["content"].splitlines()]
    assert {e["error"]["code"] for e in err if e["error"]} == {"batch_expired"}
    assert sorted(second["custom_ids"]) == sorted([keys[1], keys[6], keys[7]])    # never an answered one
    assert out[2].error and "HTTP 400" in out[2].error and not out[2].text
    assert all(c.error is None and c.text for i, c in enumerate(out) if i != 2)
    assert max(submitted(ostub).values()) == 2 and submitted(ostub)[keys[0]] == 1
    assert llm.stats.batch_calls == 7 and llm.stats.failures == 1


def test_batch_fallback_online_asks_the_unanswered_online(ostub, tmp_path):
    llm = openai_llm(ostub, tmp_path)
    llm.executor = BatchExecutor(poll=POLL, fallback="online")
    rs = reqs(5)
    ostub.expire_next = 2
    out = llm.generate(rs)
    assert len(ostub.batch_log) == 1 and all(c.error is None for c in out)
    online = [r["body"] for r in ostub.received if r["path"] == "/v1/chat/completions"]
    assert [b["messages"][-1]["content"] for b in online] == [f"Write a sentence about topic {i}." for i in (2, 3, 4)]
    assert llm.stats.batch_calls == 2 and llm.stats.calls == 5
    # the answers from the batch are at the batch price, the others at the online price
    spent = {**llm.cache.spent(), **llm.cache.batch_spent()}
    assert spent["batch_prompt_tokens"] == sum(c.prompt_tokens for c in out[:2])


def test_failed_and_lost_batches_and_bad_key(ostub, tmp_path, monkeypatch):
    llm = openai_llm(ostub, tmp_path)
    llm.executor = BatchExecutor(poll=POLL, resubmits=1)
    rs = reqs(3)
    # a recorded batch the provider does not know (another key or organisation): submitted again, said so
    llm.cache.record_batch("batch_gone", "openai", "file-x", [llm.key(r) for r in rs], "x", "in_progress")
    out = llm.generate(rs)
    assert all(c.error is None for c in out) and len(ostub.batch_log) == 1
    assert {b["id"]: b["status"] for b in llm.cache.batches()}["batch_gone"] == "lost"
    monkeypatch.setenv("TEST_BATCH_KEY", "sk-wrong-KEY-000000")
    bad = openai_llm(ostub, tmp_path, name="bad")
    with pytest.raises(LLMError) as e:
        bad.generate(reqs(2, "other"))
    msg = str(e.value)
    assert "401" in msg and "TEST_BATCH_KEY" in msg and "sk-wrong" not in msg and "\n" not in msg


def test_a_batch_created_but_not_recorded_is_found_by_its_metadata_not_paid_twice(ostub, tmp_path, monkeypatch):
    """The process dies between batches.create and recording the id: the next run finds the batch by the
    fingerprint of its custom_ids in `metadata` and polls it."""
    llm = openai_llm(ostub, tmp_path)
    rs = reqs(4)
    real = LLMCache.record_batch

    def die(self, *a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(LLMCache, "record_batch", die)
    with pytest.raises(KeyboardInterrupt):
        llm.generate(rs)
    assert len(ostub.batch_log) == 1 and llm.cache.batches() == []
    monkeypatch.setattr(LLMCache, "record_batch", real)
    out = llm.generate(rs)
    assert all(c.error is None for c in out) and len(ostub.batches) == 1
    assert [b["id"] for b in llm.cache.batches()] == ["batch_0001"]
    assert ostub.batches["batch_0001"]["metadata"]["created_by"] == "s3synth"
    # recorded batches are never taken for unrecorded ones: after an expiry the rest goes out in a new batch
    ostub.expire_next = 1
    out = llm.generate(reqs(3, "fresh"))
    assert len(ostub.batches) == 3 and all(c.error is None for c in out)


def test_backend_without_batch_api_and_no_cache_are_one_line_errors(tmp_path):
    gold = tmp_path / "g.jsonl"
    gold.write_text("".join(json.dumps({"premise": f"P {i}.", "hypothesis": f"H {i}.",
                                        "label": ["entailment", "not_entailment"][i % 2]}) + "\n" for i in range(12)))
    base = ["run", "--task", "rte", "--gold-eval", str(gold), "--learner", "fake", "--out", str(tmp_path / "o"),
            "--batch", "-q"]
    r = CliRunner().invoke(cli, base + ["--llm", "echo:m"])
    assert r.exit_code == 2 and "no batch API" in r.stderr and "drop --batch" in r.stderr
    r = CliRunner().invoke(cli, base + ["--llm", "openai:m", "--no-cache"])
    assert r.exit_code == 2 and "--no-cache" in r.stderr
    r = CliRunner().invoke(cli, base + ["--llm", "openai:m", "--batch-discount", "1.5"])
    assert r.exit_code == 2 and "--batch-discount" in r.stderr
    assert not (tmp_path / "o").exists()


# -- budgets at the batch price ----------------------------------------------------------------------
def test_max_cost_holds_with_batches_a_batch_is_submitted_only_when_its_worst_case_fits(ostub, tmp_path):
    rs = [Request(prompt=f"{i:02d} " + "ab " * 12, params=GenParams(max_tokens=16)) for i in range(12)]
    assert all(estimate_prompt_tokens(r) + r.params.max_tokens == 26 for r in rs)
    # price 1 per token: a request's worst case costs 26 online, 13 at the batch price
    budget = Budget(max_cost=55.0, price_in=1e6, price_out=1e6, batch_discount=0.5)
    llm = openai_llm(ostub, tmp_path, budget=budget, mode="completions")
    with pytest.raises(BudgetExceeded) as e:
        llm.generate(rs)
    assert "budget" in str(e.value) and "larger budget" in str(e.value)
    sizes = [len(b["custom_ids"]) for b in ostub.batch_log]
    assert sizes == [4]                   # 4 x 13 <= 55 < 5 x 13 (online: only 2 would fit)
    spent = {**llm.cache.spent(), **llm.cache.batch_spent()}
    assert spent["answers"] == 4 and spent["batch_prompt_tokens"] == spent["prompt_tokens"] > 0
    assert budget.spent_cost(spent) <= 55.0
    assert budget.spent_cost(spent) == pytest.approx(0.5 * budget.cost(spent["prompt_tokens"],
                                                                        spent["completion_tokens"]))
    # online, the same budget sends 2
    online = make_llm("openai:stub-model", base_url=ostub.url, api_key_env="TEST_BATCH_KEY", mode="completions",
                      cache=LLMCache(tmp_path / "online.sqlite"),
                      budget=Budget(max_cost=55.0, price_in=1e6, price_out=1e6))
    with pytest.raises(BudgetExceeded):
        online.generate(rs)
    assert online.cache.spent()["answers"] == 2


def test_estimate_batch_prices_at_the_discount(tmp_path):
    gold = tmp_path / "g.jsonl"
    gold.write_text("".join(json.dumps({"premise": f"Premise {i}: the town has {i} bridges.",
                                        "hypothesis": f"It has {i} bridges.",
                                        "label": ["entailment", "not_entailment"][i % 2]}) + "\n" for i in range(20)))

    def est(*extra):
        r = CliRunner().invoke(cli, ["estimate", "--task", "rte", "--gold-eval", str(gold), "--learner", "fake",
                                     "--seed-size", "8", "--llm", "openai:m", "--base-url", "http://127.0.0.1:9/v1",
                                     "--price-in", "2", "--price-out", "8", "--json", "-q", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    full, half, cheap = est(), est("--batch"), est("--batch", "--batch-discount", "0.25")
    assert full["batch"] is None and half["batch"] == {"discount": 0.5}
    for f, h, c in zip(full["stages"] + [full["total"]], half["stages"] + [half["total"]],
                       cheap["stages"] + [cheap["total"]]):
        for kind in ("expected", "at_most"):
            assert (f[kind]["calls"], f[kind]["tokens"]) == (h[kind]["calls"], h[kind]["tokens"])
            assert h[kind]["cost"] == pytest.approx(f[kind]["cost"] / 2, abs=1e-6)
            assert c[kind]["cost"] == pytest.approx(f[kind]["cost"] * 0.75, abs=1e-6)
    r = CliRunner().invoke(cli, ["estimate", "--task", "rte", "--gold-eval", str(gold), "--learner", "fake",
                                 "--seed-size", "8", "--llm", "openai:m", "--base-url", "http://127.0.0.1:9/v1",
                                 "--price-in", "2", "--price-out", "8", "--batch", "-q"])
    assert "at the batch price (--batch: 0.5 of it)" in r.stdout


# -- a small S3 round through the CLI ----------------------------------------------------------------
@pytest.fixture
def rte_gold(tmp_path, shared_data):
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(shared_data / "rte" / "validation.jsonl")[:30]))
    return gold


def _run(gold, out, llm, *extra):
    return CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", llm,
                                    "--learner", "fake", "--seed-size", "12", "--rounds", "1", "--out", str(out),
                                    "-q", *extra])


FILES = ("seed.jsonl", "round-1/added.jsonl", "final/train.jsonl")


def test_s3_round_with_openai_batches_equals_the_online_run(ostub, rte_gold, tmp_path, monkeypatch):
    import s3synth.report as report_mod

    monkeypatch.setattr(report_mod, "write_report", lambda path, embed=None: None)
    url = ["-o", f"base_url={ostub.url}", "-o", "api_key_env=TEST_BATCH_KEY"]
    ref = _run(rte_gold, tmp_path / "online", "openai:stub-model", *url)
    assert ref.exit_code == 0, ref.output
    ostub.expire_next = 5                  # the seed's first batch expires with partial output
    r = _run(rte_gold, tmp_path / "batch", "openai:stub-model", *url, "--batch", "--batch-poll", str(POLL))
    assert r.exit_code == 0, r.output
    for f in FILES:
        assert read_jsonl(tmp_path / "batch" / f) == read_jsonl(tmp_path / "online" / f), f
    counts = submitted(ostub)
    first = ostub.batch_log[0]["custom_ids"]
    assert all(counts[k] == 1 for k in first[:5])                   # answered: never submitted again
    assert all(counts[k] == 2 for k in first[5:])                   # expired: submitted once more
    assert sum(counts.values()) == len(counts) + len(first) - 5
    m = read_json(tmp_path / "batch" / "manifest.json")
    assert m["llm"]["batch"]["stages"] == ["seed", "round-1/extrapolate"]
    assert m["stages"]["seed"]["llm"]["batch_calls"] == m["stages"]["seed"]["llm"]["calls"] > 0
    assert [b["id"] for b in m["llm"]["batch"]["batches"]] == [b["id"] for b in ostub.batch_log]
    assert read_json(tmp_path / "online" / "manifest.json")["llm"].get("batch") is None
    text = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "batch").rglob("*") if p.is_file())
    assert OPENAI_KEY not in text


@pytest.mark.slow       # a `s3synth run` process killed mid-batch, then run again
def test_killed_while_a_batch_is_in_progress_rerun_polls_it_and_submits_nothing_new(ostub, rte_gold, tmp_path):
    """SIGKILL a real `s3synth run --batch` while its batch is in_progress; the same command again creates
    zero new batches for those requests: it finds the recorded batch, polls it and collects it."""
    def cmd(out, *extra):
        return [sys.executable, "-c", "import fake_plugins; fake_plugins.main_without_reports()", "run",
                "--task", "rte", "--gold-eval", str(rte_gold), "--llm", "openai:stub-model", "--learner", "fake",
                "--seed-size", "12", "--rounds", "0", "--base-url", ostub.url, "--api-key-env", "TEST_BATCH_KEY",
                "--out", str(out), "-q", *extra]

    env = plugin_env(OPENAI_BASE_URL="", TEST_BATCH_KEY=OPENAI_KEY)
    ref = subprocess.run(cmd(tmp_path / "ref"), check=False, env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    ostub.hold_batches = True
    p = subprocess.Popen(cmd(tmp_path / "run", "--batch", "--batch-poll", "0.05"), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (ostub.batch_log and ostub.retrievals[ostub.batch_log[0]["id"]] >= 3):
        time.sleep(0.05)
    p.kill()
    p.wait(30)
    assert len(ostub.batch_log) == 1
    bid = ostub.batch_log[0]["id"]
    assert ostub.batches[bid]["status"] == "in_progress"
    with sqlite3.connect(tmp_path / "run" / "llm_cache.sqlite") as db:     # recorded before polling
        assert db.execute("SELECT id, status, collected FROM batches").fetchall() == [(bid, "in_progress", 0)]
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0
    polled_before = ostub.retrievals[bid]
    ostub.hold_batches = False
    again = subprocess.run(cmd(tmp_path / "run", "--batch", "--batch-poll", "0.05"), check=False, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(ostub.batch_log) == 1                                  # zero new batches (count at the stub)
    assert ostub.retrievals[bid] > polled_before                      # the recorded one polled ...
    assert ostub.batches[bid]["status"] == "completed"                # ... and collected
    assert max(submitted(ostub).values()) == 1
    assert read_jsonl(tmp_path / "run" / "seed.jsonl") == read_jsonl(tmp_path / "ref" / "seed.jsonl")
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["llm"]["batch"]["batches"] == [{"id": bid, "provider": "openai", "input_file": "file-0001",
                                             "requests": len(ostub.batch_log[0]["custom_ids"]),
                                             "status": "completed", "collected": True}]
    print(f"kill test at the stub: batches created {len(ostub.batch_log)}, retrievals of {bid}: "
          f"{polled_before} before the kill, {ostub.retrievals[bid]} in all")


# -- Anthropic -----------------------------------------------------------------------------------
@pytest.fixture
def astub(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with AnthropicStub() as s:
        s.api_key = ANTHROPIC_KEY
        yield s


def test_anthropic_online_params_usage_and_sdk_errors(astub, tmp_path):
    llm = make_llm("anthropic:claude-stub", base_url=astub.base_url, max_retries=2, cache=LLMCache(tmp_path / "c"))
    rs = [Request(messages=(("system", "Be brief."), ("user", "Tell me about owls.")),
                  params=GenParams(max_tokens=20, stop=("\n\n", "END"))), Request(prompt="A plain prompt")]
    astub.fail_next("overloaded", 1)        # 529: the SDK retries it
    out = llm.generate(rs)
    assert [r["path"] for r in astub.received] == ["/v1/messages"] * 3      # 2 requests + 1 retry
    body = astub.messages[0]
    assert body["system"] == "Be brief." and body["messages"] == [{"role": "user", "content": "Tell me about owls."}]
    assert body["max_tokens"] == 20 and body["stop_sequences"] == ["END"]      # whitespace-only stops kept here
    assert not {"temperature", "top_p", "top_k"} & set(body)
    assert out[0].text == "answer to: Tell me about owls. #4" and out[0].prompt_tokens == 6
    assert out[1].text == "answer to: A plain prompt #3" and out[0].finish_reason == "stop"
    assert llm.cache.spent()["answers"] == 2
    assert all(r["key"] == ANTHROPIC_KEY for r in astub.received)
    astub.models = {"claude-stub"}
    with pytest.raises(LLMError) as e:
        make_llm("anthropic:claude-nope", base_url=astub.base_url).generate(reqs(3))
    assert "404" in str(e.value) and "claude-nope" in str(e.value)
    astub.api_key = "other"
    with pytest.raises(LLMError) as e:
        make_llm("anthropic:claude-stub", base_url=astub.base_url).generate(reqs(3, "x"))
    assert "401" in str(e.value) and "ANTHROPIC_API_KEY" in str(e.value) and ANTHROPIC_KEY not in str(e.value)
    astub.api_key = ANTHROPIC_KEY
    flaky = make_llm("anthropic:claude-stub", base_url=astub.base_url, max_retries=1)
    assert flaky.generate(reqs(1, "warm"))[0].error is None
    n = len(astub.received)
    astub.fail_next("500", 10)
    (c,) = flaky.generate(reqs(1, "y"))
    assert c.error and "HTTP 500" in c.error and len(astub.received) - n == 2     # one try + one SDK retry
    assert flaky.stats.failures == 1


def test_anthropic_batch_errors_expired_and_equal_to_online(astub, tmp_path):
    rs = reqs(6)
    online = make_llm("anthropic:claude-stub", base_url=astub.base_url).generate(rs)
    llm = make_llm("anthropic:claude-stub", base_url=astub.base_url, cache=LLMCache(tmp_path / "c.sqlite"))
    llm.executor = BatchExecutor(poll=POLL)
    keys = [llm.key(r) for r in rs]
    astub.line_errors = {1: "overloaded_error", 2: "invalid_request_error"}
    astub.expire_next = 5
    out = llm.generate(rs)
    first, second = astub.batch_log
    assert first["custom_ids"] == keys
    assert sorted(second["custom_ids"]) == sorted([keys[1], keys[5]])
    assert out[2].error and "invalid_request_error" in out[2].error
    assert [c.text for i, c in enumerate(out) if i != 2] == [c.text for i, c in enumerate(online) if i != 2]
    assert astub.batches[first["id"]]["request_counts"] == {"processing": 0, "succeeded": 3, "errored": 2,
                                                            "canceled": 0, "expired": 1}
    assert llm.stats.batch_calls == 5 and [b["provider"] for b in llm.cache.batches()] == ["anthropic"] * 2


def test_s3_round_with_anthropic_batches_equals_online_and_the_key_is_written_nowhere(astub, rte_gold, tmp_path,
                                                                                       monkeypatch):
    import s3synth.report as report_mod

    monkeypatch.setattr(report_mod, "write_report", lambda path, embed=None: None)
    url = ["--base-url", astub.base_url]
    ref = _run(rte_gold, tmp_path / "online", "anthropic:claude-stub", *url)
    assert ref.exit_code == 0, ref.output
    n_online = len(astub.messages)
    r = _run(rte_gold, tmp_path / "batch", "anthropic:claude-stub", *url, "--batch", "--batch-poll", str(POLL))
    assert r.exit_code == 0, r.output
    for f in FILES:
        assert read_jsonl(tmp_path / "batch" / f) == read_jsonl(tmp_path / "online" / f), f
    assert max(submitted(astub).values()) == 1
    assert len(astub.messages) - n_online == sum(len(b["custom_ids"]) for b in astub.batch_log)
    assert read_json(tmp_path / "batch" / "manifest.json")["llm"]["batch"]["stages"] == ["seed",
                                                                                          "round-1/extrapolate"]
    for d in ("online", "batch"):
        for p in (tmp_path / d).rglob("*"):
            if p.is_file():
                assert ANTHROPIC_KEY.encode() not in p.read_bytes(), p


def test_affordable_counts_at_the_batch_price():
    """Hand-worked: spent 30 tokens at the online price and 40 at the batch price, price 1 per token."""
    b = Budget(max_cost=100.0, price_in=1e6, price_out=1e6, batch_discount=0.5)
    spent = {"prompt_tokens": 50, "completion_tokens": 20, "batch_prompt_tokens": 30, "batch_completion_tokens": 10}
    assert b.spent_cost(spent) == pytest.approx(30 + 0.5 * 40)
    assert b.exceeded(spent) is None and "50.0000 of 100.0 in money" in b.describe(spent)
    assert b.exceeded({**spent, "batch_prompt_tokens": 0, "batch_completion_tokens": 0}) is None
    assert math.isclose(Budget(price_in=1e6).spent_cost({"prompt_tokens": 3, "completion_tokens": 0}), 3.0)
