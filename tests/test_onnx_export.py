"""`s3synth export-model --format onnx`: fp32 parity with PyTorch, int8, predict.py without torch, errors.

The models are tiny BERTs built from a config in the test (2 layers, hidden size 32, random weights) with
the shipped MiniLM tokenizer, fine-tuned one epoch on a handful of examples by the real HFLearner and
saved by its save(), as a run does into RUN/final/model. Each export takes a few seconds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path


import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from click.testing import CliRunner

from s3synth import progress
from s3synth.cli import cli
from s3synth.data import Example
from s3synth.errors import S3Error
from s3synth.learners import TrainConfig, minilm_path
from s3synth.learners.hf import HFLearner
from s3synth.serve import onnx_export
from s3synth.serve.onnx_export import export_onnx
from s3synth.serve.onnx_predict import OnnxModel
from s3synth.tasks import load_task

CFG = {"epochs": 1, "max_length": 48, "doc_stride": 8, "batch_size": 4, "precision": "fp32", "device": "cpu"}

SINGLE = [Example("a wonderful film, I loved it", "positive"), Example("great acting and a lovely story", "positive"),
          Example("brilliant and moving", "positive"), Example("a terrible film, I hated it", "negative"),
          Example("awful acting and a dull story", "negative"), Example("boring and stupid", "negative")]
PAIR = [Example("The company hired engineers.", "entailment", context="The company hired forty engineers in Berlin."),
        Example("The company fired engineers.", "not_entailment", context="The company hired forty engineers in Berlin."),
        Example("Anna bought a bicycle.", "entailment", context="Anna bought a red bicycle near the river."),
        Example("Anna sold a car.", "not_entailment", context="Anna bought a red bicycle near the river.")]
LONG = ("The old harbour town holds a music festival every summer, and people come from far away to hear it. " * 6
        + "The lighthouse was built in 1871 by the engineer Maria Olsen. "
        + "Fishing boats leave before dawn and return in the afternoon with their catch. " * 4)
QA = [Example("Who built the lighthouse?", context=LONG, answer={"text": "Maria Olsen", "start": LONG.index("Maria")}),
      Example("When was the lighthouse built?", context=LONG, answer={"text": "1871", "start": LONG.index("1871")}),
      Example("Where was Marie Curie born?", context="Marie Curie was born in Warsaw and later moved to Paris.",
              answer={"text": "Warsaw", "start": 24})]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    progress.set_quiet(True)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128)
    BertModel(config).save_pretrained(d)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(d)
    return d


def make_run(root: Path, task_name: str, train, encoder) -> tuple[Path, HFLearner]:
    """A run directory holding what export-model reads: manifest.json, final/train.jsonl, final/model/."""
    task = load_task(task_name)
    lrn = HFLearner(task, TrainConfig(**CFG), model_path=str(encoder))
    lrn.fit(train)
    run = root / f"run-{task_name}"
    lrn.save(run / "final" / "model")
    (run / "manifest.json").write_text(json.dumps({"stages": {"final": {"finished": True}}}), encoding="utf-8")
    (run / "final" / "train.jsonl").write_text(
        "".join(json.dumps({"text": e.text, "label": e.label, "context": e.context}) + "\n" for e in train),
        encoding="utf-8")
    return run, lrn


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_encoder):
    return make_run(tmp_path_factory.mktemp("single"), "imdb", SINGLE, tiny_encoder)


@pytest.fixture(scope="module")
def single_export(single_run):
    """The command line on a run directory, with int8."""
    run, _ = single_run
    res = CliRunner().invoke(cli, ["export-model", str(run), "--format", "onnx", "--quantize", "int8"])
    assert res.exit_code == 0, res.output
    return run / "export" / "onnx", res.output


def test_classification_export_matches_pytorch_and_int8_predicts_label_names(single_run, single_export):
    _run, lrn = single_run
    out, output = single_export
    assert "fp32 vs PyTorch" in output and str(out) in output
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "config.json", "predict.py", "README.md",
                 "s3synth_onnx.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "s3synth_onnx.json").read_text())
    assert meta["labels"] == ["negative", "positive"] and meta["kind"] == "single"
    assert meta["per_channel"] is True                                          # the int8 default
    assert meta["check"]["fp32"]["max_abs_diff"] <= 1e-4
    assert meta["check"]["fp32"]["probes"] > len(onnx_export.PROBES["single"])   # the run's examples were added
    texts = [e.text for e in SINGLE] + ["fine", "an utterly forgettable evening " * 30]   # the last is truncated
    ref = lrn.predict([Example(t) for t in texts])
    fp32 = OnnxModel(out, model="fp32").classify(texts, batch_size=3)          # dynamic batch and length
    for r, got in zip(ref, fp32):
        assert got["label"] == r.label
        assert max(abs(got["probs"][k] - v) for k, v in r.probs.items()) < 1e-4
    int8 = OnnxModel(out).classify(texts)
    assert OnnxModel(out).model == "int8"
    assert {row["label"] for row in int8} <= {"negative", "positive"}
    assert all(abs(sum(row["probs"].values()) - 1) < 1e-6 for row in int8)
    assert (out / "model.int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 2
    assert "predict.py" in (out / "README.md").read_text()


def test_predict_py_runs_without_torch(single_export):
    out, _ = single_export
    # torch and transformers made unimportable: predict.py needs onnxruntime, tokenizers and numpy only
    code = ("import sys, runpy; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            f"sys.argv = ['predict.py', 'a wonderful film', 'a dull film', '--threads', '1']; "
            f"runpy.run_path({str(out / 'predict.py')!r}, run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, cwd=out)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["a wonderful film", "a dull film"]
    assert all(r["label"] in ("negative", "positive") and set(r["probs"]) == {"negative", "positive"} for r in rows)
    direct = subprocess.run([sys.executable, str(out / "predict.py"), "--model", "fp32", "a wonderful film"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["label"] in ("negative", "positive")


@pytest.fixture(scope="module")
def pair_export(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("pair")
    run, lrn = make_run(root, "rte", PAIR, tiny_encoder)
    return export_onnx(run, root / "rte-onnx"), lrn


def reuse_graph(monkeypatch, graph: Path) -> None:
    """export-model writes a copy of `graph` instead of exporting again (saves an export in tests about the
    folder, not the graph); the parity check still runs on it."""
    import shutil

    monkeypatch.setattr(onnx_export, "export_graph", lambda model, names, kind, example, path: shutil.copyfile(graph, path))


def test_pair_export_matches_learner(pair_export):
    info, lrn = pair_export
    out = Path(info["out"])
    assert info["files"] == {"fp32": "model.onnx"} and not (out / "model.int8.onnx").exists()
    assert "token_type_ids" in info["inputs"]
    ref = lrn.predict(PAIR)
    got = OnnxModel(out).classify([e.text for e in PAIR], [e.context for e in PAIR])
    for r, g in zip(ref, got):
        assert g["label"] == r.label
        assert max(abs(g["probs"][k] - v) for k, v in r.probs.items()) < 1e-4
    with pytest.raises(ValueError, match="pair task"):
        OnnxModel(out).classify(["no context"])


def test_qa_export_matches_learner_over_windows(tmp_path, tiny_encoder):
    run, lrn = make_run(tmp_path, "adversarial_qa", QA, tiny_encoder)
    info = export_onnx(run, quantize="int8")
    out = Path(info["out"])
    assert out == run / "export" / "onnx"
    assert info["outputs"] == ["start_logits", "end_logits"] and info["doc_stride"] == 8
    m = OnnxModel(out, model="fp32")
    assert len(m._windows(QA[0].text, QA[0].context)) > 2           # the long passage spans several windows
    ref = lrn.predict(QA)
    got = m.answer([e.text for e in QA], [e.context for e in QA])
    for e, r, g in zip(QA, ref, got):
        assert g["answer"] == r.answer and abs(g["score"] - r.score) < 1e-3
        assert e.context[g["start"]:g["end"]] == g["answer"]
    int8 = OnnxModel(out).answer([e.text for e in QA], [e.context for e in QA])
    assert all(isinstance(a["answer"], str) and a["answer"] in e.context for a, e in zip(int8, QA))
    p = subprocess.run([sys.executable, str(out / "predict.py"), QA[2].text, "--context", QA[2].context],
                       check=False, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["answer"] in QA[2].context
    no_ctx = subprocess.run([sys.executable, str(out / "predict.py"), "who?"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert no_ctx.returncode == 2 and "--context" in no_ctx.stderr


# ------------------------------------------------------------------ errors

def one_line_error(args) -> str:
    res = CliRunner().invoke(cli, ["export-model", *args])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("s3synth: error:"), res.output
    return lines[0]


def test_existing_out_is_refused_unless_force(single_run, single_export, tmp_path, monkeypatch):
    run, _ = single_run
    out, _ = single_export
    reuse_graph(monkeypatch, out / "model.onnx")
    before = (out / "s3synth_onnx.json").read_text()
    assert "--force" in one_line_error([str(run)])
    assert (out / "s3synth_onnx.json").read_text() == before
    res = CliRunner().invoke(cli, ["export-model", str(run), "--force"])      # an earlier export is replaced
    assert res.exit_code == 0, res.output
    assert json.loads((out / "s3synth_onnx.json").read_text())["files"] == {"fp32": "model.onnx"}
    assert not (out / "model.int8.onnx").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]    # no temp folder left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "not an s3synth ONNX export" in one_line_error([str(run), "--out", str(other), "--force"])
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("given, model", [("run", "run/final/model"), ("gold", "gold/model"), ("m", "m")])
def test_the_default_out_is_the_one_help_names(tmp_path, monkeypatch, given, model):
    """Without --out the export goes where `export-model --help` says: RUN_DIR/export/onnx for a run directory
    and for the --out of `s3synth train` alike; MODEL_DIR-onnx beside a model folder given itself."""
    monkeypatch.chdir(tmp_path)
    Path(model).mkdir(parents=True)
    (Path(model) / "s3synth_learner.json").write_text('{"learner": "minilm", "kind": "single", "labels": ["a", "b"]}')
    if given == "run":
        (tmp_path / "run" / "manifest.json").write_text("{}")
    out = {"m": Path("m-onnx")}.get(given, Path(given) / "export" / "onnx")
    out.mkdir(parents=True)
    (out / "s3synth_onnx.json").write_text("{}")          # an earlier export there: refused without --force
    msg = f"s3synth: error: --out {out}: exists; add --force to replace it, or give another --out"
    assert one_line_error([given]) == msg
    help_text = " ".join(CliRunner().invoke(cli, ["export-model", "--help"]).output.split())
    assert ("--out PATH Output folder; default: RUN_DIR/export/onnx for a run directory or the --out of `s3synth "
            "train`; for a model folder given itself, MODEL_DIR-onnx beside it.") in help_text


def test_unfinished_run_and_missing_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("{}")
    msg = one_line_error([str(run)])
    assert "no final model yet" in msg and "s3synth run" in msg
    assert "not found" in one_line_error([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    assert "neither an s3synth run directory" in one_line_error([str(tmp_path / "empty")])
    assert not (run / "export").exists()


def test_fast_learner_is_refused_in_one_line(tmp_path):
    from s3synth.learners.fast import FastLearner

    lrn = FastLearner(load_task("imdb"), TrainConfig())
    lrn.classes, lrn.C = ["negative", "positive"], 1.0
    lrn.coef, lrn.intercept = np.zeros((1, 384)), np.zeros(1)
    lrn.save(tmp_path / "run" / "final" / "model")
    (tmp_path / "run" / "manifest.json").write_text("{}")
    msg = one_line_error([str(tmp_path / "run")])
    assert "fast" in msg and "--learner minilm" in msg


def test_missing_packages_name_the_extra(single_run, tmp_path, monkeypatch):
    run, _ = single_run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # `import onnxruntime` now raises ImportError
    msg = one_line_error([str(run), "--out", str(tmp_path / "x")])
    assert "pip install 's3synth[onnx]'" in msg and "onnxruntime" in msg
    assert not (tmp_path / "x").exists()


def test_a_mismatching_export_writes_nothing(single_run, single_export, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    run, _ = single_run
    # a broken export: the right graph with the classifier's bias moved by 0.01
    graph = onnx.load(str(single_export[0] / "model.onnx"))
    bias = next(t for t in graph.graph.initializer if "classifier" in t.name and "bias" in t.name)
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
    onnx.save(graph, str(tmp_path / "broken.onnx"))
    reuse_graph(monkeypatch, tmp_path / "broken.onnx")
    (tmp_path / "out").mkdir()
    with pytest.raises(S3Error, match="differ from PyTorch's .* nothing was written"):
        export_onnx(run, tmp_path / "out" / "bad")
    assert list((tmp_path / "out").iterdir()) == []            # neither the folder nor its temp folder
