"""Loading and validating real data: every bad input gives a DataError naming file, line and field."""

import json

import pytest

from s3synth.data import Example, load_contexts, load_examples, stratified_split, subsample
from s3synth.errors import DataError
from s3synth.tasks import load_task

RTE = load_task("rte")
QA = load_task("adversarial_qa")
IMDB = load_task("imdb")


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_rte_jsonl_maps_fields_and_label_ids(tmp_path):
    p = write(tmp_path, "g.jsonl", jsonl([
        {"premise": "P one.", "hypothesis": "H one.", "label": 0},
        {"premise": "P two.", "hypothesis": "H two.", "label": "not_entailment"},
        {"premise": "P three.", "hypothesis": "H three.", "label": "correct"},   # the label word works too
    ]))
    exs = load_examples(p, RTE)
    assert [(e.text, e.context, e.label) for e in exs] == [
        ("H one.", "P one.", "entailment"), ("H two.", "P two.", "not_entailment"),
        ("H three.", "P three.", "entailment")]
    assert [e.id for e in exs] == ["g-1", "g-2", "g-3"]


def test_csv_and_parquet(tmp_path):
    p = write(tmp_path, "g.csv", "text,label\n\"Great, fun film.\",positive\nBoring.,0\n")
    assert [(e.text, e.label) for e in load_examples(p, IMDB)] == [("Great, fun film.", "positive"),
                                                                   ("Boring.", "negative")]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a b c", "d e f"], "label": [1, 0]}), tmp_path / "g.parquet")
    assert [e.label for e in load_examples(tmp_path / "g.parquet", IMDB)] == ["positive", "negative"]


def test_ids_are_the_line_numbers_the_readme_gives(tmp_path):
    """`gold-12` is line 12 of the file as the README explains it: from 1, blank lines counted (CRLF too); a
    CSV's header is line 1 and a record spanning lines takes its last line; Parquet: the row from 1."""
    rows = ['{"text": "a b", "label": 1}', "", '{"text": "c d", "label": 0, "id": "mine"}',
            '{"text": "e f", "label": 0}']
    p = tmp_path / "g.jsonl"
    p.write_bytes("\r\n".join(rows).encode() + b"\r\n")
    assert [e.id for e in load_examples(p, IMDB, id_prefix="gold")] == ["gold-1", "mine", "gold-4"]
    p = write(tmp_path, "g.csv", 'text,label\n"one\ntwo",1\n\nthree,0\n')
    assert [e.id for e in load_examples(p, IMDB, id_prefix="gold")] == ["gold-3", "gold-5"]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": ["a b c", "d e f"], "label": [1, 0]}), tmp_path / "g.parquet")
    assert [e.id for e in load_examples(tmp_path / "g.parquet", IMDB)] == ["g-1", "g-2"]


@pytest.mark.parametrize("content, line, field, words", [
    ('{"premise": "P", "hypothesis": "H", "label": 0}\n{"premise": "P", "label": 1}\n', 2, "hypothesis", "missing"),
    ('{"premise": "P", "hypothesis": "H", "label": "maybe"}\n', 1, "label", "unknown label 'maybe'"),
    ('{"premise": "P", "hypothesis": "H", "label": 0}\n{"premise": "P", "hypothesis": \n', 2, None, "malformed JSON"),
    ('{"premise": "P", "hypothesis": "  ", "label": 0}\n', 1, "hypothesis", "missing or empty"),
    ('[1, 2]\n', 1, None, "expected a JSON object"),
    ('{"premise": "P", "hypothesis": 5, "label": 0}\n', 1, "hypothesis", "expected text"),
])
def test_bad_rows_name_file_line_field(tmp_path, content, line, field, words):
    p = write(tmp_path, "bad.jsonl", content)
    with pytest.raises(DataError) as ei:
        load_examples(p, RTE)
    e = ei.value
    assert e.line == line and e.field == field and words in str(e)
    assert str(e).startswith(f"{p}:{line}:")


def test_empty_file(tmp_path):
    p = write(tmp_path, "empty.jsonl", "\n\n")
    with pytest.raises(DataError, match="holds no examples"):
        load_examples(p, RTE)


def test_non_utf8_reports_line(tmp_path):
    p = write(tmp_path, "latin.jsonl", b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 0}\n', mode="wb")
    with pytest.raises(DataError) as ei:
        load_examples(p, IMDB)
    assert ei.value.line == 2 and "not valid UTF-8" in str(ei.value)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "nope.jsonl", RTE)
    p = write(tmp_path, "x.txt", "hello")
    with pytest.raises(DataError, match="unknown file type"):
        load_examples(p, RTE)


def test_qa_squad_format_and_answer_checks(tmp_path):
    ctx = "The bridge opened in 1932 in Oslo."
    good = {"id": "q1", "context": ctx, "question": "When?", "answers": {"text": ["1932"], "answer_start": [21]}}
    shifted = {"context": ctx, "question": "Where?", "answers": {"text": ["Oslo"], "answer_start": [0]}}
    p = write(tmp_path, "qa.jsonl", jsonl([good, shifted]))
    exs = load_examples(p, QA)
    assert exs[0].answer == {"text": "1932", "start": 21} and exs[0].id == "q1"
    assert exs[1].answer == {"text": "Oslo", "start": 29}    # a wrong offset is recomputed when the text is there
    bad = {"context": ctx, "question": "Who?", "answers": {"text": ["Bergen"], "answer_start": [3]}}
    p = write(tmp_path, "qa_bad.jsonl", jsonl([good, bad]))
    with pytest.raises(DataError) as ei:
        load_examples(p, QA)
    assert ei.value.line == 2 and ei.value.field == "answers" and "not in its context" in str(ei.value)


def test_qa_keeps_every_gold_answer_and_scores_the_best(tmp_path):
    """SQuAD dev-style rows give several answers; all are kept, and EM/F1 take the maximum (official rule)."""
    from s3synth.data import Prediction
    from s3synth.metrics import evaluate, gold_answers, is_error

    ctx = "Denver Broncos won Super Bowl 50 at Levi's Stadium in Santa Clara."
    row = {"id": "q1", "context": ctx, "question": "Who won?",
           "answers": {"text": ["Denver Broncos", "Broncos", "Denver Broncos"], "answer_start": [0, 7, 0]}}
    bad = {"id": "q2", "context": ctx, "question": "Where?", "answers": {"text": ["Santa Clara", ""]}}
    ex = load_examples(write(tmp_path, "qa.jsonl", jsonl([row])), QA)[0]
    assert ex.answer == {"text": "Denver Broncos", "start": 0, "alternatives": ["Broncos"]}
    assert gold_answers(ex) == ["Denver Broncos", "Broncos"]
    with pytest.raises(DataError) as ei:
        load_examples(write(tmp_path, "bad.jsonl", jsonl([bad])), QA)
    assert ei.value.line == 1 and ei.value.field == "answers.text" and "answer 2" in str(ei.value)
    # "the Broncos" matches the alternative exactly after normalisation (articles dropped): EM 1, F1 1;
    # "Broncos won" against "Broncos": P 1/2, R 1 -> F1 2/3; against "Denver Broncos": P 1/2, R 1/2 -> 1/2
    preds = [Prediction(answer="the Broncos"), Prediction(answer="Broncos won")]
    m = evaluate(QA, [ex, ex], preds)
    assert m["exact_match"] == pytest.approx(0.5) and m["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert not is_error(QA, ex, preds[0]) and is_error(QA, ex, preds[1])


def test_contexts_pool(tmp_path):
    p = write(tmp_path, "c.jsonl", jsonl([{"premise": "A."}, {"premise": "B."}]))
    assert load_contexts(p, RTE) == [{"context": "A."}, {"context": "B."}]


def test_subsample_and_stratified_split_are_deterministic():
    exs = [Example(text=f"t{i}", label="positive" if i % 3 else "negative", id=str(i)) for i in range(30)]
    a, b = subsample(exs, 12, seed=1), subsample(exs, 12, seed=1)
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 12
    rest, held = stratified_split(exs, 0.3, seed=0)
    assert len(rest) + len(held) == 30
    assert sum(e.label == "negative" for e in held) == 3 and sum(e.label == "positive" for e in held) == 6
    assert {e.id for e in rest}.isdisjoint({e.id for e in held})


def test_shared_rte_and_adqa_files_load(shared_data):
    assert len(load_examples(shared_data / "rte" / "validation.jsonl", RTE)) == 277
    qa = load_examples(shared_data / "adversarial_qa" / "validation.jsonl", QA)
    assert len(qa) == 1011
    assert all(e.context[e.answer["start"]:e.answer["start"] + len(e.answer["text"])] == e.answer["text"] for e in qa)
