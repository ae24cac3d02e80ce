"""The S3 loop end to end with a queued fake LLM and the fake learner (tests/fake_plugins.py) on tiny data;
one slow test runs it with the real learners."""

import json
import random
import re

import pytest
from conftest import QueuedLLM

from s3synth.config import RunConfig
from s3synth.data import load_examples
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.progress import set_quiet
from s3synth.tasks import load_task

set_quiet(True)

WORDS = {"positive": "great wonderful superb loved brilliant".split(),
         "negative": "awful boring terrible hated dull".split()}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_data(tmp_path, task, n=28):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        if task == "imdb":
            lab = ["negative", "positive"][i % 2]
            shown = lab if i % 4 else ("positive" if lab == "negative" else "negative")   # some hard cases
            rows.append({"text": f"The film was {rng.choice(WORDS[shown])} and {rng.choice(WORDS[shown])}.",
                         "label": lab})
        elif task in ("rte", "qnli"):
            lab = ["entailment", "not_entailment"][i % 2]
            ctx = f"The town of Place{i} has {i + 3} bridges and a river."
            txt = f"Place{i} has bridges." if lab == "entailment" else f"Place{i} has no river."
            rows.append({"premise": ctx, "hypothesis": txt, "label": lab} if task == "rte"
                        else {"sentence": ctx, "question": txt + "?", "label": lab})
        else:
            ctx = (f"Yesterday we saw the bridge in Place{i}, built by Anna{i} in {1900 + i}." if i % 3 == 0
                   else f"The bridge in Place{i} was built by Anna{i} in {1900 + i}. It is long.")
            ans = f"Anna{i}"
            rows.append({"id": f"q{i}", "context": ctx, "question": f"Who built the bridge in Place{i}?",
                         "answers": {"text": [ans], "answer_start": [ctx.index(ans)]}})
    gold = write_jsonl(tmp_path / "gold.jsonl", rows[: n - 8])
    test = write_jsonl(tmp_path / "test.jsonl", rows[n - 8:])
    return gold, test


def fake_answer(task):
    def fn(r):
        text = r.prompt or r.messages[-1][1]
        rng = random.Random(f"{text}|{r.sample_index}")
        if task == "imdb":
            if text.rstrip().endswith("3."):
                return " the acting is fine\n4. the story moves well\n5. the music works"
            lab = "positive" if "positive" in text.rsplit("\n", 1)[-1] or "positive" in text[-80:] else "negative"
            return f" This movie was {rng.choice(WORDS[lab])} and quite {rng.choice(WORDS[lab])} overall."
        if task == "adversarial_qa":
            return f" Who made the thing number {rng.randint(0, 999)}?"
        return f" Statement number {rng.randint(0, 9999)} about the place."
    return fn


def gold_index(ex_id: str) -> int:
    """tiny_data's row number i of a gold example id ("gold-1" is i = 0)."""
    return int(ex_id.rsplit("-", 1)[1]) - 1


def is_hard(ex_id: str) -> bool:
    """imdb rows with the words of the other label (every fourth): the fake learner gets exactly these wrong."""
    return gold_index(ex_id) % 4 == 0


def prepared(cfg, llm=None):
    """The S3 object after `prepare()` (nothing written): its mining and holdout split."""
    s3 = S3(cfg, llm=llm or QueuedLLM(lambda r: "unused"))
    s3.prepare()
    return s3


def learner_errors(task, train_rows, examples):
    """Which of `examples` a fake learner trained on `train_rows` gets wrong, computed outside the loop."""
    from s3synth.data import Example
    from s3synth.learners import make_learner
    from s3synth.metrics import is_error

    lrn = make_learner("fake", task)
    lrn.fit([Example.from_dict(d) for d in train_rows])
    return [ex.id for ex, p in zip(examples, lrn.predict(examples)) if is_error(task, ex, p)]


@pytest.mark.parametrize("task", ["imdb", "rte", "qnli", "adversarial_qa"])
def test_each_builtin_task_runs_the_loop(tmp_path, task):
    from s3synth.learners import load_learner
    from s3synth.metrics import evaluate

    gold, test = tiny_data(tmp_path, task)
    cfg = RunConfig(task=task, gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1,
                    holdout_frac=0.25)
    out = tmp_path / "run"
    llm = QueuedLLM(fake_answer(task))
    res = S3(cfg, llm=llm).run(out)
    for f in ("config.toml", "manifest.json", "seed.jsonl", "round-1/errors.jsonl", "round-1/metrics.json",
              "final/metrics.json", "llm_cache.sqlite"):
        assert (out / f).exists(), f
    assert res["seed_size"] == 16 and len(read_jsonl(out / "seed.jsonl")) == 16
    m = read_json(out / "manifest.json")
    assert m["llm"]["spent_total"]["answers"] == llm.stats.calls > 0
    assert m["synthesis"]["seed"]["kept"] >= 16
    assert m["split"]["holdout"] > 0 and m["split"]["mining"] > 0
    # round 1's errors are exactly the mining examples a learner trained on the seed gets wrong
    s3 = prepared(cfg)
    want = learner_errors(s3.task, read_jsonl(out / "seed.jsonl"), s3.mining)
    r1 = read_json(out / "round-1/metrics.json")
    errors = read_jsonl(out / "round-1/errors.jsonl")
    assert [e["id"] for e in errors] == want and r1["errors"] == len(want) > 0
    if task == "imdb":                  # the hard cases, and only they
        assert want == [ex.id for ex in s3.mining if is_hard(ex.id)]
    if task == "adversarial_qa":        # "Yesterday" rows: the first new capitalised word is not the answer
        assert want == [ex.id for ex in s3.mining if ex.context.startswith("Yesterday")]
    added = read_jsonl(out / "round-1/added.jsonl")
    sources = read_jsonl(out / "round-1/sources.jsonl")
    assert res["added"] == r1["added"] == len(added) == len(sources)          # every answer usable
    by_id = {e["id"]: e for e in sources}
    for a in added:   # the gold label and the context of the source are kept
        src = by_id[a["meta"]["source_id"]]
        assert a.get("label") == src.get("label") and a.get("context") == src.get("context")
    final = read_json(out / "final/metrics.json")
    # the default final training (auto, method s3): the synthetic data, then every gold example not held out
    n_gold = m["split"]["gold_eval"] - m["split"]["holdout"]
    assert final["parts"] == {"synthetic": 16 + res["added"], "gold": n_gold, "gold_weight": 1.0}
    train_ids = [d["id"] for d in read_jsonl(out / "final/train.jsonl")]
    assert final["train_size"] == 16 + res["added"] + n_gold == len(train_ids)
    assert set(train_ids[-n_gold:]) == {ex.id for ex in s3.gold} - {ex.id for ex in s3.holdout}
    assert final["test"]["n"] == 8
    # the saved model reloads and reproduces the recorded test metrics
    model = load_learner(out / "final/model", s3.task)
    assert type(model).__name__ == "FakeLearner"
    assert evaluate(s3.task, s3.test, model.predict(s3.test)) == final["test"]
    if task == "imdb":
        assert final["test"]["accuracy"] == 0.75                             # rows 20 and 24 of 20..27 are hard


@pytest.mark.slow
@pytest.mark.parametrize("task, learner", [("imdb", "fast"), ("adversarial_qa", "minilm")])
def test_loop_with_real_learners(tmp_path, task, learner):
    """The loop with the real learners (the unit tests above use the fake one)."""
    gold, test = tiny_data(tmp_path, task)
    cfg = RunConfig(task=task, gold_eval=str(gold), test=str(test), learner=learner, seed_size=16, rounds=1,
                    holdout_frac=0.25, learner_options={"epochs": 1, "max_length": 64, "batch_size": 8})
    out = tmp_path / "run"
    res = S3(cfg, llm=QueuedLLM(fake_answer(task))).run(out)
    r1 = read_json(out / "round-1/metrics.json")
    assert r1["errors"] == len(read_jsonl(out / "round-1/errors.jsonl"))
    assert r1["history"]["epochs"] and r1["history"]["best_epoch"] >= 1
    final = read_json(out / "final/metrics.json")
    assert final["parts"]["synthetic"] == 16 + res["added"] and final["parts"]["gold"] > 0
    assert final["train_size"] == 16 + res["added"] + final["parts"]["gold"] == len(read_jsonl(out / "final/train.jsonl"))
    assert final["test"]["n"] == 8
    # the saved model reloads and reproduces the recorded test metrics
    from s3synth.learners import load_learner

    s3 = prepared(cfg)
    key = "f1" if task == "adversarial_qa" else "accuracy"
    assert load_learner(out / "final/model", s3.task).evaluate(s3.test)[key] == pytest.approx(final["test"][key])
    assert any((out / "final/model").glob("*.safetensors"))
    assert not list((out / "final/model").glob("*.bin")) and not list((out / "final/model").glob("*.pt"))
    # the model card names the packaged encoder by its Hub id; only the fine-tuned one is a transformers model
    from s3synth.report.cards import read_header

    head = read_header((out / "final/model/README.md").read_text())
    assert head["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert head.get("library_name") == ("transformers" if learner == "minilm" else None)


def _imdb_cfg(tmp_path, **kw):
    gold, test = tiny_data(tmp_path, "imdb", n=48)
    return RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=20,
                     **{"rounds": 2, **kw})


def test_second_invocation_does_no_new_work(tmp_path):
    cfg = _imdb_cfg(tmp_path)
    first = QueuedLLM(fake_answer("imdb"))
    r1 = S3(cfg, llm=first).run(tmp_path / "run")
    assert first.stats.calls > 0
    second = QueuedLLM(fake_answer("imdb"))
    r2 = S3(cfg, llm=second).run(tmp_path / "run")
    assert second.stats.calls == 0 and second.seen == []
    assert r2["final"]["test"] == r1["final"]["test"]
    m = read_json(tmp_path / "run" / "manifest.json")
    assert len(m["invocations"]) == 2 and m["invocations"][1]["llm"]["calls"] == 0


class Interrupting(QueuedLLM):
    def __init__(self, fn, after):
        super().__init__(fn)
        self.after = after

    def _generate_batch(self, requests, seeds):
        if len(self.seen) >= self.after:
            raise KeyboardInterrupt
        return super()._generate_batch(requests, seeds)


def test_interrupted_run_resumes_without_paying_twice(tmp_path):
    cfg = _imdb_cfg(tmp_path)
    ref = S3(cfg, llm=QueuedLLM(fake_answer("imdb"))).run(tmp_path / "ref")
    killed = Interrupting(fake_answer("imdb"), after=30)   # dies in the middle of the seed stage
    with pytest.raises(KeyboardInterrupt):
        S3(cfg, llm=killed).run(tmp_path / "run")
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["invocations"][0]["interrupted"] is True and not (tmp_path / "run" / "seed.jsonl").exists()
    resumed = QueuedLLM(fake_answer("imdb"))
    res = S3(cfg, llm=resumed).run(tmp_path / "run")
    first_keys = {killed.key(r) for r in killed.seen}
    second_keys = {resumed.key(r) for r in resumed.seen}
    assert first_keys and first_keys.isdisjoint(second_keys)      # nothing answered twice
    assert read_jsonl(tmp_path / "run" / "seed.jsonl") == read_jsonl(tmp_path / "ref" / "seed.jsonl")
    assert res["final"]["test"] == ref["final"]["test"]


def test_min_gain_stops_and_records_why(tmp_path):
    # no round can gain 1.5: stop after round 2's training; with the paper's final training (synthetic only)
    # the final model is round 2's, reused
    cfg = _imdb_cfg(tmp_path, min_gain=1.5, final_train="synthetic")
    res = S3(cfg, llm=QueuedLLM(fake_answer("imdb"))).run(tmp_path / "run")
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["stop_reason"].startswith("stopped after training round 2") and res["stop_reason"] == m["stop_reason"]
    assert not (tmp_path / "run" / "round-2" / "added.jsonl").exists()
    assert res["final"]["reused_model_of"] == "round-2"


def test_round_metrics_record_balance_and_label_counts(tmp_path):
    cfg = _imdb_cfg(tmp_path, rounds=1)
    s3 = prepared(cfg)
    hard = {lab: sum(is_hard(ex.id) for ex in s3.mining if ex.label == lab) for lab in ("negative", "positive")}
    assert sum(hard.values()) > 0 and hard["negative"] != hard["positive"]       # fill has to top one label up
    S3(cfg, llm=QueuedLLM(fake_answer("imdb"))).run(tmp_path / "run")
    r1 = read_json(tmp_path / "run" / "round-1" / "metrics.json")
    assert r1["balance"]["mode"] == "fill"
    assert r1["errors"] == sum(hard.values()) and r1["balance"]["errors_per_label"] == hard
    top = max(hard.values())
    assert r1["balance"]["sources_per_label"] == {"negative": top, "positive": top}   # every label as many
    assert r1["added"] == 2 * top and r1["added_label_counts"] == {"negative": top, "positive": top}
    sources = read_jsonl(tmp_path / "run" / "round-1" / "sources.jsonl")
    short = min(hard, key=hard.get)                     # topped up with correct examples near the boundary
    assert sorted(s.get("meta", {}).get("balance", "error") for s in sources if s["label"] == short) == \
        ["error"] * hard[short] + ["near_boundary"] * (top - hard[short])
    assert set(r1["test"]["pred_share"]) == {"negative", "positive"}


@pytest.mark.parametrize("task", ["imdb", "adversarial_qa"])
def test_predictions_per_example_agree_with_the_metrics_and_the_errors(tmp_path, task, fake_embedder):
    """round-K/predictions.jsonl (gold eval) and final/predictions.jsonl (test): one row per example, ids as
    loaded, `correct` false exactly for round K's errors; the test rows give the final test metric; the
    report lists the most confident wrong ones first."""
    from s3synth.report import write_report

    gold, test = tiny_data(tmp_path, task)
    cfg = RunConfig(task=task, gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1,
                    holdout_frac=0.25)
    out = tmp_path / "run"
    res = S3(cfg, llm=QueuedLLM(fake_answer(task))).run(out)
    m = read_json(out / "manifest.json")
    rows = read_jsonl(out / "round-1/predictions.jsonl")
    assert [r["split"] for r in rows].count("mining") == m["split"]["mining"]
    assert [r["split"] for r in rows].count("holdout") == m["split"]["holdout"]
    errors = {e["id"] for e in read_jsonl(out / "round-1/errors.jsonl")}
    assert errors and {r["id"] for r in rows if r["split"] == "mining" and not r["correct"]} == errors
    test_rows = read_jsonl(out / "final/predictions.jsonl")
    metric = "f1" if task == "adversarial_qa" else "accuracy"
    assert len(test_rows) == res["final"]["test"]["n"] == 8
    assert {r["id"] for r in test_rows} == {ex.id for ex in load_examples(test, load_task(task), id_prefix="test")}
    if metric == "accuracy":
        assert sum(r["correct"] for r in test_rows) / 8 == pytest.approx(res["final"]["test"]["accuracy"])
    else:
        assert sum(r["correct"] for r in test_rows) / 8 == pytest.approx(res["final"]["test"]["exact_match"])
        assert all(isinstance(r["gold"], list) for r in test_rows)
    write_report(out, embed=None)
    html = (out / "report.html").read_text()
    wrong = sorted((r for r in test_rows if not r["correct"]), key=lambda r: -(r["confidence"] or 0))
    if wrong:
        assert "most confident errors" in html and wrong[0]["id"] in html
        assert html.index(wrong[0]["id"], html.index('id="wrong"')) < html.index('id="provenance"')
    else:
        assert "No wrong test predictions recorded" in html


def test_a_seed_lost_to_llm_errors_says_which_error(tmp_path):
    """Every seed request failed: the one-line error carries the counts and the backend's own words, and the
    manifest's 'synthesis' (which the message points to) holds the stage's record."""
    from s3synth.errors import S3Error

    cfg = _imdb_cfg(tmp_path)
    with pytest.raises(S3Error) as e:
        S3(cfg, llm=QueuedLLM(lambda r: None)).run(tmp_path / "run")
    assert str(e.value) == ("the LLM produced no usable seed example (70 llm_error; the first LLM error: injected "
                            "failure); see manifest.json 'synthesis' for the reject reasons, or try --prompt-style "
                            "paper/fewshot")
    seed = read_json(tmp_path / "run" / "manifest.json")["synthesis"]["seed"]
    assert seed["requested"] == 70 and seed["kept"] == 0   # 20 asked, then the retries and seed["first_error"] == "injected failure"


PAPER_ONLY = """name: spam
kind: single
fields: {text: text, label: label}
labels: [negative, positive]
prompts:
  seed:
    paper: "Write a {label_word} movie review."
  extrapolate:
    paper: "Write a {label_word} movie review similar to: {text}"
"""


def test_stage_lines_name_the_style_sent_and_warn_of_fallbacks_and_skips(tmp_path, monkeypatch):
    """A single-text task with paper prompts only, under the fake LLM's default style (fewshot): the stage lines
    name `paper`, one warning line per stage that falls back, one for the skipped rationale stage, and the seed
    requests are the bare paper prompt as one chat message, with no demonstrations picked."""
    import s3synth.method.loop as loop

    task = tmp_path / "spam.yaml"
    task.write_text(PAPER_ONLY)
    gold, _ = tiny_data(tmp_path, "imdb")
    said = []
    monkeypatch.setattr(loop, "info", said.append)
    llm = QueuedLLM(fake_answer("imdb"))
    cfg = RunConfig(task=str(task), gold_eval=str(gold), learner="fake", seed_size=8, rounds=1, holdout_frac=0.25)
    S3(cfg, llm=llm).run(tmp_path / "run")
    assert [s for s in said if s.startswith("warning:")] == [
        "warning: stage rationales skipped: task spam has no prompts.rationale, so the seed prompts show no reasons "
        "({rationales} is left empty); add prompts.rationale to the task file (`s3synth new-task` writes one)",
        "warning: stage seed: task spam has no fewshot prompt for it (prompts.seed.fewshot), so it sends its paper "
        "prompt: one chat message, no demonstrations",
        "warning: stage extrapolate: task spam has no fewshot prompt for it (prompts.extrapolate.fewshot), so it "
        "sends its paper prompt: one chat message, no demonstrations"]
    stages = [s for s in said if s.startswith("stage: ") and "final" not in s and "train" not in s]
    assert stages[0] == "stage: seed (8 examples, paper prompts)"
    assert re.fullmatch(r"stage: round 1: extrapolate \d+ gold eval examples \(paper prompts\)", stages[1])
    assert len(stages) == 2
    seed = [r for r in llm.seen if "similar to" not in str(r.messages)]
    assert seed and all(r.prompt is None and len(r.messages) == 1 and r.messages[0][1] in
                        ("Write a negative movie review.", "Write a positive movie review.") for r in seed)
    assert read_json(tmp_path / "run" / "manifest.json")["split"]["demos"] == []


def test_a_stage_with_few_shot_prompts_only_gets_its_demonstrations_under_paper_style(tmp_path):
    """--prompt-style paper with a seed stage that has only a few-shot completion form: it is sent with its
    demonstrations from the gold eval (not the bare query), and the stage line says so."""
    import s3synth.method.loop as loop

    text = PAPER_ONLY.replace('    paper: "Write a {label_word} movie review."\n',
                              '    fewshot: {demo: "A {label_word} review: {text}",\n'
                              '              query: "A {label_word} review:"}\n')
    task = tmp_path / "spam.yaml"
    task.write_text(text)
    gold, _ = tiny_data(tmp_path, "imdb")
    said = []
    llm = QueuedLLM(fake_answer("imdb"))
    cfg = RunConfig(task=str(task), gold_eval=str(gold), learner="fake", seed_size=8, rounds=0, prompt_style="paper")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "info", said.append)
        S3(cfg, llm=llm).run(tmp_path / "run")
    assert "stage: seed (8 examples, fewshot prompts: completion with 4 demonstrations)" in said
    assert ("warning: stage seed: task spam has no paper prompt for it (prompts.seed.paper), so it sends its fewshot "
            "prompt: the few-shot form instead of the paper's template") in said
    seed = [r.prompt for r in llm.seen if r.prompt is not None]
    assert seed and all(p.count("\n\n") == 4 and p.endswith("review:") for p in seed)
    assert len(read_json(tmp_path / "run" / "manifest.json")["split"]["demos"]) == 4
