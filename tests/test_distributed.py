"""Data-parallel training of the Hugging Face learner (learners/distributed.py) on CPU with gloo.

A tiny random-init BERT (hidden 32, 2 layers, the packaged MiniLM tokenizer) on a separable toy set
(distinct words per label) keeps every run to seconds of training; most of the time is the start of
the worker processes. Dropout is off in the tiny model, so a single-process run and a data-parallel
run of the same recipe differ only by floating-point rounding: their losses and best epoch agree.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path


import pytest
from click.testing import CliRunner

from s3synth.cli import cli
from s3synth.data import Example
from s3synth.errors import S3Error
from s3synth.learners import TrainConfig, load_learner, make_learner
from s3synth.learners.distributed import env_world, merge_shares, split_batch
from s3synth.tasks import load_task

pytestmark = pytest.mark.usefixtures("quiet_single_thread")   # conftest.py

POS_WORDS = ["sunny", "bright", "golden", "cheerful", "warm", "happy", "glowing", "radiant"]
NEG_WORDS = ["rainy", "gloomy", "grey", "cold", "dark", "stormy", "bleak", "dreary"]
# lr 5e-3 brings the tiny model to a perfect gold eval by epoch 2 (measured); patience 3 runs all 4 epochs
RECIPE = {"epochs": 4, "lr": 5e-3, "batch_size": 8, "max_length": 32, "eval_batch_size": 16, "seed": 0}


def toy(n: int, seed: int) -> list[Example]:
    """Alternating labels; each text is 2-9 words drawn from its label's own vocabulary."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = POS_WORDS if label == "positive" else NEG_WORDS
        out.append(Example(" ".join(r.choice(words) for _ in range(r.randint(2, 9))), label, id=f"t{seed}-{i}"))
    return out


def write_jsonl(path: Path, examples) -> Path:
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A random-init BERT folder (config.json, model.safetensors, tokenizer) built from a config."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from s3synth.learners import minilm_path

    d = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def imdb():
    return load_task("imdb")


@pytest.fixture(scope="module")
def single(tiny_bert, imdb):
    """The reference: the same recipe in this process."""
    learner = make_learner("hf:" + tiny_bert, imdb, RECIPE)
    return learner, learner.fit(toy(64, 1), toy(32, 2))


def same_shape(a, b, where="") -> None:
    """Equal key sets at every level of two JSON-like values (lists compared item by item)."""
    assert type(a) is type(b) or (a is None) == (b is None) or isinstance(a, (int, float)), where
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        for k in a:
            same_shape(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and a and isinstance(a[0], (dict, list)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same_shape(x, y, f"{where}[{i}]")


def agree_with_single(history, single_history) -> None:
    same_shape(history, single_history)
    assert history["best_epoch"] == single_history["best_epoch"]
    assert history["train_examples"] == single_history["train_examples"] == 64
    for mine, ref in zip(history["epochs"], single_history["epochs"]):
        assert mine["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-2)   # rounding grows with the steps
        assert mine["accuracy"] == ref["accuracy"]


# ---------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("n, world", [(8, 2), (7, 2), (5, 3), (1, 2), (2, 4), (16, 4)])
def test_split_batch_covers_the_batch_once_and_weights_make_the_mean(n, world):
    idx = list(range(100, 100 + n))
    shares = [split_batch(idx, r, world) for r in range(world)]
    real = [s for s, w in shares if w]
    assert sorted(i for s in real for i in s) == idx                 # each example on exactly one rank
    assert max(map(len, real)) - min(map(len, real)) <= 1             # balanced
    for s, w in shares:
        if w:
            assert w == pytest.approx(len(s) * world / n)
        else:                                                         # an empty share: one example, weight 0
            assert s == idx[:1] and n < world


def test_split_batch_gradient_weights_reproduce_the_batch_mean():
    """The weighted per-rank means, averaged as DDP does, equal the plain mean of the batch."""
    losses = {i: float(i * i % 7) for i in range(11)}
    idx = list(range(11))
    for world in (2, 3, 4, 11, 13):
        avg = sum(w * sum(losses[i] for i in s) / len(s) for s, w in
                  (split_batch(idx, r, world) for r in range(world))) / world
        assert avg == pytest.approx(sum(losses.values()) / len(idx))


def test_merge_shares_inverts_the_strided_split():
    items = list("abcdefg")
    for world in (1, 2, 3, 8):
        assert merge_shares([items[r::world] for r in range(world)], len(items)) == items


def test_bad_options_and_environment_are_one_line_errors(monkeypatch):
    with pytest.raises(S3Error, match=r"workers=0"):
        TrainConfig(workers=0)
    with pytest.raises(S3Error, match=r"launcher='mpi'.*auto, spawn, ray"):
        TrainConfig(launcher="mpi")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(S3Error, match="WORLD_SIZE='two'"):
        env_world()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert env_world() == (2, 1, 0)


def test_only_rank_0_writes_the_model(single, tmp_path, monkeypatch):
    learner = single[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    learner.save(tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setenv("RANK", "0")
    learner.save(tmp_path / "rank0")
    assert (tmp_path / "rank0" / "model.safetensors").exists()


# ---------------------------------------------------------------- two gloo processes

@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tiny_bert, imdb, tmp_path):
    """workers=2: the learner spawns two gloo processes; the model comes back into this learner with the
    history of a single-process run (same shape, best epoch, losses) and a perfect toy accuracy. Per-example
    loss weights (as `--clean-labels` gives) travel to the workers and are split with each rank's share."""
    weights = [1.0 + (i % 3) / 2 for i in range(64)]
    ref = make_learner("hf:" + tiny_bert, imdb, RECIPE)
    ref_history = ref.fit(toy(64, 1), toy(32, 2), weights)
    learner = make_learner("hf:" + tiny_bert, imdb, {**RECIPE, "workers": 2, "launcher": "spawn"})
    history = learner.fit(toy(64, 1), toy(32, 2), weights)
    agree_with_single(history, ref_history)
    assert learner.history is history
    test = toy(40, 3)
    assert learner.evaluate(test)["accuracy"] == 1.0
    learner.save(tmp_path / "dp")
    ref.save(tmp_path / "single")
    meta = json.loads((tmp_path / "dp" / "s3synth_learner.json").read_text())
    same_shape(meta, json.loads((tmp_path / "single" / "s3synth_learner.json").read_text()))
    assert meta["config"]["workers"] == 2
    back = load_learner(tmp_path / "dp", imdb)
    assert [p.label for p in back.predict(test)] == [p.label for p in learner.predict(test)]


@pytest.mark.slow
def test_an_error_in_the_workers_is_one_line(tiny_bert, imdb):
    """A bad label is found by the workers (about 10 s of process start-up): the caller gets the S3Error."""
    learner = make_learner("hf:" + tiny_bert, imdb, {**RECIPE, "workers": 2, "launcher": "spawn"})
    with pytest.raises(S3Error, match="label 'maybe'"):
        learner.fit(toy(8, 1) + [Example("grey sunny", "maybe", id="bad")], toy(4, 2))


@pytest.mark.slow
def test_torchrun_two_processes_through_the_train_command(single, tiny_bert, tmp_path):
    """`torchrun --nproc_per_node 2 s3synth train ...`: the learner joins torchrun's gloo group; rank 0
    alone writes metrics.json and the model, shaped as a single-process `s3synth train` writes them."""
    train, ev, test = (write_jsonl(tmp_path / f"{n}.jsonl", toy(k, s))
                       for n, k, s in (("train", 64, 1), ("eval", 32, 2), ("test", 40, 3)))
    opts = [x for k, v in RECIPE.items() for x in ("--learner-option", f"{k}={v}")]
    args = ["train", "--task", "imdb", "--train", str(train), "--eval", str(ev), "--test", str(test),
            "--learner", "hf:" + tiny_bert, "-q", *opts]
    ref = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "single")])
    assert ref.exit_code == 0, ref.output
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "s3synth.cli", *args, "--out", str(tmp_path / "ddp")],
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("model and metrics:") == 1                  # rank 1 trained but reported nothing
    got = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    want = json.loads((tmp_path / "single" / "metrics.json").read_text())
    same_shape(got, want)
    agree_with_single(got["history"], want["history"])
    assert got["test"]["accuracy"] == 1.0
    assert sorted(os.listdir(tmp_path / "ddp" / "model")) == sorted(os.listdir(tmp_path / "single" / "model"))


@pytest.mark.slow
def test_ray_train_two_workers(single, tiny_bert, imdb):
    """launcher=ray: Ray Train's TorchTrainer runs the two gloo workers on a local Ray (127.0.0.1, 2 CPUs)."""
    ray = pytest.importorskip("ray", reason="Ray Train is not installed: pip install 's3synth[ray]'")
    pytest.importorskip("ray.train.torch", reason="Ray Train is not installed: pip install 's3synth[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        learner = make_learner("hf:" + tiny_bert, imdb, {**RECIPE, "workers": 2, "launcher": "ray"})
        history = learner.fit(toy(64, 1), toy(32, 2))
        agree_with_single(history, single[1])
        assert learner.evaluate(toy(40, 3))["accuracy"] == 1.0
    finally:
        if started:
            ray.shutdown()


def test_workers_do_not_change_the_learner_fingerprint(tmp_path):
    """workers/launcher say how the learner trains, not what it learns: a run resumed with workers=2 keeps
    its finished rounds (the stages' fingerprints hold the learner's other options only)."""
    from conftest import QueuedLLM
    from test_pipeline import tiny_data

    from s3synth.config import RunConfig
    from s3synth.method import S3

    gold, test = tiny_data(tmp_path, "imdb")
    keys = []
    for opts in ({}, {"workers": 2, "launcher": "spawn"}, {"epochs": 2}):
        s3 = S3(RunConfig(task="imdb", gold_eval=str(gold), learner="minilm", learner_options=opts),
                llm=QueuedLLM(lambda r: "x"))
        s3.prepare()
        keys.append(s3._learner_key())
    assert keys[0] == keys[1] and keys[0] != keys[2]


def test_executor_ray_trains_workers_on_ray_train(tmp_path):
    """--executor ray: a learner with workers > 1 launches them on Ray Train unless a launcher is named."""
    from conftest import QueuedLLM
    from test_pipeline import tiny_data

    from s3synth.config import RunConfig
    from s3synth.method import S3

    gold, _ = tiny_data(tmp_path, "imdb")
    got = {}
    for executor, opts in (("ray", {"workers": 2}), ("local", {"workers": 2}), ("ray", {"workers": 2, "launcher": "spawn"})):
        s3 = S3(RunConfig(task="imdb", gold_eval=str(gold), learner="minilm", executor=executor, learner_options=opts),
                llm=QueuedLLM(lambda r: "x"))
        s3.prepare()
        got[(executor, opts.get("launcher"))] = s3.train_config.launcher
    assert got == {("ray", None): "ray", ("local", None): "auto", ("ray", "spawn"): "spawn"}
