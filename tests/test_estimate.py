"""`s3synth estimate`: exact, hand-checkable numbers for tiny configurations; no LLM call; nothing written."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from openai_stub import OpenAIStub

from s3synth.cli import cli
from s3synth.config import RunConfig
from s3synth.io import read_jsonl
from s3synth.method import S3
from s3synth.tasks import load_task

# 20 RTE pairs, 10 per label: the default 30% hold-out keeps 3 per label, the 4 few-shot demos come out of
# the remaining 14, so 10 mining examples are left to mine errors from.
GOLD = [{"premise": f"Premise {i}: the old town of Brill has {i} stone bridges over its river.",
         "hypothesis": f"Brill has {i} bridges.", "label": ["entailment", "not_entailment"][i % 2]} for i in range(20)]
MINING = 20 - 2 * 3 - 4
NOWHERE = ["--llm", "openai:m", "--base-url", "http://127.0.0.1:9/v1"]   # fails if anything is sent


@pytest.fixture
def gold(tmp_path):
    p = tmp_path / "gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in GOLD))
    return p


def estimate(gold, *extra, out=None):
    args = ["estimate", "--task", "rte", "--gold-eval", str(gold), "--learner", "fast", "--seed-size", "8",
            "--prompt-style", "fewshot", "-q", *extra]
    if out is not None:
        args += ["--out", str(out)]
    return CliRunner().invoke(cli, args)


def estimate_json(gold, *extra, out=None) -> dict:
    r = estimate(gold, "--json", *extra, out=out)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def by_stage(est: dict) -> dict:
    return {s["stage"]: s for s in est["stages"]}


def test_tiny_rte_calls_and_completion_tokens_are_exact(gold, tmp_path):
    out = tmp_path / "run"
    est = estimate_json(gold, *NOWHERE, "--rounds", "2", "--assume-error-rate", "0.25", out=out)
    st = by_stage(est)
    max_tokens = load_task("rte").stage("seed").max_tokens                    # 48
    assert list(st) == ["seed", "round 1: extrapolate", "round 2: extrapolate"]   # pair task: no rationales
    assert st["seed"]["calls"] == 9                                            # ceil(8 x 1.1)
    assert est["assumptions"]["mining"] == MINING == 10
    errors = math.ceil(0.25 * MINING)                                          # 3
    assert est["assumptions"]["errors_per_round"] == errors
    assert est["assumptions"]["sources_per_round"] == 2 * errors               # --balance fill: x 2 labels
    assert st["round 1: extrapolate"]["calls"] == st["round 2: extrapolate"]["calls"] == math.ceil(6 * 1.1) == 7
    for s in est["stages"]:
        assert s["completion_tokens"] == s["calls"] * max_tokens
        assert s["tokens"] == s["prompt_tokens"] + s["completion_tokens"]
    assert est["total"]["calls"] == 9 + 7 + 7
    assert est["total"]["prompt_tokens"] == sum(s["prompt_tokens"] for s in est["stages"])
    assert est["token_counter"] == "ceil(chars / 4)" and est["prices_per_million"] is None
    assert not out.exists()

    st_none = by_stage(estimate_json(gold, *NOWHERE, "--rounds", "1", "--assume-error-rate", "0.25",
                                     "--balance", "none"))
    assert st_none["round 1: extrapolate"]["calls"] == math.ceil(errors * 1.1) == 4
    assert "round 2: extrapolate" not in st_none
    assert list(by_stage(estimate_json(gold, *NOWHERE, "--rounds", "0"))) == ["seed"]


def test_seed_prompt_tokens_equal_those_a_real_run_sends(gold, tmp_path):
    """The estimate plans the seed stage as the pipeline does: its 9 planned prompts are the 9 prompts a
    run with --seed-size 9 sends (all answers accepted), token for token."""
    est = by_stage(estimate_json(gold, *NOWHERE, "--rounds", "0"))
    fake = QueuedLLM(lambda r: "The town keeps several old stone bridges.")
    cfg = RunConfig(task="rte", gold_eval=str(gold), llm="fake", learner="fast", seed_size=9, rounds=0,
                    prompt_style="fewshot")
    S3(cfg, llm=fake).run(tmp_path / "real")
    assert len(fake.seen) == 9 and len(read_jsonl(tmp_path / "real" / "seed.jsonl")) == 9
    assert est["seed"]["prompt_tokens"] == sum(math.ceil(len(r.prompt) / 4) for r in fake.seen)


def test_extrapolation_prompts_hold_the_demos_and_a_gold_example(gold):
    st = by_stage(estimate_json(gold, *NOWHERE, "--rounds", "1"))["round 1: extrapolate"]
    demos = load_task("rte").stage("extrapolate").fewshot.demos
    demo_chars = sum(len(d["context"]) + len(d["text"]) + len(d["new_text"]) for d in demos)
    per_call = st["prompt_tokens"] / st["calls"]
    longest = max(len(g["premise"]) + len(g["hypothesis"]) for g in GOLD)
    assert demo_chars / 4 < per_call < (demo_chars + longest + 1000) / 4


def test_money_and_budget_lines(gold):
    est = estimate_json(gold, *NOWHERE, "--rounds", "1", "--price-in", "2", "--price-out", "10")
    for s in est["stages"] + [est["total"]]:
        assert s["cost"] == pytest.approx((s["prompt_tokens"] * 2 + s["completion_tokens"] * 10) / 1e6)
    seed_tokens = by_stage(est)["seed"]["tokens"]
    r = estimate(gold, *NOWHERE, "--rounds", "1", "--price-in", "2", "--price-out", "10",
                 "--max-tokens", str(seed_tokens - 1))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("estimate for task rte with openai:m (fewshot prompts); no LLM was called")
    assert any(ln.split()[:2] == ["seed", "9"] for ln in lines)
    assert "upper bound" in r.stdout and "cost" in lines[2]
    assert f"--max-tokens {seed_tokens - 1:,}: the estimate" in r.stdout and "stop (exit code 3) in stage 'seed'" in r.stdout
    r = estimate(gold, *NOWHERE, "--rounds", "1", "--max-tokens", "100000000")
    assert "fits" in r.stdout and "cost" not in r.stdout.splitlines()[2]


def test_no_request_reaches_a_server(gold, tmp_path):
    with OpenAIStub() as stub:
        r = estimate(gold, "--llm", "openai:m", "--base-url", stub.url, "--rounds", "2", out=tmp_path / "run")
        assert r.exit_code == 0, r.output
        assert stub.count == 0
    assert not (tmp_path / "run").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gold.jsonl"]


def test_bad_settings_exit_2(gold, tmp_path):
    r = estimate(gold, "--assume-error-rate", "1.5")
    assert r.exit_code == 2
    for extra, words in ((["--max-cost", "1"], "--max-cost needs --price-in"),
                         (["--max-tokens", "0"], "--max-tokens 0: must be >= 1"),
                         (["--no-cache", "--cache-only"], "exclude each other"),
                         (["--api-key-env", "sk-live-0123 4567"], "NAME of an environment variable")):
        r = estimate(gold, *NOWHERE, *extra)
        assert r.exit_code == 2 and words in r.stderr, r.output
        r = CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--out", str(tmp_path / "r"),
                                     *NOWHERE, *extra])
        assert r.exit_code == 2 and words in r.stderr and not (tmp_path / "r").exists()
        assert "sk-live" not in r.output                  # a key passed by mistake is not echoed


def test_single_text_task_counts_rationales(shared_data):
    """imdb: rationale calls = labels x calls_per_label; the embedded backend counts with its tokenizer."""
    gold = shared_data / "s3_release" / "imdb_round1.jsonl"
    r = CliRunner().invoke(cli, ["estimate", "--task", "imdb", "--gold-eval", str(gold), "--max-gold-eval", "30",
                                 "--learner", "fast", "--seed-size", "10", "--rounds", "1", "--json", "-q"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)
    task = load_task("imdb")
    st = by_stage(est)
    assert st["rationales"]["calls"] == len(task.labels) * task.rationale_calls == 24
    assert st["rationales"]["completion_tokens"] == 24 * task.stage("rationale").max_tokens
    assert st["seed"]["calls"] == 11                                  # ceil(10 x 1.1), not 12
    assert est["llm"].startswith("embedded") and est["prompt_style"] == "fewshot"
    try:
        import llama_cpp  # noqa: F401
        assert est["token_counter"].endswith("tokenizer")
    except ImportError:
        assert est["token_counter"] == "ceil(chars / 4)"
    assert st["seed"]["prompt_tokens"] > 11 * 100                     # 4 review demos per prompt
