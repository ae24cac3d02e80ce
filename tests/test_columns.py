"""Your own names, in and out: `--columns FIELD=COLUMN,...` reads any data source under the user's column names
(the task's `fields` stay the default), and the rows a run writes for its user (final/train.jsonl, `s3synth
export`) carry the task's field names, so that they read back as data of the same task; old run directories,
written with the fields' own names, still resume, report and export."""

import csv
import json

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from test_pipeline import fake_answer, tiny_data

from s3synth import progress
from s3synth.cli import cli
from s3synth.config import RunConfig
from s3synth.data import (Example, content_sha256, example_from_row, example_row, file_sha256, load_contexts,
                          load_examples, parse_columns, row_names)
from s3synth.errors import DataError, S3Error
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.report.export import export_run
from s3synth.tasks import load_task

IMDB, RTE, QA = load_task("imdb"), load_task("rte"), load_task("adversarial_qa")
TICKETS = {"text": "body", "label": "priority"}


def renamed(rows, names):
    return [{names.get(k, k): v for k, v in r.items()} for r in rows]


def write_rows(path, rows):
    """`rows` as a JSON Lines, CSV or Parquet file by `path`'s suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


ROWS = [{"ticket": "T1", "text": "A wonderful, moving film.", "label": "positive"},
        {"ticket": "T2", "text": "Dull and far too long.", "label": "negative"},
        {"ticket": "T3", "text": "I loved every minute.", "label": "positive"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_columns_read_the_users_names_in_every_format(tmp_path, suffix):
    own = write_rows(tmp_path / f"own{suffix}", ROWS)
    user = write_rows(tmp_path / f"user{suffix}", renamed(ROWS, TICKETS))
    want = load_examples(own, IMDB, id_prefix="gold")
    got = load_examples(user, IMDB, id_prefix="gold", columns=parse_columns("text=body, label=priority"))
    assert [e.to_dict() for e in got] == [e.to_dict() for e in want]
    assert [(e.id, e.text, e.label) for e in got] == [
        (f"gold-{i + (2 if suffix == '.csv' else 1)}", r["text"], r["label"]) for i, r in enumerate(ROWS)]
    assert content_sha256(got) == content_sha256(want)
    # id too, and the pair task's context; the task's own names are the default for the fields left out
    got = load_examples(user, IMDB, columns={"text": "body", "label": "priority", "id": "ticket"})
    assert [e.id for e in got] == ["T1", "T2", "T3"]


def test_columns_for_pair_qa_and_context_pools(tmp_path):
    rte = write_rows(tmp_path / "rte.csv", [{"claim": "There are 3 bridges.", "passage": "The town has 3 bridges.",
                                             "label": "entailment"}])
    ex, = load_examples(rte, RTE, columns={"text": "claim", "context": "passage"})
    assert (ex.text, ex.context, ex.label) == ("There are 3 bridges.", "The town has 3 bridges.", "entailment")
    qa = write_rows(tmp_path / "qa.jsonl", [{"q": "Who built it?", "doc": "Anna built it in 1900.",
                                             "gold": {"text": ["Anna"], "answer_start": [0]}}])
    ex, = load_examples(qa, QA, columns={"text": "q", "context": "doc", "answers": "gold"})
    assert (ex.text, ex.context, ex.answer) == ("Who built it?", "Anna built it in 1900.", {"text": "Anna", "start": 0})
    # a context pool reads the fields it needs: the mapping of the text does not have to be there
    pool = write_rows(tmp_path / "pool.jsonl", [{"passage": "A river runs through it."}])
    assert load_contexts(pool, RTE, columns={"text": "claim", "context": "passage"}) == [
        {"context": "A river runs through it."}]


@pytest.mark.parametrize("columns, words", [
    ({"text": "bdy"}, "--columns text=bdy: no column 'bdy'; its columns: ticket, body, priority"),
    ({"txt": "body"}, "--columns txt=body: 'txt' is not a field of task imdb (single task: text, label, id); "
                      "its columns: ticket, body, priority"),
    ({"context": "body"}, "--columns context=body: 'context' is not a field of task imdb (single task: text, "
                          "label, id); its columns: ticket, body, priority"),
])
def test_columns_that_do_not_fit_the_data_or_the_task(tmp_path, columns, words):
    p = write_rows(tmp_path / "user.csv", renamed(ROWS, TICKETS))
    with pytest.raises(DataError) as ei:
        load_examples(p, IMDB, columns=columns)
    assert str(ei.value) == f"{p}: {words}"


@pytest.mark.parametrize("value, words", [
    ("text", "'text' is not FIELD=COLUMN"),
    ("text=body,=priority", "'=priority' is not FIELD=COLUMN"),
    ("text=body,text=title", "field 'text' is mapped twice"),
])
def test_malformed_columns_are_refused_by_name(value, words):
    with pytest.raises(S3Error) as ei:
        RunConfig(task="imdb", gold_eval="g.csv", columns=value)
    assert str(ei.value) == (f"--columns {value!r}: {words}; write FIELD=COLUMN[,FIELD=COLUMN...], e.g. "
                             "--columns text=body,label=priority")


@pytest.mark.parametrize("columns, words", [
    ("text=bdy,label=priority", "--columns text=bdy: no column 'bdy'; its columns: ticket, body, priority"),
    ("txt=body", "--columns txt=body: 'txt' is not a field of task imdb"),
    ("text:body", "--columns 'text:body': 'text:body' is not FIELD=COLUMN"),
])
def test_cli_bad_columns_one_line_exit_2_nothing_written(tmp_path, columns, words):
    gold = write_rows(tmp_path / "user.csv", renamed(ROWS, TICKETS))
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--task", "imdb", "--gold-eval", str(gold), "--columns", columns,
                                 "--llm", "echo:m", "--learner", "fake", "--out", str(out)])
    err = r.stderr.strip()
    assert r.exit_code == 2 and len(err.splitlines()) == 1 and words in err, r.output
    assert not out.exists()


def run_tiny(tmp_path, name, gold, test, **kw):
    cfg = RunConfig(task=kw.pop("task", "imdb"), gold_eval=str(gold), test=str(test), learner="fake", seed_size=16,
                    rounds=1, holdout_frac=0.25, **kw)
    out = tmp_path / name
    res = S3(cfg, llm=QueuedLLM(fake_answer("imdb"))).run(out)
    return out, res


def test_a_run_on_renamed_columns_is_the_run_on_the_tasks_names(tmp_path):
    """The fingerprints follow the loaded content: the same rows under the user's column names (a CSV, with
    --columns) give the same stages, fingerprints and outputs as under the task's names."""
    gold, test = tiny_data(tmp_path, "imdb")
    own_gold, own_test = (write_rows(tmp_path / f"own_{p.stem}.csv", read_jsonl(p)) for p in (gold, test))
    user_gold, user_test = (write_rows(tmp_path / f"user_{p.stem}.csv", renamed(read_jsonl(p), TICKETS))
                            for p in (gold, test))
    a, res_a = run_tiny(tmp_path, "own", own_gold, own_test)
    b, res_b = run_tiny(tmp_path, "user", user_gold, user_test, columns="text=body,label=priority")
    ma, mb = read_json(a / "manifest.json"), read_json(b / "manifest.json")
    assert {k: v["fingerprint"] for k, v in mb["stages"].items()} == {
        k: v["fingerprint"] for k, v in ma["stages"].items()}
    assert set(ma["stages"]) == {"rationales", "seed", "round-1/train", "round-1/extrapolate", "final"}
    assert mb["inputs"]["gold_eval"]["content_sha256"] == ma["inputs"]["gold_eval"]["content_sha256"]
    assert mb["inputs"]["gold_eval"]["sha256"] != ma["inputs"]["gold_eval"]["sha256"]     # the files differ
    for f in ("seed.jsonl", "round-1/errors.jsonl", "round-1/added.jsonl", "final/train.jsonl",
              "final/predictions.jsonl"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert res_a["final"]["test"] == res_b["final"]["test"]
    # `s3synth train` takes --columns for --train and --test alike
    for name, files, extra in (("own", (own_gold, own_test), []),
                               ("user", (user_gold, user_test), ["--columns", "text=body,label=priority"])):
        r = CliRunner().invoke(cli, ["train", "--task", "imdb", "--train", str(files[0]), "--test", str(files[1]),
                                     "--learner", "fake", "--out", str(tmp_path / f"train-{name}"), "-q", *extra])
        assert r.exit_code == 0, r.output
    ta, tb = (read_json(tmp_path / f"train-{name}/metrics.json") for name in ("own", "user"))
    for k in ("seconds", "inputs"):         # the time taken; the files (paths and sha256) differ
        ta.pop(k, None), tb.pop(k, None)
    assert ta == tb and ta["test"]["n"] == 8
    assert (tmp_path / "train-own/test/predictions.jsonl").read_bytes() == (
        tmp_path / "train-user/test/predictions.jsonl").read_bytes()


def test_a_run_directory_of_an_earlier_version_still_resumes(tmp_path, monkeypatch):
    """An earlier version fingerprinted the input files' sha256 and recorded only those in manifest.json: such
    a run directory keeps its fingerprints, so the same command redoes nothing."""
    gold, test = tiny_data(tmp_path, "imdb")
    with monkeypatch.context() as mp:       # as the earlier version did: {input: the file's sha256}
        mp.setattr(S3, "_input_keys", lambda self, m: {"gold_eval": file_sha256(gold), "test": file_sha256(test)})
        out, _ = run_tiny(tmp_path, "old", gold, test)
    m = read_json(out / "manifest.json")
    for v in m["inputs"].values():
        v.pop("content_sha256", None)
    (out / "manifest.json").write_text(json.dumps(m))
    before = read_json(out / "manifest.json")["stages"]
    llm = QueuedLLM(lambda r: pytest.fail("nothing should be asked again"))
    S3(RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1,
                 holdout_frac=0.25), llm=llm).run(out)
    after = read_json(out / "manifest.json")
    assert after["stages"] == before and not llm.seen
    assert "content_sha256" not in after["inputs"]["gold_eval"]


def tickets_task(tmp_path):
    """imdb with the user's names: fields text -> message, label -> priority."""
    from importlib import resources

    text = resources.files("s3synth.tasks").joinpath("builtin", "imdb.yaml").read_text(encoding="utf-8")
    text = text.replace("name: imdb", "name: tickets").replace("fields: {text: text, label: label}",
                                                               "fields: {text: message, label: priority}")
    p = tmp_path / "tickets.yaml"
    p.write_text(text, encoding="utf-8")
    assert load_task(p).fields == {"text": "message", "label": "priority"}
    return p


def test_a_run_writes_and_reads_back_the_tasks_own_names(tmp_path):
    task = tickets_task(tmp_path)
    gold, test = tiny_data(tmp_path, "imdb")
    user_gold, user_test = (write_rows(tmp_path / f"t_{p.stem}.jsonl",
                                       renamed(read_jsonl(p), {"text": "message", "label": "priority"}))
                            for p in (gold, test))
    out, res = run_tiny(tmp_path, "run", user_gold, user_test, task=str(task))
    train = read_jsonl(out / "final/train.jsonl")
    assert len(train) == res["final"]["train_size"]
    assert all(set(d) <= {"id", "message", "priority", "meta"} and "message" in d for d in train)
    seed = read_jsonl(out / "seed.jsonl")          # the run's own files keep the fields' own names
    assert [example_row(example_from_row(d, load_task(task)), load_task(task)) for d in seed] == train[:len(seed)]
    where, n = export_run(out, "jsonl", tmp_path / "export.jsonl")
    rows = read_jsonl(where)
    assert n == res["final"]["parts"]["synthetic"] and list(rows[0]) == [
        "id", "message", "priority", "stage", "round", "source_id"]
    assert [(r["id"], r["message"], r["priority"]) for r in rows] == [
        (d["id"], d["message"], d["priority"]) for d in train[:n]]
    # fed back to the same task: `s3synth train` reads both
    for data in (out / "final/train.jsonl", where):
        r = CliRunner().invoke(cli, ["train", "--task", str(task), "--train", str(data), "--test", str(user_test),
                                     "--learner", "fake", "--out", str(tmp_path / f"again-{data.stem}"), "-q"])
        assert r.exit_code == 0, r.output
        assert read_json(tmp_path / f"again-{data.stem}/metrics.json")["train_size"] == len(read_jsonl(data)) - round(
            0.1 * len(read_jsonl(data)))
    card = (out / "dataset_card.md")
    from s3synth.report import write_report
    write_report(out, embed=None)
    assert "Each row of `final/train.jsonl` has `message`, `priority` (the task's `fields` names)" in card.read_text()


def test_rows_written_for_the_user_take_the_tasks_names_unless_they_clash(tmp_path):
    assert row_names(RTE) == {"text": "hypothesis", "label": "label", "context": "premise"}
    assert row_names(QA) == {"text": "question", "context": "context"}
    assert row_names(None) == {"text": "text", "label": "label", "context": "context"}
    clash = tickets_task(tmp_path)
    clash.write_text(clash.read_text().replace("fields: {text: message, label: priority}",
                                               "fields: {text: stage, label: priority}"))
    assert row_names(load_task(clash)) == {"text": "text", "label": "label"}     # `stage` is an export column
    ex = Example("H.", "entailment", context="P.", id="seed-0", meta={"stage": "seed"})
    assert example_row(ex, RTE) == {"hypothesis": "H.", "label": "entailment", "premise": "P.", "id": "seed-0",
                                    "meta": {"stage": "seed"}}
    assert example_from_row(example_row(ex, RTE), RTE) == ex == example_from_row(ex.to_dict(), RTE)


def test_an_older_run_with_the_fields_own_names_still_reports_and_exports(tmp_path):
    """final/train.jsonl of an earlier version holds text/label: export renames, the report reads it."""
    from s3synth.report import write_report
    from s3synth.rundir.checks import _record

    task = tickets_task(tmp_path)
    gold, test = tiny_data(tmp_path, "imdb")
    user_gold = write_rows(tmp_path / "t_gold.jsonl", renamed(read_jsonl(gold), {"text": "message", "label": "priority"}))
    out, _ = run_tiny(tmp_path, "run", user_gold, user_gold, task=str(task))
    new_rows = read_jsonl(export_run(out, "jsonl", tmp_path / "new.jsonl")[0])
    t = load_task(task)
    old = "".join(json.dumps(example_from_row(d, t).to_dict()) + "\n" for d in read_jsonl(out / "final/train.jsonl"))
    assert '"text": ' in old and '"message"' not in old
    (out / "final/train.jsonl").write_text(old)
    m = read_json(out / "manifest.json")
    m["files"]["final/train.jsonl"] = _record(old.encode())
    (out / "manifest.json").write_text(json.dumps(m))
    assert read_jsonl(export_run(out, "jsonl", tmp_path / "old.jsonl")[0]) == new_rows
    write_report(out, embed=None)
    assert "Each row of `final/train.jsonl` has `text`, `label`, `id`" in (out / "dataset_card.md").read_text()
    r = CliRunner().invoke(cli, ["train", "--task", str(task), "--train", str(out / "final/train.jsonl"),
                                 "--learner", "fake", "--out", str(tmp_path / "again"), "-q"])
    assert r.exit_code == 0, r.output


def test_the_run_says_at_its_start_when_its_model_cannot_be_exported_to_onnx(tmp_path, monkeypatch, capsys):
    """--learner fast: one note before the first stage (export-model refuses it later), none for others."""
    from s3synth.serve.onnx_export import export_note

    assert export_note("minilm") is None and export_note("hf:org/model") is None and export_note("fake") is None
    gold, test = tiny_data(tmp_path, "imdb")
    monkeypatch.setattr(progress, "_QUIET", False)
    for learner, out in (("fast", tmp_path / "fast"), ("fake", tmp_path / "fake")):
        cfg = RunConfig(task="imdb", gold_eval=str(gold), learner=learner, cache_mode="only", seed_size=4)
        with pytest.raises(S3Error):        # --cache-only, nothing cached: stops at the seed stage
            S3(cfg, llm=QueuedLLM(fake_answer("imdb"))).run(out)
        err = capsys.readouterr().err
        note = ("note: the fast learner (frozen MiniLM embeddings + logistic regression) cannot be exported to "
                "ONNX by `s3synth export-model`; train with --learner minilm (or hf:DIR) to export to ONNX")
        if learner == "fast":
            assert err.splitlines()[0] == note
        else:
            assert "ONNX" not in err
