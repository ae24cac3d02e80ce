"""Hard budgets (--max-tokens, --max-cost): a run stops cleanly with exit code 3 and everything saved, and
a run with a larger budget finishes it without sending any request twice."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from openai_stub import OpenAIStub

from s3synth.cli import cli
from s3synth.errors import BudgetExceeded
from s3synth.io import read_json, read_jsonl
from s3synth.llm.base import Budget, GenParams, Request
from s3synth.llm.cache import LLMCache


class BatchLog(QueuedLLM):
    """QueuedLLM that also records the size of every batch it is handed."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches: list[int] = []

    def _generate_batch(self, requests, seeds):
        self.batches.append(len(requests))
        return super()._generate_batch(requests, seeds)


# prompt "xxx...x i" = 43 characters -> estimated 11 prompt tokens, + max_tokens 10 = 21 worst case per request;
# the fake answers "a b c" and counts 2 prompt + 3 completion tokens = 5 per request.
REQS = [Request(prompt="x" * 40 + f" {i:02d}", params=GenParams(max_tokens=10)) for i in range(20)]


def test_batches_shrink_to_the_budget_and_never_pass_it(tmp_path):
    llm = BatchLog(lambda r: "a b c", cache=LLMCache(tmp_path / "c.sqlite"), budget=Budget(max_tokens=100))
    with pytest.raises(BudgetExceeded, match="next request may take up to 21 tokens"):
        llm.generate(REQS)
    # left 100 -> 4 fit (84), spent 20; left 80 -> 3 (63); 65 -> 3; 50 -> 2; 40, 35, 30, 25 -> 1 each; 20 < 21
    assert llm.batches == [4, 3, 3, 2, 1, 1, 1, 1]
    assert llm.cache.spent() == {"answers": 16, "prompt_tokens": 32, "completion_tokens": 48}
    llm.budget = Budget(max_tokens=1000)
    out = llm.generate(REQS)
    assert [c.cached for c in out] == [True] * 16 + [False] * 4 and len(llm.seen) == 20
    assert len({r.prompt for r in llm.seen}) == 20


def test_without_budget_batches_are_whole_and_no_cache_counts_this_process(tmp_path):
    llm = BatchLog(lambda r: "a b c")
    llm.generate(REQS)
    assert llm.batches == [8, 8, 4]
    llm = BatchLog(lambda r: "a b c", cache=LLMCache(tmp_path / "c.sqlite"), cache_mode="off",
                   budget=Budget(max_tokens=100))
    with pytest.raises(BudgetExceeded):
        llm.generate(REQS)
    assert sum(llm.batches) == 16 and llm.cache.spent()["answers"] == 0


def test_cost_budget(tmp_path):
    # 1 money per token in and out: the same limits as above, in money
    llm = BatchLog(lambda r: "a b c", cache=LLMCache(tmp_path / "c.sqlite"),
                   budget=Budget(max_cost=100e-6, price_in=1.0, price_out=1.0))
    with pytest.raises(BudgetExceeded, match="budget"):
        llm.generate(REQS)
    assert sum(llm.batches) == 16


# -- end to end, through the CLI against the local stub server --------------------------------------------
def _spent(run) -> dict:
    with sqlite3.connect(str(run / "llm_cache.sqlite")) as db:
        n, pt, ct = db.execute("SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM answers").fetchone()
    return {"answers": n, "prompt_tokens": pt or 0, "completion_tokens": ct or 0, "tokens": (pt or 0) + (ct or 0)}


def test_budget_stops_the_run_and_a_larger_one_finishes_it(tmp_path, shared_data, monkeypatch):
    import s3synth.report as report_mod

    reports = []      # the CLI writes a report after a finished run only (its content: test_report_export.py)
    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: reports.append(str(path)))
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(shared_data / "rte" / "validation.jsonl")[:30]))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-budget-test")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    with OpenAIStub() as stub:
        def run(out, *extra):
            r = CliRunner().invoke(cli, [
                "run", "--task", "rte", "--gold-eval", str(gold), "--llm", "openai:stub-model",
                "-o", f"base_url={stub.url}", "-o", "concurrency=2", "--learner", "fake", "--seed-size", "16",
                "--rounds", "1", "--out", str(out), "-q", *extra])
            return r

        ref = run(tmp_path / "ref")                        # the same run without a budget
        assert ref.exit_code == 0, ref.output
        assert reports == [str(tmp_path / "ref")]
        total = _spent(tmp_path / "ref")
        assert total["answers"] > 20                       # seed and round-1 extrapolation
        worst = max(math.ceil(len(b["messages"][0]["content"]) / 4) for b in stub.bodies) + 48
        stub.received.clear()

        run_dir = tmp_path / "run"
        steps = [["--max-tokens", str(total["tokens"] // 5)],
                 ["--max-cost", f"{2 * total['tokens'] / 3 / 1000:.6f}", "--price-in", "1000", "--price-out", "1000"]]
        # the first budget runs out in the seed stage, the second in round 1's extrapolation
        for limit, extra, done in zip((total["tokens"] // 5, 2 * total["tokens"] // 3), steps,
                                      ([], ["seed.jsonl", "round-1/metrics.json"])):
            n_before = stub.count
            r = run(run_dir, *extra)
            assert r.exit_code == 3, r.output
            err = r.stderr.strip()
            assert err.startswith("s3synth: stopped: ") and "budget" in err and "larger budget" in err
            assert len(err.splitlines()) == 1 and "Traceback" not in err
            spent = _spent(run_dir)
            assert limit - worst < spent["tokens"] <= limit        # stopped at the limit, never past it
            assert spent["answers"] == len(stub.bodies)              # every answer received is saved
            m = read_json(run_dir / "manifest.json")
            assert m["llm"]["spent_total"]["answers"] == spent["answers"] and m["invocations"][-1]["interrupted"]
            assert stub.count > n_before
            assert [f for f in ("seed.jsonl", "round-1/metrics.json", "round-1/added.jsonl")
                    if (run_dir / f).exists()] == done
        assert not (run_dir / "final" / "metrics.json").exists()

        assert reports == [str(tmp_path / "ref")]         # none for the runs stopped by a budget
        r = run(run_dir, "--max-tokens", str(10 * total["tokens"]))
        assert r.exit_code == 0, r.output
        assert reports == [str(tmp_path / "ref"), str(run_dir)]
        sent = [json.dumps([b["messages"], b["seed"]]) for b in stub.bodies]
        assert len(sent) == len(set(sent)) == total["answers"]       # nothing asked twice, nothing missing
    assert _spent(run_dir) == total
    for f in ("seed.jsonl", "round-1/added.jsonl", "final/train.jsonl"):
        assert read_jsonl(run_dir / f) == read_jsonl(tmp_path / "ref" / f)
    assert "sk-budget-test" not in (run_dir / "manifest.json").read_text() + (run_dir / "config.toml").read_text()
