"""`s3synth estimate`: exact, hand-checkable numbers for tiny configurations; no LLM call; nothing written."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from openai_stub import OpenAIStub

from s3synth.cli import cli
from s3synth.config import METHODS, RunConfig
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.method.estimate import estimate_run
from s3synth.rundir import ATTEMPT_STRIDE, SAMPLE_BANDS, band_of
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
    args = ["estimate", "--task", "rte", "--gold-eval", str(gold), "--learner", "fake", "--seed-size", "8",
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
    assert list(st) == ["seed", "round-1/extrapolate", "round-2/extrapolate"]   # pair task: no rationales
    assert st["seed"]["expected"]["calls"] == 9                                # ceil(8 x 1.1)
    assert est["assumptions"]["mining"] == MINING == 10
    errors = math.ceil(0.25 * MINING)                                          # 3
    assert est["assumptions"]["errors_per_round"] == errors
    assert est["assumptions"]["sources_per_round"] == 2 * errors               # --balance fill: x 2 labels
    assert st["round-1/extrapolate"]["expected"]["calls"] == st["round-2/extrapolate"]["expected"]["calls"] \
        == math.ceil(6 * 1.1) == 7
    assert [s["requests"] for s in est["stages"]] == [8, 6, 6]              # first pass: nothing rejected
    assert [s["label"] for s in est["stages"]] == list(st)
    # at most: seed 3 passes of 8, 10, 10 (every answer rejected); a round: all 10 mining examples errors,
    # 5 per label, --balance fill -> 2 x 5 sources x 2 attempts
    assert [s["at_most"]["calls"] for s in est["stages"]] == [8 + 10 + 10, 20, 20]
    for s in est["stages"]:
        for kind in ("expected", "at_most"):
            f = s[kind]
            assert f["completion_tokens"] == f["calls"] * max_tokens
            assert f["tokens"] == f["prompt_tokens"] + f["completion_tokens"]
        assert s["at_most"]["prompt_tokens"] >= s["expected"]["prompt_tokens"]
    assert est["total"]["expected"]["calls"] == 9 + 7 + 7 and est["total"]["requests"] == 8 + 6 + 6
    assert est["total"]["at_most"]["calls"] == 28 + 20 + 20
    assert est["total"]["expected"]["prompt_tokens"] == sum(s["expected"]["prompt_tokens"] for s in est["stages"])
    assert est["token_counter"] == "ceil(chars / 4)" and est["prices_per_million"] is None
    assert not out.exists()

    st_none = by_stage(estimate_json(gold, *NOWHERE, "--rounds", "1", "--assume-error-rate", "0.25",
                                     "--balance", "none"))
    assert st_none["round-1/extrapolate"]["expected"]["calls"] == math.ceil(errors * 1.1) == 4
    assert st_none["round-1/extrapolate"]["at_most"]["calls"] == MINING * 2         # --balance none: 10 x 2
    assert st_none["round-1/extrapolate"]["requests"] == errors
    assert "round-2/extrapolate" not in st_none
    assert list(by_stage(estimate_json(gold, *NOWHERE, "--rounds", "0"))) == ["seed"]


def test_seed_prompt_tokens_equal_those_a_real_run_sends(gold, tmp_path):
    """The estimate plans the seed stage as the pipeline does: its 9 planned prompts are the 9 prompts a
    run with --seed-size 9 sends (all answers accepted), token for token."""
    est = by_stage(estimate_json(gold, *NOWHERE, "--rounds", "0"))
    fake = QueuedLLM(lambda r: "The town keeps several old stone bridges.")
    cfg = RunConfig(task="rte", gold_eval=str(gold), llm="fake", learner="fake", seed_size=9, rounds=0,
                    prompt_style="fewshot")
    S3(cfg, llm=fake).run(tmp_path / "real")
    assert len(fake.seen) == 9 and len(read_jsonl(tmp_path / "real" / "seed.jsonl")) == 9
    assert est["seed"]["expected"]["prompt_tokens"] == sum(math.ceil(len(r.prompt) / 4) for r in fake.seen)


def test_extrapolation_prompts_hold_the_demos_and_a_gold_example(gold):
    st = by_stage(estimate_json(gold, *NOWHERE, "--rounds", "1"))["round-1/extrapolate"]
    demos = load_task("rte").stage("extrapolate").fewshot.demos
    demo_chars = sum(len(d["context"]) + len(d["text"]) + len(d["new_text"]) for d in demos)
    per_call = st["expected"]["prompt_tokens"] / st["expected"]["calls"]
    longest = max(len(g["premise"]) + len(g["hypothesis"]) for g in GOLD)
    assert demo_chars / 4 < per_call < (demo_chars + longest + 1000) / 4


def test_money_and_budget_lines(gold):
    est = estimate_json(gold, *NOWHERE, "--rounds", "1", "--price-in", "2", "--price-out", "10")
    for s in est["stages"] + [est["total"]]:
        for f in (s["expected"], s["at_most"]):
            assert f["cost"] == pytest.approx((f["prompt_tokens"] * 2 + f["completion_tokens"] * 10) / 1e6)
    seed_tokens = by_stage(est)["seed"]["expected"]["tokens"]
    r = estimate(gold, *NOWHERE, "--rounds", "1", "--price-in", "2", "--price-out", "10",
                 "--max-tokens", str(seed_tokens - 1))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("estimate for task rte with openai:m (fewshot prompts); no LLM was called")
    assert lines[2].startswith("expected (") and "cost" in lines[3]
    at_most = lines.index(next(ln for ln in lines if ln.startswith("at most (")))
    assert [ln.split()[:2] for ln in lines[5:at_most] if ln.startswith("seed")] == [["seed", "9"]]
    assert [ln.split()[:2] for ln in lines[at_most:] if ln.startswith("seed ")] == [["seed", "28"]]
    assert f"--max-tokens {seed_tokens - 1:,}: expected" in r.stdout
    assert "the run would stop (exit code 3) in stage 'seed'" in r.stdout
    r = estimate(gold, *NOWHERE, "--rounds", "1", "--max-tokens", "100000000")
    assert "at most" in r.stdout and "fits" in r.stdout and "cost" not in r.stdout.splitlines()[3]


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
                                 "--learner", "fake", "--seed-size", "10", "--rounds", "1", "--json", "-q"])
    assert r.exit_code == 0, r.output
    est = json.loads(r.stdout)
    task = load_task("imdb")
    st = by_stage(est)
    assert st["rationales"]["expected"]["calls"] == len(task.labels) * task.rationale_calls == 24
    assert st["rationales"]["at_most"] == st["rationales"]["expected"]         # never asked again
    assert st["rationales"]["expected"]["completion_tokens"] == 24 * task.stage("rationale").max_tokens
    assert st["seed"]["expected"]["calls"] == 11                      # ceil(10 x 1.1), not 12
    assert est["llm"].startswith("embedded") and est["prompt_style"] == "fewshot"
    try:
        import llama_cpp  # noqa: F401
        assert est["token_counter"].endswith("tokenizer")
    except ImportError:
        assert est["token_counter"] == "ceil(chars / 4)"
    assert st["seed"]["expected"]["prompt_tokens"] > 11 * 100         # 4 review demos per prompt


# -- the estimate walks the run's own plan: stage for stage, request for request -------------------------------

def usable_answer(r):
    """An answer every stage keeps (nothing is rejected, so no stage asks again): a list for rationale prompts,
    else a distinct sentence long enough for every task."""
    if band_of(r.sample_index) == "rationale":
        return " the acting is strong\n4. the story moves well\n5. the music works"
    return f" Statement number {r.sample_index} tells of the place and the people who live there."


def single_gold(tmp_path):
    """imdb-like rows (a single-text task with rationales): 10 per label."""
    rows = [{"text": f"Film number {i} was {'great and wonderful' if i % 2 else 'awful and boring'} to watch.",
             "label": ["negative", "positive"][i % 2]} for i in range(20)]
    p = tmp_path / "imdb_gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("task", ["imdb", "rte"])
def test_estimate_stages_and_requests_equal_the_runs(tmp_path, gold, task, method):
    """Run each method with answers that are all kept and a learner whose errors are known (constant: always
    the first label; --balance none: one source per error), then estimate it with the observed error rate:
    the estimate's stages are the run's LLM stages, and its first-pass requests what each stage sent."""
    g = single_gold(tmp_path) if task == "imdb" else gold
    cfg = RunConfig(task=task, gold_eval=str(g), llm="echo:m", learner="fake", learner_options={"mode": "constant"},
                    method=method, seed_size=8, rounds=2, balance="none", min_gain=-1.0, prompt_style="fewshot")
    llm = QueuedLLM(usable_answer)
    S3(cfg, llm=llm).run(tmp_path / "run")
    m = read_json(tmp_path / "run" / "manifest.json")
    ran = {name: st["llm"]["requests"] for name, st in m["stages"].items() if "llm" in st}
    for name, st in m["synthesis"].items():
        assert st["kept"] == st["requested"], (name, st)                        # nothing rejected
    mining = m["split"]["mining"]
    first = load_task(task).label_names[0]
    if METHODS[method].rounds:
        errors = [read_json(tmp_path / "run" / f"round-{q}" / "metrics.json")["errors"] for q in (1, 2)]
        assert errors[0] == errors[1] > 0
        assert read_jsonl(tmp_path / "run" / "round-1" / "errors.jsonl") and all(
            e["label"] != first for e in read_jsonl(tmp_path / "run" / "round-1" / "errors.jsonl"))
        rate = errors[0] / mining
    else:
        rate = 0.2
    est = estimate_run(cfg, error_rate=rate)
    assert [s.stage for s in est.stages] == list(ran)
    assert {s.stage: s.requests for s in est.stages} == ran
    rationales = ["rationales"] if task == "imdb" else []
    rounds = ["round-1/extrapolate", "round-2/extrapolate"]
    want = {"s3": ["seed"] + rationales + rounds, "zerogen": ["seed"], "goldgen": ["seed", "goldgen"] + rationales,
            "seed-only": ["seed"] + rationales, "gold": [], "zerogen-s3": ["seed"] + rounds,
            "s3+gold": ["seed"] + rationales + rounds, "zerogen+gold": ["seed"]}[method]
    assert sorted(ran) == sorted(want)
    if "goldgen" in ran:
        assert ran["goldgen"] == mining
    if method == "gold":
        assert llm.seen == []
    seed_reqs = [r for r in llm.seen if band_of(r.sample_index) in ("seed", "zerogen")]
    if METHODS[method].seed == "zerogen":
        # the seed stage sends the ZeroGen prompts (plain completions, one fixed prompt per label), and the
        # estimate counts those prompts: its seed row is labelled so and sized like them
        assert seed_reqs and {band_of(r.sample_index) for r in seed_reqs} == {"zerogen"}
        s3 = S3(cfg, llm=QueuedLLM(usable_answer))
        s3.prepare()
        contexts = [x["context"] for x in s3.contexts] if s3.contexts else [""]
        prompts = {s3.builder.build("zerogen", s3.builder.fields("zerogen", label=lab, context=c), 0).prompt
                   for lab in s3.task.label_names for c in contexts}
        assert {r.prompt for r in seed_reqs} <= prompts and all(r.prompt.endswith('"') for r in seed_reqs)
        (seed,) = [s for s in est.stages if s.stage == "seed"]
        assert seed.label == "seed (zerogen prompts)"
        sizes = [math.ceil(len(p) / 4) for p in prompts]
        assert seed.expected.calls * min(sizes) <= seed.expected.prompt_tokens <= seed.expected.calls * max(sizes)
    elif method != "gold":
        assert seed_reqs and {band_of(r.sample_index) for r in seed_reqs} == {"seed"}
        assert [s.label for s in est.stages if s.stage == "seed"] == ["seed"]


def test_estimate_cli_zerogen_s3_lists_the_zerogen_seed_and_the_rounds(gold):
    r = estimate(gold, *NOWHERE, "--method", "zerogen-s3", "--rounds", "2", "--balance", "none",
                 "--assume-error-rate", "0.5")
    assert r.exit_code == 0, r.output
    expected = r.stdout.split("at most (")[0].splitlines()                    # the expected table
    rows = {ln.split("  ")[0].strip(): ln.split()[-4:] for ln in expected[4:]
            if ln.strip() and not ln.startswith("-") and ln[0].isalpha() and ln.split()[-1].replace(",", "").isdigit()}
    assert list(rows) == ["seed (zerogen prompts)", "round-1/extrapolate", "round-2/extrapolate", "total"]
    assert rows["seed (zerogen prompts)"][0] == "9"                           # ceil(8 x 1.1)
    errors = math.ceil(0.5 * MINING)                                          # 5
    assert rows["round-1/extrapolate"][0] == rows["round-2/extrapolate"][0] == str(math.ceil(errors * 1.1))
    zg = load_task("rte").stage("zerogen").max_tokens
    assert rows["seed (zerogen prompts)"][2] == f"{9 * zg:,}"
    est = estimate_json(gold, *NOWHERE, "--method", "zerogen-s3", "--rounds", "2")
    assert [(s["stage"], s["label"]) for s in est["stages"]] == [
        ("seed", "seed (zerogen prompts)"), ("round-1/extrapolate", "round-1/extrapolate"),
        ("round-2/extrapolate", "round-2/extrapolate")]
    assert est["assumptions"]["method"] == "zerogen-s3"


# -- "at most" is a bound: a run where every mining example is an error and answers are rejected ---------------

def rejecting_answer(r):
    """Seed: every answer of the first two passes (8 + ceil(8 x 1.25) = 18 requests) is empty, the third pass
    is kept; extrapolation: the first attempt of every source is empty, the second is kept."""
    band = band_of(r.sample_index)
    offset = r.sample_index - SAMPLE_BANDS[band]
    if band == "seed" and offset < 8 + 10:
        return ""
    if band == "extrapolate" and offset // ATTEMPT_STRIDE == 0:
        return ""
    return usable_answer(r)


def test_at_most_bounds_a_run_with_every_mining_example_an_error(tmp_path):
    """Every gold example is not_entailment and the learner always says entailment: all 10 mining examples are
    errors in both rounds (a 100% error rate), and every answer is rejected as often as it can be. The run
    uses exactly the bound, by hand: seed 3 passes of 8, 10 and 10 calls = 28; each round 10 sources (--balance
    fill: the one label present, 10 mining examples) x 2 attempts = 20; 28 + 20 + 20 = 68 calls, each at most
    48 completion tokens. The old single figure (error rate 0.2, x 1.1) said 9 + 5 + 5 = 19 calls."""
    g = tmp_path / "gold.jsonl"
    g.write_text("".join(json.dumps({**r, "label": "not_entailment"}) + "\n" for r in GOLD))
    cfg = RunConfig(task="rte", gold_eval=str(g), llm="echo:m", learner="fake", learner_options={"mode": "constant"},
                    seed_size=8, rounds=2, min_gain=-1.0, prompt_style="fewshot")
    llm = QueuedLLM(rejecting_answer)
    S3(cfg, llm=llm).run(tmp_path / "run")
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["split"]["mining"] == 10
    assert [read_json(tmp_path / "run" / f"round-{q}" / "metrics.json")["errors"] for q in (1, 2)] == [10, 10]
    used = {name: st["llm"] for name, st in m["stages"].items() if "llm" in st}
    # requests served (round 2 asks what round 1 asked: its answers come from the cache, unpaid)
    assert {k: v["requests"] for k, v in used.items()} == {"seed": 28, "round-1/extrapolate": 20,
                                                           "round-2/extrapolate": 20}

    est = estimate_run(cfg)                                       # the default assumed error rate, 0.2
    most = {s.stage: s.at_most for s in est.stages}
    assert {k: f.calls for k, f in most.items()} == {"seed": 28, "round-1/extrapolate": 20, "round-2/extrapolate": 20}
    assert est.total().at_most.calls == 68 == llm.stats.requests > llm.stats.calls == 48
    assert est.total().at_most.completion_tokens == 68 * 48 >= sum(v["used_completion_tokens"] for v in used.values())
    # the prompts the run was served, counted as the estimate counts (round 2's are round 1's again)
    served = sum(math.ceil(len(r.prompt) / 4) * (2 if band_of(r.sample_index) == "extrapolate" else 1)
                 for r in llm.seen)
    assert est.total().at_most.prompt_tokens >= served
    assert est.total().expected.calls == 9 + 5 + 5 < 68              # the expected figure is no bound
    assert estimate_run(cfg, error_rate=1.0).total().expected.calls == 9 + 11 + 11 < 68


def test_budget_notes_check_the_bound(gold):
    cfg = RunConfig(task="rte", gold_eval=str(gold), llm="echo:m", learner="fake", seed_size=8, rounds=1,
                    prompt_style="fewshot")
    base = estimate_run(cfg).total()
    assert base.expected.tokens < base.at_most.tokens
    (between,) = estimate_run(replace(cfg, max_tokens=base.expected.tokens)).budget_notes()
    assert between.startswith(f"--max-tokens {base.expected.tokens:,}: expected {base.expected.tokens:,} fits, at "
                              f"most {base.at_most.tokens:,} does not: the run may stop (exit code 3), at the "
                              "earliest in stage '")
    assert estimate_run(replace(cfg, max_tokens=base.at_most.tokens)).budget_notes() == [
        f"--max-tokens {base.at_most.tokens:,}: at most {base.at_most.tokens:,} fits: the budget cannot stop the run"]
