"""Plugins from outside the package: the test plugins of fake_plugins.py (learner `fake`, LLM backend `echo`),
registered through a real entry point by conftest.py, found and driven like any third-party plugin; and
RunConfig's checks, which the command line shares."""

from __future__ import annotations

import dataclasses
import json
import typing
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_plugins import ECHO_INSTANCES, EchoLLM, FakeLearner

from s3synth.cli import cli
from s3synth.config import RunConfig, redact_url
from s3synth.data import Example, Prediction
from s3synth.errors import S3Error
from s3synth.io import read_json, read_jsonl
from s3synth.learners import load_learner, make_learner
from s3synth.llm import make_llm
from s3synth.plugins import load_plugin, plugin_names
from s3synth.tasks import load_task

GOLD = [{"premise": f"Premise {i}: the old town of Brill has {i} stone bridges over its river.",
         "hypothesis": f"Brill has {i} bridges.", "label": ["entailment", "not_entailment"][i % 2]} for i in range(20)]


@pytest.fixture
def gold(tmp_path):
    p = tmp_path / "gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in GOLD))
    return p


def test_test_plugins_come_from_an_entry_point():
    assert "fake" in plugin_names("learners") and {"minilm", "fast"} <= set(plugin_names("learners"))
    assert "echo" in plugin_names("llms") and "openai" in plugin_names("llms")
    (ep,) = [e for e in entry_points(group="s3synth.learners") if e.name == "fake"]
    assert ep.value == "fake_plugins:FakeLearner" and ep.dist.name == "s3synth_test_plugins"
    assert load_plugin("learners", "fake") is FakeLearner and load_plugin("llms", "echo") is EchoLLM
    with pytest.raises(S3Error, match="unknown learner 'fakes'; available: .*fake"):
        load_plugin("learners", "fakes")


# ---------------------------------------------------------------- the fake learner itself

def sentiment():
    pos = ["a great film", "great acting and a lovely story", "loved it, great fun", "lovely and great"]
    neg = ["an awful film", "awful acting and a dull story", "hated it, dull", "dull and awful"]
    return [Example(t, "positive", id=f"p{i}") for i, t in enumerate(pos)] + \
        [Example(t, "negative", id=f"n{i}") for i, t in enumerate(neg)]


def test_fake_learner_words_constant_and_options_from_strings():
    imdb = load_task("imdb")
    lrn = make_learner("fake", imdb, {"epochs": "3"}, seed=7)            # strings as from --learner-option
    assert isinstance(lrn, FakeLearner) and lrn.config.epochs == 3 and lrn.config.seed == 7
    h = lrn.fit(sentiment(), sentiment())
    assert [r["epoch"] for r in h["epochs"]] == [1, 2, 3] and h["best_epoch"] == 1
    assert h["selection_metric"] == "macro_f1" and h["train_examples"] == 8
    assert all(r["macro_f1"] == 1.0 and r["train_loss"] > 0 for r in h["epochs"])
    preds = lrn.predict([Example("great and lovely"), Example("dull, awful"), Example("?!")])
    assert [p.label for p in preds] == ["positive", "negative", "negative"]   # no words: a tie, the first label
    for p in preds:
        assert isinstance(p, Prediction) and list(p.probs) == imdb.label_names
        assert sum(p.probs.values()) == pytest.approx(1.0) and p.score == p.probs[p.label]
    assert preds[0].probs["positive"] > 0.9 and preds[2].probs == {"negative": 0.5, "positive": 0.5}
    const = make_learner("fake", imdb, {"mode": "constant"})
    const.fit(sentiment())
    assert {p.label for p in const.predict(sentiment())} == {"negative"}
    assert const.evaluate(sentiment())["accuracy"] == 0.5
    with pytest.raises(S3Error, match="mode 'oracle' must be one of words, constant"):
        make_learner("fake", imdb, {"mode": "oracle"})
    with pytest.raises(S3Error, match="learner 'fake': unknown option lr; known: epochs, mode, seed"):
        make_learner("fake", imdb, {"lr": "1e-4"})
    with pytest.raises(S3Error, match="call fit"):
        make_learner("fake", imdb).predict(sentiment())
    with pytest.raises(S3Error, match="'neutral'"):
        make_learner("fake", imdb).fit([Example("fine", "neutral")])


def test_fake_learner_pair_and_qa_and_save_load(tmp_path):
    rte, aqa = load_task("rte"), load_task("adversarial_qa")
    ctx = "Yesterday Anna met Tom in Paris."
    qa = [Example("Who met Tom in Paris?", context=ctx, answer={"text": "Anna", "start": ctx.index("Anna")}),
          Example("Where did Anna meet Tom?", context=ctx, answer={"text": "Paris", "start": ctx.index("Paris")})]
    lrn = make_learner("fake", aqa)
    h = lrn.fit(qa, qa)
    assert h["selection_metric"] == "f1" and h["epochs"][0]["exact_match"] == 0.0    # "Yesterday" both times
    assert [p.answer for p in lrn.predict(qa)] == ["Yesterday", "Yesterday"]
    qa2 = [Example("Who was in Paris yesterday with Tom?", context=ctx, answer={"text": "Anna", "start": 9})]
    assert lrn.predict(qa2)[0].answer == "Anna" and lrn.evaluate(qa2)["exact_match"] == 1.0
    const = make_learner("fake", aqa, {"mode": "constant"})
    const.fit(qa)
    assert const.predict(qa2)[0].answer == "Yesterday"                      # the context's first word
    pairs = [Example("Brill has bridges.", "entailment", context="Brill has bridges and a river."),
             Example("Brill has no river.", "not_entailment", context="Brill has bridges and a river.")]
    lrn = make_learner("fake", rte)
    lrn.fit(pairs)
    assert [p.label for p in lrn.predict(pairs)] == ["entailment", "not_entailment"]
    lrn.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "s3synth_learner.json").read_text())
    assert meta["learner"] == "fake" and meta["task"] == "rte" and meta["config"]["mode"] == "words"
    again = load_learner(tmp_path / "m", rte)
    assert isinstance(again, FakeLearner) and again.predict(pairs) == lrn.predict(pairs)
    with pytest.raises(S3Error, match="not for 'imdb'"):
        load_learner(tmp_path / "m", load_task("imdb"))


# ---------------------------------------------------------------- a third-party LLM backend through the CLI

def run_echo(gold, out, *extra):
    return CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:model",
                                    "--learner", "fake", "--seed-size", "6", "--rounds", "1", "--out", str(out),
                                    "-q", *extra])


def test_cli_drives_a_third_party_backend_with_its_options(gold, tmp_path, monkeypatch):
    import s3synth.report as report_mod

    reports = []
    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: reports.append((str(path), embed)))
    ECHO_INSTANCES.clear()
    r = run_echo(gold, tmp_path / "run", "-o", "greeting=hello", "--llm-option", "temperature_bias=0.5",
                 "--learner-option", "mode=constant")
    assert r.exit_code == 0, r.output
    (llm,) = ECHO_INSTANCES
    assert llm.options == EchoLLM.Options(greeting="hello", temperature_bias=0.5)    # typed from the strings
    assert llm.model == "model" and llm.seen
    seed = read_jsonl(tmp_path / "run" / "seed.jsonl")
    assert len(seed) == 6 and all(ex["text"].startswith("hello statement ") for ex in seed)
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["llm"]["name"] == "echo:model" and m["llm"]["identity"]["greeting"] == "hello"
    toml = (tmp_path / "run" / "config.toml").read_text()
    assert 'greeting = "hello"' in toml and 'mode = "constant"' in toml
    r1 = read_json(tmp_path / "run" / "round-1" / "metrics.json")
    assert r1["errors"] == m["split"]["mining"] // 2 and r1["mining"]["pred_share"]["entailment"] == 1.0
    assert reports == [(str(tmp_path / "run"), "minilm")]


def test_unknown_backend_option_is_one_line_exit_2(gold, tmp_path):
    ECHO_INSTANCES.clear()
    r = run_echo(gold, tmp_path / "run", "-o", "nosuch=1")
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == ("s3synth: error: --llm-option for the echo backend: unknown option nosuch; "
                   "known: greeting, temperature_bias")
    assert not (tmp_path / "run").exists() and ECHO_INSTANCES == []
    r = run_echo(gold, tmp_path / "run", "-o", "temperature_bias=warm")
    assert r.exit_code == 2 and "option temperature_bias: 'warm' is not a number" in r.stderr
    r = run_echo(gold, tmp_path / "run", "-o", "greeting")
    assert r.exit_code == 2 and "write KEY=VALUE" in r.stderr
    r = run_echo(gold, tmp_path / "run", "--learner-option", "mode=oracle")
    assert r.exit_code == 2 and "mode 'oracle' must be one of words, constant" in r.stderr
    assert not (tmp_path / "run").exists()


def test_an_alias_the_backend_does_not_take_is_ignored_with_a_note(gold, tmp_path):
    ECHO_INSTANCES.clear()
    r = CliRunner().invoke(cli, ["estimate", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:model",
                                 "--learner", "fake", "--seed-size", "6", "--rounds", "1", "--base-url",
                                 "http://127.0.0.1:9/v1", "--epochs", "2", "--lr", "0.1"])
    assert r.exit_code == 0, r.output
    assert "note: --base-url does not apply to the echo backend; ignored" in r.stderr
    assert "note: --lr does not apply to the fake learner; ignored" in r.stderr
    assert "--epochs" not in r.stderr                                    # the fake learner takes epochs
    assert ECHO_INSTANCES and ECHO_INSTANCES[-1].options == EchoLLM.Options()
    with pytest.raises(S3Error, match="LLM backend 'echo': unknown option base_url; known: greeting, temperature_bias"):
        make_llm("echo:m", base_url="http://x")


def test_plugins_command_lists_the_test_plugins():
    r = CliRunner().invoke(cli, ["plugins"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.split()[:1] == ["echo"])
    assert lines[i + 1].split() == ["greeting:", "str", "=", "'hi'"]
    assert lines[i + 2].split() == ["temperature_bias:", "float", "=", "0.0"]
    j = next(k for k, ln in enumerate(lines) if ln.split()[:1] == ["fake"])
    assert lines[j].split()[1:3] == ["Test", "learner:"] and lines[j + 1].split() == ["mode:", "str", "=", "'words'"]


# ---------------------------------------------------------------- RunConfig checks = the command line's

@pytest.mark.parametrize("kw, flags", [
    (dict(max_cost=5), ["--max-cost", "5"]),
    (dict(max_tokens=0), ["--max-tokens", "0"]),
    (dict(rounds=-1), ["--rounds", "-1"]),
    (dict(holdout_frac=1.0), ["--holdout-frac", "1.0"]),
    (dict(price_in=-1.0), ["--price-in", "-1"]),
])
def test_run_config_refuses_what_the_cli_refuses_with_the_same_message(gold, tmp_path, kw, flags):
    with pytest.raises(S3Error) as e:
        RunConfig(task="rte", gold_eval=str(gold), **kw)
    for command in ("run", "estimate"):
        r = CliRunner().invoke(cli, [command, "--task", "rte", "--gold-eval", str(gold), "--out", str(tmp_path / "r"),
                                     "--learner", "fake", "--llm", "echo:m", *flags])
        assert r.exit_code == 2
        assert r.stderr.strip() == f"s3synth: error: {e.value}"
    assert not (tmp_path / "r").exists()
    if "max_cost" in kw:
        assert str(e.value) == "--max-cost needs --price-in and/or --price-out (money per million tokens)"


def test_run_config_masks_credentials_in_backend_options():
    cfg = RunConfig(task="rte", gold_eval="g.jsonl", llm="openai:m",
                    llm_options={"base_url": "https://bob:pw@host/v1", "concurrency": 2})
    assert cfg.to_dict()["llm_options"] == {"base_url": "https://***@host/v1", "concurrency": 2}
    assert redact_url(cfg.llm_options["base_url"]) == "https://***@host/v1"
    assert RunConfig.from_dict({**cfg.to_dict(), "removed_field": 1}).llm_options["concurrency"] == 2
    with pytest.raises(S3Error) as e:
        RunConfig(task="rte", gold_eval="g.jsonl", llm_options=["base_url=x"])
    assert str(e.value) == "RunConfig llm_options=['base_url=x']: expected a dict of option name -> value"


# RunConfig fields by declared type: (a valid value when the default is None, the same value as a user may
# write it, a value of the wrong type). A field of a new type fails below until it is added here.
LOOSE = {int: (7, str, "many"), float: (0.5, str, "much"), bool: (True, lambda v: str(v).lower(), "maybe"),
         str: ("x.jsonl", Path, ["x.jsonl"]), dict: ({"k": 1}, json.dumps, ["k=1"])}
NEEDS = {"ray_address": {"executor": "ray"}, "max_cost": {"price_in": 1.0},    # what a field's value needs beside it
         "data_revision": {"gold_eval": "hf:s3synth-test/data::test"}}
SAMPLE = {"columns": "text=body"}     # a field whose value has a form of its own


@pytest.mark.parametrize("f", dataclasses.fields(RunConfig), ids=lambda f: f.name)
def test_every_run_config_field_converts_its_type_or_refuses_in_one_line(f):
    """RunConfig(seed_size="16") is seed_size 16 and RunConfig(seed_size="many") a one-line S3Error, for every
    field by its declared type (one place converts all of them: a new field is covered here too)."""
    hint = typing.get_type_hints(RunConfig)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    tp = typing.get_origin(args[0] if args else hint) or (args[0] if args else hint)
    assert tp in LOOSE, f"RunConfig.{f.name}: add a sample of type {tp} to LOOSE"
    sample, loose, wrong = LOOSE[tp]
    if f.metadata.get("data"):
        wrong = 5       # a list is rows given from Python there (test_datasets_hub.py)
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    value = SAMPLE.get(f.name, sample) if default in (None, {}) else default
    base = {"task": "rte", "gold_eval": "g.jsonl", **NEEDS.get(f.name, {})}
    cfg = RunConfig(**{**base, f.name: loose(value)})
    got = getattr(cfg, f.name)
    assert got == value and type(got) is type(value)
    flag = f" (--{f.name.replace('_', '-')})" if f.metadata["cli"] else ""
    words = {int: "a whole number (int)", float: "a number (float)", bool: "true or false (bool)",
             str: "text or a path (str)", dict: "a dict of option name -> value"}[tp]
    with pytest.raises(S3Error) as e:
        RunConfig(**{**base, f.name: wrong})
    assert str(e.value) == (f"RunConfig {f.name}={wrong!r}{flag}: expected {words}"
                            + (" or None" if len(args) < len(typing.get_args(hint)) else ""))
