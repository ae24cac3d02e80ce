"""Quality levers beyond the paper: real labels in the final model, synthetic labels cleaned by confident
learning, and error mining by margin or loss (method/clean.py and the loop's use of them)."""

import random

import pytest
from conftest import QueuedLLM
from test_pipeline import WORDS, fake_answer, prepared, tiny_data

from s3synth.config import RunConfig
from s3synth.data import Example, Prediction
from s3synth.errors import S3Error
from s3synth.io import read_json, read_jsonl
from s3synth.learners import make_learner
from s3synth.method import S3
from s3synth.method.clean import clean_labels, fold_ids, margin, mine
from s3synth.tasks import load_task

POS = "great wonderful superb loved brilliant fine moving".split()
NEG = "awful boring terrible hated dull weak tedious".split()


def noisy_reviews(n=60, flip_every=10, seed=0):
    """n reviews whose words give their label away; every `flip_every`-th has its label flipped (the noise)."""
    rng = random.Random(seed)
    out, flipped = [], set()
    for i in range(n):
        lab = ["positive", "negative"][i % 2]
        words = POS if lab == "positive" else NEG
        text = f"A {rng.choice(words)} film, {rng.choice(words)} and {rng.choice(words)} throughout."
        if i % flip_every == 3:
            lab = "negative" if lab == "positive" else "positive"
            flipped.add(f"s-{i}")
        out.append(Example(text=text, label=lab, id=f"s-{i}"))
    return out, flipped


def test_folds_are_stratified_and_deterministic():
    labels = ["a"] * 10 + ["b"] * 5
    f = fold_ids(labels, 5, seed=1)
    assert f == fold_ids(labels, 5, seed=1) and f != fold_ids(labels, 5, seed=2)
    for k in range(5):     # every fold: 2 of "a", 1 of "b"
        assert [lab for lab, x in zip(labels, f) if x == k].count("a") == 2
        assert [lab for lab, x in zip(labels, f) if x == k].count("b") == 1


@pytest.mark.parametrize("learner", ["fake", "fast"])
def test_cleaning_finds_the_injected_label_noise(learner):
    task = load_task("imdb")
    data, flipped = noisy_reviews()
    c = clean_labels(data, task.label_names, "drop", lambda: make_learner(learner, task, {"seed": 0}), 5, 0)
    found = {r["id"] for r in c.rows}
    assert len(flipped) == 6
    # confident learning is conservative (per-label thresholds at the mean self-confidence): it finds at
    # least half of the noise here (fake: 3 of 6, fast: 4 of 6, measured) and nothing else
    assert len(found & flipped) >= 3, (found, flipped)
    assert found <= flipped
    assert {ex.id for ex in c.kept} == {ex.id for ex in data} - found and c.weights is None
    for r in c.rows:     # a flagged example's suggested label is the other one, with low self-confidence
        assert r["suggested"] != r["label"] and r["self_confidence"] < 0.5 and r["action"] == "drop"
    assert c.summary["flagged"] == len(found) and c.summary["share"] == pytest.approx(len(found) / 60, abs=1e-4)


def test_cleaning_by_weight_keeps_everything_and_weighs_the_suspects_down():
    task = load_task("imdb")
    data, flipped = noisy_reviews()
    c = clean_labels(data, task.label_names, "weight", lambda: make_learner("fake", task), 5, 0)
    assert [ex.id for ex in c.kept] == [ex.id for ex in data]
    w = dict(zip((ex.id for ex in c.kept), c.weights))
    flagged = {r["id"] for r in c.rows}
    assert flagged and all(w[i] < 0.5 for i in flagged) and all(w[i] == 1.0 for i in w if i not in flagged)
    assert all(r["action"] == "weight" and r["weight"] == pytest.approx(w[r["id"]], abs=1e-4) for r in c.rows)


def test_cleaning_skips_what_it_cannot_judge():
    task = load_task("imdb")
    data = [Example(text="great", label="positive", id="a"), Example(text="awful", label="negative", id="b"),
            Example(text="fine", label="positive", id="c")]
    c = clean_labels(data, task.label_names, "drop", lambda: make_learner("fake", task), 5, 0)
    assert c.kept == data and c.rows == [] and "nothing judged" in c.summary["skipped"]


def _pred(pos: float) -> Prediction:
    return Prediction(label="positive" if pos >= 0.5 else "negative", probs={"positive": pos, "negative": 1 - pos},
                      score=max(pos, 1 - pos))


def test_mining_rules_on_a_hand_worked_case():
    task = load_task("imdb")
    exs = [Example(text=f"t{i}", label=lab, id=f"g{i}") for i, lab in
           enumerate(["positive", "positive", "positive", "negative", "negative", "negative"])]
    #          p(positive): wrong(.30)  margin .10  sure(.95)  wrong(.80)  margin .02 (p neg .51)  sure(.05)
    preds = [_pred(p) for p in (0.30, 0.55, 0.95, 0.80, 0.49, 0.05)]
    assert [round(margin(e, p), 2) for e, p in zip(exs, preds)] == [-0.4, 0.1, 0.9, -0.6, 0.02, 0.9]
    mined, correct, info = mine(task, exs, preds, "misclassified")
    assert [e.id for e in mined] == ["g0", "g3"] and info["errors"] == 2 and mined[0].meta == {}
    assert [(e.id, round(c, 2)) for e, c in correct] == [("g1", 0.55), ("g2", 0.95), ("g4", 0.51), ("g5", 0.95)]
    mined, correct, info = mine(task, exs, preds, "margin", margin_max=0.2)
    assert [e.id for e in mined] == ["g0", "g1", "g3", "g4"]
    assert [e.meta["mined"] for e in mined] == ["error", "margin", "error", "margin"]
    assert [e.id for e, _ in correct] == ["g2", "g5"] and info["by_reason"] == {"error": 2, "margin": 2}
    mined, _, _ = mine(task, exs, preds, "margin", margin_max=0.05)
    assert [e.id for e in mined] == ["g0", "g3", "g4"]
    # loss = -log p(gold): g3 (.20), g0 (.30), g4 (.51), g1 (.55) ... ; a third of 6 -> the top 2
    mined, _, info = mine(task, exs, preds, "loss", share=1 / 3)
    assert [e.id for e in mined] == ["g0", "g3"] and info["mined"] == 2
    mined, _, _ = mine(task, exs, preds, "loss", share=0.5)
    assert [e.id for e in mined] == ["g0", "g3", "g4"]


def test_loss_mining_for_qa_uses_f1():
    task = load_task("adversarial_qa")
    exs = [Example(text="q", context="Anna built it in 1900.", answer={"text": t, "start": 0}, id=f"q{i}")
           for i, t in enumerate(["Anna", "1900", "Anna built"])]
    preds = [Prediction(answer="Anna", score=1.0), Prediction(answer="Anna", score=1.0),
             Prediction(answer="Anna", score=1.0)]
    mined, _, info = mine(task, exs, preds, "loss", share=0.34)   # ceil(1.02) = 2: F1 0 then F1 2/3
    assert [e.id for e in mined] == ["q1", "q2"] and info["errors"] == 2


def noisy_imdb(r):
    """fake_answer("imdb"), except that every fifth answer uses the other label's words (label noise)."""
    text = fake_answer("imdb")(r)
    if r.sample_index % 5 == 2 and text.startswith(" This movie was"):
        swap = {**dict(zip(WORDS["positive"], WORDS["negative"])), **dict(zip(WORDS["negative"], WORDS["positive"]))}
        text = " ".join(swap.get(w, w) for w in text.rstrip(".").split(" ")) + "."
    return text


def _run(tmp_path, name, **kw):
    gold, test = tiny_data(tmp_path, "imdb", n=48)
    cfg = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=20, rounds=1,
                    **kw)
    out = tmp_path / name
    res = S3(cfg, llm=QueuedLLM(noisy_imdb)).run(out)
    return cfg, out, res


def test_final_train_with_gold_is_exactly_seed_added_and_mining_gold(tmp_path):
    cfg, out, res = _run(tmp_path, "plus", method="s3+gold", gold_weight=3.0)
    s3 = prepared(cfg)
    held = {ex.id for ex in s3.holdout}
    mining_gold = [ex.id for ex in s3.gold if ex.id not in held]
    seed = [e["id"] for e in read_jsonl(out / "seed.jsonl")]
    added = [e["id"] for e in read_jsonl(out / "round-1/added.jsonl")]
    train = [e["id"] for e in read_jsonl(out / "final/train.jsonl")]
    assert train == seed + added + mining_gold and set(mining_gold).isdisjoint(held)
    final = read_json(out / "final/metrics.json")
    assert final["parts"] == {"synthetic": len(seed) + len(added), "gold": len(mining_gold), "gold_weight": 3.0}
    assert final["reused_model_of"] is None and final["train_size"] == len(train)
    # the same seed and rounds as the paper's S3 (shared fingerprints up to the final stage)
    _, plain, _ = _run(tmp_path, "plain", final_train="synthetic")
    assert read_jsonl(plain / "round-1/added.jsonl") == read_jsonl(out / "round-1/added.jsonl")
    assert [e["id"] for e in read_jsonl(plain / "final/train.jsonl")] == seed + added
    # the default (auto) is synthetic+gold for a synthesizing method, chosen by the quality grid
    cfg_auto, auto, _ = _run(tmp_path, "auto")
    assert cfg_auto.final_train == "auto" and cfg_auto.final_with_gold
    assert [e["id"] for e in read_jsonl(auto / "final/train.jsonl")] == seed + added + mining_gold


def test_final_train_auto_resolves_per_method(tmp_path):
    gold, test = tiny_data(tmp_path, "imdb")
    def cfg(**kw):
        return RunConfig(task="imdb", gold_eval=str(gold), **kw)
    assert cfg(method="s3").final_with_gold                    # the lever the quality grid adopted
    assert not cfg(method="zerogen").final_with_gold           # the paper's baselines train as the paper's table
    assert cfg(method="zerogen", final_train="synthetic+gold").final_with_gold
    assert not cfg(method="s3", final_train="synthetic").final_with_gold
    assert not cfg(method="gold").final_with_gold              # gold trains on the gold already
    assert cfg(method="s3+gold", final_train="synthetic").final_with_gold   # the method's name wins


def test_gold_weight_reaches_the_learner(tmp_path, monkeypatch):
    from fake_plugins import FakeLearner

    seen = []
    orig = FakeLearner.fit

    def spy(self, train, eval=None, weights=None):
        seen.append((len(train), None if weights is None else list(weights)))
        return orig(self, train, eval, weights)

    monkeypatch.setattr(FakeLearner, "fit", spy)
    cfg, out, _ = _run(tmp_path, "w", final_train="synthetic+gold", gold_weight=2.5)
    n_syn = read_json(out / "final/metrics.json")["parts"]["synthetic"]
    n, w = seen[-1]
    assert w == [1.0] * n_syn + [2.5] * (n - n_syn)
    assert seen[0][1] is None            # the round's model trains unweighted on synthetic data only


def test_clean_labels_drop_in_the_loop(tmp_path):
    cfg, out, res = _run(tmp_path, "clean", clean_labels="drop", clean_with="learner", clean_folds=3,
                         final_train="synthetic")
    r1 = read_json(out / "round-1/metrics.json")
    rows = read_jsonl(out / "round-1/cleaned.jsonl")
    assert r1["cleaning"]["flagged"] == len(rows) > 0 and r1["cleaning"]["mode"] == "drop"
    assert r1["train_size"] == 20 - len(rows)
    final = read_json(out / "final/metrics.json")
    dropped = {r["id"] for r in read_jsonl(out / "final/cleaned.jsonl")}
    train = {e["id"] for e in read_jsonl(out / "final/train.jsonl")}
    assert train.isdisjoint(dropped) and final["cleaning"]["flagged"] == len(dropped)
    assert final["train_size"] == 20 + res["added"] - len(dropped)
    # the settings are part of the round's fingerprint: the same run without cleaning trains again
    fp = read_json(out / "manifest.json")["stages"]["round-1/train"]["fingerprint"]
    S3(RunConfig(**{**cfg.__dict__, "clean_labels": "none"}), llm=QueuedLLM(noisy_imdb)).run(out)
    assert read_json(out / "manifest.json")["stages"]["round-1/train"]["fingerprint"] != fp
    assert read_json(out / "round-1/metrics.json")["train_size"] == 20 and "cleaning" not in read_json(
        out / "round-1/metrics.json")


def test_mine_margin_in_the_loop_extrapolates_the_near_misses(tmp_path):
    _, out, _ = _run(tmp_path, "margin", mine="margin", mine_margin=0.9999, balance="none")
    r1 = read_json(out / "round-1/metrics.json")
    sources = read_jsonl(out / "round-1/sources.jsonl")
    assert r1["mined"] == len(sources) >= r1["errors"]
    assert r1["mine"]["rule"] == "margin" and r1["mine"]["by_reason"].get("margin", 0) == r1["mined"] - r1["errors"]
    added = read_jsonl(out / "round-1/added.jsonl")
    assert {a["meta"].get("mined") for a in added} <= {"error", "margin"}


def test_test_seed_fixes_the_test_subsample(tmp_path):
    gold, test = tiny_data(tmp_path, "imdb", n=48)
    ids = []
    for seed in (1, 2):
        cfg = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", method="gold",
                        seed=seed, max_test=4, test_seed=7)
        s3 = prepared(cfg)
        ids.append([ex.id for ex in s3.test])
    assert ids[0] == ids[1] and len(ids[0]) == 4
    cfg = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", method="gold", seed=2,
                    max_test=4, test_seed=8)
    assert [ex.id for ex in prepared(cfg).test] != ids[0]       # another test seed, another subsample


@pytest.mark.parametrize("kw, msg", [
    ({"method": "gold", "final_train": "synthetic+gold"}, "--final-train"),
    ({"gold_weight": 0}, "--gold-weight"),
    ({"clean_folds": 1}, "--clean-folds"),
    ({"mine_share": 0}, "--mine-share"),
    ({"clean_labels": "sometimes"}, "--clean-labels"),
])
def test_bad_quality_settings_are_one_line_errors(tmp_path, kw, msg):
    gold, test = tiny_data(tmp_path, "imdb")
    with pytest.raises(S3Error, match=msg):
        RunConfig(task="imdb", gold_eval=str(gold), **kw)


def test_qa_refuses_label_cleaning_and_margin_mining_before_writing(tmp_path):
    gold, test = tiny_data(tmp_path, "adversarial_qa")
    for kw, msg in (({"clean_labels": "drop"}, "no label to judge"), ({"mine": "margin"}, "label probabilities")):
        cfg = RunConfig(task="adversarial_qa", gold_eval=str(gold), learner="fake", **kw)
        with pytest.raises(S3Error, match=msg):
            S3(cfg, llm=QueuedLLM(lambda r: "x")).run(tmp_path / "qa")
        assert not (tmp_path / "qa").exists()


def test_weights_need_a_learner_that_takes_them(tmp_path, monkeypatch):
    from fake_plugins import FakeLearner

    def fit(self, train, eval=None):
        raise AssertionError("not reached")

    monkeypatch.setattr(FakeLearner, "fit", fit)
    gold, test = tiny_data(tmp_path, "imdb")
    cfg = RunConfig(task="imdb", gold_eval=str(gold), learner="fake", clean_labels="weight", clean_with="learner")
    with pytest.raises(S3Error, match="does not take example weights"):
        prepared(cfg)


@pytest.mark.parametrize("kind", ["cls", "qa"])
def test_hf_weighted_loss_matches_the_models_own_loss(kind):
    """All weights 1: the model's own (mean) loss; a weight of 0 leaves that example out of the gradient."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

    from s3synth.learners.hf import HFLearner

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, num_labels=2)
    model = (BertForSequenceClassification if kind == "cls" else BertForQuestionAnswering)(cfg).eval()
    ids = torch.randint(1, 50, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    targets = ({"labels": torch.tensor([0, 1, 1, 0])} if kind == "cls" else
               {"start_positions": torch.tensor([1, 2, 5, 0]), "end_positions": torch.tensor([3, 2, 6, 0])})
    own = model(**batch, **targets).loss
    same = HFLearner._loss(model, {**batch, **targets}, [1.0] * 4, 1.0)
    assert same.item() == pytest.approx(own.item(), rel=1e-5)
    # doubling every weight with the mean weight doubled too: unchanged
    assert HFLearner._loss(model, {**batch, **targets}, [2.0] * 4, 2.0).item() == pytest.approx(own.item(), rel=1e-5)
    # the first example weighs 0: the loss of the other three, over 4 x mean weight
    pick = {k: v[1:] for k, v in targets.items()}
    rest = model(**{k: v[1:] for k, v in batch.items()}, **pick).loss
    got = HFLearner._loss(model, {**batch, **targets}, [0.0, 1.0, 1.0, 1.0], 1.0)
    assert got.item() == pytest.approx(rest.item() * 3 / 4, rel=1e-5)


def test_report_shows_cleaning_and_the_final_training_parts(tmp_path):
    from s3synth.report import write_report

    _, out, _ = _run(tmp_path, "rep", method="s3+gold", clean_labels="drop", clean_with="learner", clean_folds=3)
    paths = write_report(out, embed=None)
    html = paths["html"].read_text() if "html" in paths else (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    flagged = [r["id"] for r in read_jsonl(out / "final/cleaned.jsonl")]
    assert flagged
    assert 'id="cleaning"' in html and "round 1" in html and "final" in html
    assert all(f">{i} ·" in html or f"{i} ·" in html for i in flagged[:3])
    parts = read_json(out / "final/metrics.json")["parts"]
    assert f"{parts['synthetic']} synthetic + {parts['gold']} real gold-eval examples" in html
    assert f"final set (with {parts['gold']} real)" in html       # the label-balance chart says so too
    assert "Synthetic labels cleaned" in md and f"trained on {parts['synthetic']} synthetic" in md
