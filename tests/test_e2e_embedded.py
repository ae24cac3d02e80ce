"""The real thing, offline: the embedded SmolLM2 through llama-cpp-python and the real MiniLM learner,
on a tiny RTE slice, one round, through the command line. A second invocation makes no LLM call."""

import json
import subprocess
import sys

import pytest

from s3synth.io import read_json, read_jsonl

pytestmark = pytest.mark.slow


def test_embedded_llm_and_minilm_one_round(tmp_path, shared_data):
    pytest.importorskip("llama_cpp")
    gold = tmp_path / "gold.jsonl"
    test = tmp_path / "test.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(shared_data / "rte" / "train.jsonl")[:36]))
    test.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(shared_data / "rte" / "validation.jsonl")[:24]))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "s3synth.cli", "run", "--task", "rte", "--gold-eval", str(gold), "--test", str(test),
           "--llm", "embedded", "--learner", "minilm", "--seed-size", "12", "--rounds", "1", "--epochs", "2",
           "--max-length", "128", "--out", str(out), "--seed", "1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "final" in first.stdout and "why the loop stopped" in first.stdout
    for f in ("config.toml", "manifest.json", "seed.jsonl", "llm_cache.sqlite", "round-1/errors.jsonl",
              "round-1/metrics.json", "final/metrics.json", "final/model/config.json"):
        assert (out / f).exists(), f
    assert any((out / "final" / "model").glob("*.safetensors"))
    seed = read_jsonl(out / "seed.jsonl")
    assert len(seed) == 12 and all(r["text"].strip() and r["context"] for r in seed)
    m = read_json(out / "manifest.json")
    assert m["prompt_style"] == "fewshot" and len(m["split"]["demos"]) == 4
    assert m["llm"]["identity"]["backend"] == "embedded"
    calls_first = m["invocations"][0]["llm"]["calls"]
    assert calls_first == m["llm"]["spent_total"]["answers"] > 0
    assert m["synthesis"]["seed"]["kept"] >= 12
    r1 = read_json(out / "round-1" / "metrics.json")
    assert r1["errors"] == len(read_jsonl(out / "round-1" / "errors.jsonl")) > 0     # 12 examples teach little
    added = read_jsonl(out / "round-1" / "added.jsonl")
    assert r1["added"] == len(added) > 0
    gold_premises = {r["premise"] for r in read_jsonl(gold)}
    assert all(a["context"] in gold_premises for a in added)
    final = read_json(out / "final" / "metrics.json")
    assert final["test"]["n"] == 24
    # the saved MiniLM reloads and reproduces the recorded test accuracy
    from s3synth.data import load_examples
    from s3synth.learners import load_learner
    from s3synth.tasks import load_task

    rte = load_task("rte")
    model = load_learner(out / "final" / "model", rte)
    assert model.evaluate(load_examples(test, rte, id_prefix="test"))["accuracy"] == final["test"]["accuracy"]

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    m2 = read_json(out / "manifest.json")
    assert len(m2["invocations"]) == 2 and m2["invocations"][1]["llm"]["calls"] == 0
    assert m2["llm"]["spent_total"]["answers"] == m["llm"]["spent_total"]["answers"]
    assert second.stdout == first.stdout
