"""The command line: bad input gives one line and exit code 2 and writes nothing; kill and resume."""

import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import cache_rows, plugin_env
from openai_stub import OpenAIStub

from s3synth.cli import cli
from s3synth.io import read_json, read_jsonl


def run_cli(args):
    return CliRunner().invoke(cli, args)


def rows_file(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


GOOD = [{"premise": f"Premise {i} says the town has {i} bridges.", "hypothesis": f"There are {i} bridges.",
         "label": ["entailment", "not_entailment"][i % 2]} for i in range(12)]


@pytest.mark.parametrize("bad, line, words", [
    ('{"premise": "P", "hypothesis": "H", "label": 0}\n{"premise": "P", "label": 0}\n', 2, "field 'hypothesis'"),
    ('{"premise": "P", "hypothesis": "H", "label": "perhaps"}\n', 1, "unknown label 'perhaps'"),
    ('{"premise": "P", "hypothesis": "H", "label": 0}\n{oops\n', 2, "malformed JSON"),
    ('', None, "holds no examples"),
    (b'{"premise": "P\xff", "hypothesis": "H", "label": 0}\n', 1, "not valid UTF-8"),
])
def test_bad_gold_eval_one_line_exit_2_nothing_written(tmp_path, bad, line, words):
    p = tmp_path / "gold.jsonl"
    p.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
    out = tmp_path / "run"
    r = run_cli(["run", "--task", "rte", "--gold-eval", str(p), "--out", str(out), "-q"])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"s3synth: error: {p}" + (f":{line}:" if line else ":")) and words in err
    assert not out.exists()


def test_bad_qa_answer_and_bad_test_file(tmp_path):
    qa = rows_file(tmp_path, "qa.jsonl", [{"context": "Oslo is big.", "question": "Q?",
                                           "answers": {"text": ["Bergen"], "answer_start": [0]}}])
    r = run_cli(["run", "--task", "adversarial_qa", "--gold-eval", str(qa), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "not in its context" in r.stderr and not (tmp_path / "r").exists()
    gold = rows_file(tmp_path, "gold.jsonl", GOOD)
    test = rows_file(tmp_path, "test.jsonl", [{"premise": "P", "hypothesis": "H", "label": 7}])
    r = run_cli(["run", "--task", "rte", "--gold-eval", str(gold), "--test", str(test), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and f"{test}:1: field 'label'" in r.stderr and not (tmp_path / "r").exists()


def test_verbose_shows_traceback_and_bad_settings(tmp_path):
    p = tmp_path / "gold.jsonl"
    p.write_text("{oops\n")
    r = run_cli(["run", "--task", "rte", "--gold-eval", str(p), "--out", str(tmp_path / "r"), "-v"])
    assert r.exit_code == 2 and "Traceback" in r.stderr
    gold = rows_file(tmp_path, "gold.jsonl", GOOD)
    r = run_cli(["run", "--task", "rte", "--gold-eval", str(gold), "--out", str(tmp_path / "r"), "--lr", "5"])
    assert r.exit_code == 2 and "lr=5.0" in r.stderr
    r = run_cli(["run", "--task", "nope", "--gold-eval", str(gold), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "unknown task 'nope'" in r.stderr
    assert not (tmp_path / "r").exists()


def test_credentials_in_base_url_are_masked(tmp_path):
    from s3synth.config import RunConfig, redact_url, to_toml

    assert redact_url("run --base-url https://bob:s3cret@host:8000/v1 --x") == "run --base-url https://***@host:8000/v1 --x"
    cfg = RunConfig(task="rte", gold_eval="g.jsonl", llm="openai:m",
                    llm_options={"base_url": "http://bob:s3cret@localhost:8000/v1", "concurrency": 2})
    text = to_toml(cfg.to_dict())
    assert "s3cret" not in text and 'base_url = "http://***@localhost:8000/v1"' in text
    assert "[llm_options]" in text and "concurrency = 2" in text
    assert cfg.llm_options["base_url"] == "http://bob:s3cret@localhost:8000/v1"     # the run itself still has it


def test_tasks_and_help():
    r = run_cli(["tasks"])
    assert r.exit_code == 0 and [ln.split()[0] for ln in r.stdout.splitlines() if not ln.startswith(" ")] == [
        "adversarial_qa", "imdb", "qnli", "rte"]
    r = run_cli(["run", "--help"])
    assert r.exit_code == 0 and "--seed-size" in r.stdout and "resume" in r.stdout



@pytest.mark.slow       # a `s3synth run` process killed with SIGKILL, then run again
def test_killed_run_resumes_and_pays_nothing_twice(tmp_path, shared_data):
    """SIGKILL a real `s3synth run` talking to a local OpenAI-compatible server mid-seed, run it again,
    and count at the server that no answered prompt is sent again; the seed equals an uninterrupted run's."""
    gold = rows_file(tmp_path, "gold.jsonl", read_jsonl(shared_data / "rte" / "validation.jsonl")[:40])

    def cmd(out):   # `s3synth run` with the test plugins on the path, writing no report
        return [sys.executable, "-c", "import fake_plugins; fake_plugins.main_without_reports()", "run",
                "--task", "rte", "--gold-eval", str(gold),
                "--llm", "openai:stub-model", "--learner", "fake", "--seed-size", "24", "--rounds", "0",
                "--concurrency", "2", "--out", str(out), "-q"]

    env = plugin_env(OPENAI_BASE_URL="", OPENAI_API_KEY="sk-test")
    with OpenAIStub() as stub:
        base = ["--base-url", stub.url]
        ref = subprocess.run(cmd(tmp_path / "ref") + base, env=env, capture_output=True, text=True, timeout=300)
        assert ref.returncode == 0, ref.stderr
        stub.received.clear()
        stub.answered.clear()
        stub.hold_after = 10
        p = subprocess.Popen(cmd(tmp_path / "run") + base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and not (stub.count > 10 and cache_rows(tmp_path / "run" / "llm_cache.sqlite") >= 10):
            time.sleep(0.1)
        p.kill()
        p.wait(30)
        answered_first = [json.dumps([b["messages"], b["seed"]]) for b in stub.answered]
        assert len(answered_first) == 10 and cache_rows(tmp_path / "run" / "llm_cache.sqlite") == 10
        assert not (tmp_path / "run" / "seed.jsonl").exists()
        stub.hold_after = None
        stub.release.set()
        n_before = stub.count
        again = subprocess.run(cmd(tmp_path / "run") + base, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        sent_again = [json.dumps([b["messages"], b["seed"]]) for b in stub.bodies[n_before:]]
        assert sent_again and set(answered_first).isdisjoint(sent_again)
        assert len(sent_again) == len(set(sent_again))
    assert read_jsonl(tmp_path / "run" / "seed.jsonl") == read_jsonl(tmp_path / "ref" / "seed.jsonl")
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["invocations"][-1]["llm"]["cache_hits"] >= 10
    assert "sk-test" not in (tmp_path / "run" / "manifest.json").read_text()
    assert "sk-test" not in (tmp_path / "run" / "config.toml").read_text()


def test_train_writes_eval_and_test_predictions_in_the_layout_of_run(tmp_path):
    """`train` writes one row per --eval and per --test example, as `run` writes round-K/ and final/
    predictions.jsonl (one folder per split, so neither overwrites the other); QA rows keep every gold
    answer, which the official SQuAD v1.1 script scores against."""
    train = rows_file(tmp_path, "train.jsonl", [{"text": f"review {i}", "label": i % 2} for i in range(6)])
    ev = rows_file(tmp_path, "ev.jsonl", [{"text": "a fine film", "label": "positive"}])
    test = rows_file(tmp_path, "test.jsonl", [{"text": "dull", "label": 0}, {"text": "great", "label": 1}])
    out = tmp_path / "gold"
    r = run_cli(["train", "--task", "imdb", "--train", str(train), "--eval", str(ev), "--test", str(test),
                 "--learner", "fake", "--learner-option", "mode=constant", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    row = {"split": "test", "prediction": "negative", "confidence": 1.0}
    assert read_jsonl(out / "test" / "predictions.jsonl") == [
        {"id": "test-1", **row, "gold": "negative", "correct": True, "text": "dull"},
        {"id": "test-2", **row, "gold": "positive", "correct": False, "text": "great"}]
    assert read_jsonl(out / "eval" / "predictions.jsonl") == [
        {"id": "eval-1", **row, "split": "eval", "gold": "positive", "correct": False, "text": "a fine film"}]
    assert read_json(out / "metrics.json")["test"]["accuracy"] == 0.5

    ctx = ["Anna Berg built the old bridge in Oslo.", "The ship sailed from Bergen to Oslo."]
    qa = [{"context": ctx[0], "question": "Who built the bridge?",
           "answers": {"text": ["Anna Berg", "Anna"], "answer_start": [0, 0]}},
          {"context": ctx[1], "question": "Where did the ship sail to?",
           "answers": {"text": ["Oslo", "to Oslo"], "answer_start": [31, 28]}}]
    qa_file = rows_file(tmp_path, "qa.jsonl", qa)
    r = run_cli(["train", "--task", "adversarial_qa", "--train", str(qa_file), "--eval", str(qa_file),
                 "--test", str(qa_file), "--learner", "fake", "--out", str(tmp_path / "qa"), "-q"])
    assert r.exit_code == 0, r.output
    # the fake learner answers with the context's first capitalised word that the question does not use
    assert read_jsonl(tmp_path / "qa" / "test" / "predictions.jsonl") == [
        {"id": "test-1", "split": "test", "gold": ["Anna Berg", "Anna"], "prediction": "Anna", "confidence": 1.0,
         "correct": True, "text": "Who built the bridge?", "context": ctx[0]},
        {"id": "test-2", "split": "test", "gold": ["Oslo", "to Oslo"], "prediction": "Bergen", "confidence": 1.0,
         "correct": False, "text": "Where did the ship sail to?", "context": ctx[1]}]
    assert [r["split"] for r in read_jsonl(tmp_path / "qa" / "eval" / "predictions.jsonl")] == ["eval", "eval"]
