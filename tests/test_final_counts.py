"""Real and synthetic examples counted apart wherever a run's size is told: the summary `run` prints, the
report, the cards and the bench (queued fake LLM, fake learner). Under `--final-train auto` the final model of
method s3 trains on its synthetic data plus the gold eval's mining part; method gold on that part alone."""

from dataclasses import replace

import pytest
from conftest import QueuedLLM
from fake_plugins import fake_embed
from test_pipeline import fake_answer, tiny_data
from test_report_export import answer

import s3synth.method.loop as loop
from s3synth.cli import print_result
from s3synth.config import RunConfig
from s3synth.method import S3
from s3synth.method.bench import run_bench
from s3synth.report import write_report
from s3synth.report.cards import model_card, read_header
from s3synth.report.runview import load_run
from s3synth.tasks import load_task

# small_run (conftest): 40 gold-eval examples, 12 (30%) held out -> 28 real in the mining part; a seed of 20,
# 12 examples added in each of its 2 rounds
REAL, SEED, ADDED = 40 - 12, 20, 12 + 12
SUMMARY = "the final model also trained on 28 real examples (the gold eval's mining part)"


@pytest.fixture(scope="module")
def gold_run(small_run, tmp_path_factory):
    """(dir, result) of method gold on small_run's data, with its report."""
    _, _, cfg = small_run
    out = tmp_path_factory.mktemp("gold") / "run"
    res = S3(replace(cfg, method="gold"), llm=QueuedLLM()).run(out)
    write_report(out, embed=fake_embed)
    return out, res


def test_run_result_and_summary_count_real_examples_apart(small_run, gold_run, capsys):
    _, res, _ = small_run
    _, gold = gold_run
    imdb = load_task("imdb")
    print_result(res, imdb)
    print_result(gold, imdb)
    heads = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("task ")]
    assert heads == [f"task imdb: seed 20 + added 24 synthetic examples; {SUMMARY}",
                     "task imdb: no synthetic examples; the final model trained on 28 real examples (the gold "
                     "eval's mining part)"]
    assert (res["seed_size"], res["added"], res["synthetic"], res["real"]) == (SEED, ADDED, SEED + ADDED, REAL)
    assert res["final"]["train_size"] == SEED + ADDED + REAL
    assert (gold["seed_size"], gold["added"], gold["synthetic"], gold["real"]) == (0, 0, 0, REAL)


def test_final_stage_line_names_the_real_examples(small_run, tmp_path, monkeypatch):
    _, _, cfg = small_run
    said = []
    monkeypatch.setattr(loop, "info", said.append)
    S3(cfg, llm=QueuedLLM(answer)).run(tmp_path / "s3")
    S3(replace(cfg, method="gold"), llm=QueuedLLM()).run(tmp_path / "gold")
    final = [s for s in said if s.startswith("stage: final")]
    assert final == ["stage: final: train fake on 44 synthetic examples + 28 real ones (the gold eval's mining part)",
                     "stage: final: train fake on 28 real examples (the gold eval's mining part)"]


def test_report_counts_real_examples_apart(small_run, gold_run):
    out, _, _ = small_run
    md = (out / "report.md").read_text()
    assert ("Final synthetic set: **44** examples (20 seed + 24 added), plus **28** real examples in the final "
            "model's training set (the gold eval's mining part)") in md
    assert "| round 2 | 32 | 0 |" in md and "| final | 44 | 28 |" in md     # synthetic, then real
    html = (out / "report.html").read_text()
    assert '<div class="k">synthetic examples</div><div class="v">44</div>' in html
    assert "20 seed + 24 added; the final model also trained on 28 real" in html
    assert "<tr><td>final</td><td>44</td><td>28</td>" in html
    assert "final (+28 real)" in html                  # the chart's final point: at 44 synthetic, marked
    card = (out / "dataset_card.md").read_text()
    assert "| examples | 44 (20 seed, 24 added by error extrapolation); the final model also trained on 28 real" in card
    assert "| negative | 10 | 12 | 22 |" in card and "| positive | 10 | 12 | 22 |" in card   # no real rows
    gold_md = (gold_run[0] / "report.md").read_text()
    assert "Final synthetic set: **0** examples (0 seed + 0 added), plus **28** real examples" in gold_md
    assert "| final | 0 | 28 |" in gold_md


def test_cards_count_real_examples_apart(small_run, gold_run):
    card = model_card(load_run(gold_run[0]))
    head = read_header(card)["s3synth"]
    assert (head["synthetic_train_size"], head["real_examples_in_final_model"], head["seed_size"]) == (0, REAL, 0)
    assert "trained on **28 real examples** (the gold eval's mining part) and no synthetic ones" in card
    assert "| synthetic training set | 0 |" in card and "- **Size.** 0 synthetic and 28 real training examples" in card
    s3_card = model_card(load_run(small_run[0]))
    assert "- **Size.** 44 synthetic and 28 real training examples" in s3_card
    assert read_header(s3_card)["s3synth"]["synthetic_train_size"] == 44


def test_bench_counts_real_examples_apart(tmp_path, monkeypatch):
    import s3synth.report as report_mod

    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: None)    # the bench report: below
    gold, test = tiny_data(tmp_path, "imdb", n=48)              # 40 gold eval, 12 held out: 28 real
    base = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1)
    res = run_bench(base, ["s3", "gold", "s3+gold"], [0], tmp_path / "bench", llm=QueuedLLM(fake_answer("imdb")))
    runs = {r["method"]: r for r in res["runs"]}
    s3 = runs["s3"]["size"]
    assert s3 > 16 and runs["s3"]["real"] == 0                 # the paper's row: synthetic only
    assert (runs["gold"]["size"], runs["gold"]["real"]) == (0, 28)
    assert (runs["s3+gold"]["size"], runs["s3+gold"]["real"]) == (s3, 28)
    rows = {r["method"]: (r["size"], r["real"]) for r in res["table"]}
    assert rows == {"s3": (s3, 0), "gold": (0, 28), "s3+gold": (s3, 28)}
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "| method | synthetic | real | accuracy |" in md and "| Gold data | 0 | 28 |" in md
    assert f"| S3 + gold | {s3} | 28 |" in md
    monkeypatch.undo()
    write_report(tmp_path / "bench", embed=None)
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "| Gold data | 0 | 28 |" in report and f"| S3 | {s3} | 0 |" in report
    assert "<tr><td>Gold data</td><td>0</td><td>28</td>" in (tmp_path / "bench" / "report.html").read_text()
