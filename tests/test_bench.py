"""Baselines through the same machinery, and the bench grid (queued fake LLM, fake learner)."""

import statistics

from conftest import QueuedLLM
from test_pipeline import fake_answer, tiny_data

from s3synth.analysis import find_duplicates
from s3synth.config import RunConfig
from s3synth.data import Example
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.method.bench import run_bench


def test_each_baseline(tmp_path):
    gold, test = tiny_data(tmp_path, "rte", n=40)
    base = dict(task="rte", gold_eval=str(gold), test=str(test), learner="fake", seed_size=12, rounds=1)
    llm = QueuedLLM(fake_answer("rte"))
    z = S3(RunConfig(method="zerogen", size=10, **base), llm=llm).run(tmp_path / "zerogen")
    assert z["final"]["train_size"] == 10 and z["added"] == 0
    zs = read_jsonl(tmp_path / "zerogen" / "seed.jsonl")
    assert all(r["meta"]["stage"] == "zerogen" for r in zs)
    last = llm.seen[-1].prompt                 # ZeroGen's completion prompt, not a chat message
    assert last is not None and last.endswith(('definitely correct: "', 'definitely wrong: "'))
    g = S3(RunConfig(method="gold", **base), llm=llm).run(tmp_path / "gold")
    m = read_json(tmp_path / "gold" / "manifest.json")
    assert g["final"]["train_size"] == m["split"]["gold_eval"] - m["split"]["holdout"] == 32 - 10
    n_seen = len(llm.seen)
    gg = S3(RunConfig(method="goldgen", **base), llm=llm).run(tmp_path / "goldgen")
    mg = read_json(tmp_path / "goldgen" / "manifest.json")
    added = read_jsonl(tmp_path / "goldgen" / "round-1" / "added.jsonl")
    assert gg["added"] == len(added) > 0 and gg["final"]["train_size"] == 12 + len(added)
    assert {a["meta"]["source_id"] for a in added} <= {f"gold-{i}" for i in range(1, 33)}
    assert mg["synthesis"]["goldgen"]["requested"] >= mg["split"]["mining"]
    assert len(llm.seen) > n_seen
    so = S3(RunConfig(method="seed-only", size=15, **base), llm=llm).run(tmp_path / "seed-only")
    assert so["final"]["train_size"] == 15 and so["rounds"] == []
    zs3 = S3(RunConfig(method="zerogen-s3", **base), llm=llm).run(tmp_path / "zerogen-s3")   # Table 5: +synAdd
    assert zs3["seed_size"] == 12 and len(zs3["rounds"]) == 1
    assert all(r["meta"]["stage"] == "zerogen" for r in read_jsonl(tmp_path / "zerogen-s3" / "seed.jsonl"))
    assert zs3["final"]["train_size"] == 12 + zs3["added"]


def _examples(path):
    return [Example.from_dict(d) for d in read_jsonl(path)]


def recount_duplicates(run) -> int:
    """Near-duplicates of a run, recomputed from its files: within the seed, and of each round's added data
    among themselves or against everything kept before."""
    kept = _examples(run / "seed.jsonl")
    n = len(find_duplicates(kept))
    q = 1
    while (run / f"round-{q}" / "added.jsonl").exists():
        added = _examples(run / f"round-{q}" / "added.jsonl")
        n += len(find_duplicates(added, kept))
        kept += added
        q += 1
    return n


def test_bench_grid_table(tmp_path, monkeypatch):
    import s3synth.report as report_mod

    written = []       # the reports themselves are tested in test_report_export.py
    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: written.append((path, embed)))
    gold, test = tiny_data(tmp_path, "imdb", n=48)
    base = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1)
    res = run_bench(base, ["s3", "zerogen", "seed-only", "gold"], [0, 1], tmp_path / "bench",
                    llm=QueuedLLM(fake_answer("imdb")))
    runs = {(r["method"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {(m, s) for m in ("s3", "zerogen", "seed-only", "gold") for s in (0, 1)}
    for s in (0, 1):   # baselines are sized to S3's final size for the same seed
        assert runs[("zerogen", s)]["size"] == runs[("seed-only", s)]["size"] == runs[("s3", s)]["size"]
        assert runs[("gold", s)]["llm"]["requests"] == 0 and runs[("s3", s)]["llm"]["requests"] > 0
    rows = {r["method"]: r for r in res["table"]}
    accs = [runs[("s3", s)]["test"]["accuracy"] for s in (0, 1)]
    assert rows["s3"]["accuracy"] == sum(accs) / 2 and rows["s3"]["runs"] == 2
    for m in ("s3", "zerogen"):   # leak rate over every synthetic example screened, as the manifests count them
        leak = [read_json(tmp_path / "bench" / f"{m}-seed{s}" / "manifest.json")["leakage"] for s in (0, 1)]
        flagged, checked = (sum(v[k] for lk in leak for v in lk.values()) for k in ("flagged", "checked"))
        assert checked > 0 and rows[m]["leak_rate"] == flagged / checked
        dups = [recount_duplicates(tmp_path / "bench" / f"{m}-seed{s}") for s in (0, 1)]
        assert rows[m]["duplicates"] == statistics.mean(dups)
    assert rows["s3"]["duplicates"] > 0                     # the fake answers repeat themselves
    assert "leak_rate" not in rows["gold"]                   # no synthetic data to screen
    md = (tmp_path / "bench" / "bench.md").read_text()
    assert "| leaks | dups |" in md and "| - | - |" in md
    assert "| S3 |" in md and "| ZeroGen |" in md and "| Gold data |" in md
    assert read_json(tmp_path / "bench" / "bench.json")["table"] == res["table"]
    assert written == [(tmp_path / "bench" / f"{m}-seed{s}", "minilm") for s in (0, 1)
                       for m in ("s3", "zerogen", "seed-only", "gold")] + [(tmp_path / "bench", None)]
    assert (tmp_path / "bench" / "llm_cache.sqlite").exists()
    assert not (tmp_path / "bench" / "s3-seed0" / "llm_cache.sqlite").exists()   # one shared cache


def test_bench_cli_bad_methods_and_help(tmp_path):
    from click.testing import CliRunner

    from s3synth.cli import cli

    gold, test = tiny_data(tmp_path, "imdb", n=20)
    r = CliRunner().invoke(cli, ["bench", "--task", "imdb", "--gold-eval", str(gold), "--methods", "s3,magic",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "unknown magic" in r.stderr
    r = CliRunner().invoke(cli, ["bench", "--help"])
    assert r.exit_code == 0 and "--methods" in r.stdout and "Table 2" in r.stdout
    r = CliRunner().invoke(cli, ["run", "--help"])
    assert "--method" in r.stdout and "zerogen-s3" in r.stdout


def test_method_variants_parse_and_fail_clearly():
    import pytest

    from s3synth.errors import S3Error
    from s3synth.method.bench import parse_variant, split_methods, variant_dir

    assert split_methods("gold, s3+gold[clean_labels=drop,learner=fast],s3") == [
        "gold", "s3+gold[clean_labels=drop,learner=fast]", "s3"]
    assert parse_variant("s3+gold[clean_labels=drop, gold_weight=2]") == (
        "s3+gold", {"clean_labels": "drop", "gold_weight": "2"})
    assert parse_variant("zerogen+gold") == ("zerogen+gold", {})
    assert variant_dir("s3+gold[clean_labels=drop,learner=fast]") == "s3+gold_clean_labels-drop_learner-fast"
    for bad, msg in (("s4", "unknown s4;"), ("s3[colour=red]", "not KEY=VALUE"), ("s3[seed=3]", "not KEY=VALUE"),
                     ("s3[drop]", "not KEY=VALUE")):
        with pytest.raises(S3Error, match=msg):
            parse_variant(bad)


def test_bench_with_gold_variants_sizes_the_control_like_s3(tmp_path, monkeypatch):
    import pytest

    import s3synth.report as report_mod
    from s3synth.errors import S3Error

    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: None)   # tested elsewhere

    gold, test = tiny_data(tmp_path, "imdb", n=48)
    base = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=12, rounds=1,
                     max_test=6, test_seed=0)
    methods = ["gold", "s3", "s3+gold", "zerogen+gold", "s3+gold[mine=margin,mine_margin=0.5]"]
    with pytest.raises(S3Error, match="--gold-weight"):     # checked before anything runs
        run_bench(base, methods + ["s3+gold[gold_weight=0]"], [0], tmp_path / "bad")
    assert not (tmp_path / "bad" / "s3-seed0").exists()
    res = run_bench(base, methods, [0, 1], tmp_path / "bench", llm=QueuedLLM(fake_answer("imdb")))
    assert [r["method"] for r in res["table"]] == methods
    for seed in (0, 1):
        s3 = read_json(tmp_path / "bench" / f"s3-seed{seed}" / "final" / "metrics.json")
        plus = read_json(tmp_path / "bench" / f"s3+gold-seed{seed}" / "final" / "metrics.json")
        ctrl = read_json(tmp_path / "bench" / f"zerogen+gold-seed{seed}" / "final" / "metrics.json")
        g = read_json(tmp_path / "bench" / f"gold-seed{seed}" / "final" / "metrics.json")
        assert plus["parts"]["synthetic"] == ctrl["parts"]["synthetic"] == s3["train_size"]
        assert "parts" not in s3 and "parts" not in g    # the paper's rows train as named under --final-train auto
        assert plus["parts"]["gold"] == ctrl["parts"]["gold"] == g["train_size"]
        assert s3["test"]["n"] == plus["test"]["n"] == 6
        margin_dir = tmp_path / "bench" / f"s3+gold_mine-margin_mine_margin-0.5-seed{seed}"
        assert read_json(margin_dir / "round-1" / "metrics.json")["mine"]["rule"] == "margin"
    # --test-seed: every run of every seed is scored on the same six test examples
    ids = {tuple(r["id"] for r in read_jsonl(d / "final" / "predictions.jsonl"))
           for d in (tmp_path / "bench").iterdir() if (d / "final" / "predictions.jsonl").exists()}
    assert len(ids) == 1
    assert "s3+gold[mine=margin,mine_margin=0.5]" in (tmp_path / "bench" / "bench.md").read_text()


def test_quality_grid_reports_the_runs_finished_so_far(tmp_path, capsys):
    """benchmarks/quality_grid.py --report while the bench runs: the finished run folders make the table
    (marked partial), paired differences need two seeds, and unfinished runs are left out."""
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "quality_grid", Path(__file__).resolve().parent.parent / "benchmarks" / "quality_grid.py")
    qg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(qg)
    out = tmp_path / "quality-imdb"
    acc = {("gold", 0): (0.87, 0.90), ("s3", 0): (0.84, 0.95), ("gold", 1): (0.89, 0.92), ("s3", 1): (0.80, 0.90)}
    for (m, seed), (a, h) in acc.items():
        f = out / f"{m}-seed{seed}" / "final" / "metrics.json"
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps({"train_size": 200, "test": {"accuracy": a}, "holdout": {"macro_f1": h}}))
    (out / "s3+gold-seed0" / "round-1").mkdir(parents=True)     # started, not finished
    bench = qg.finished_runs("imdb", out)
    assert bench["partial"] and bench["seeds"] == [0, 1] and bench["methods"] == ["gold", "s3"]
    text = qg.tables("imdb", out)
    assert "PARTIAL" in text and "| gold | 88.0 ± 1.4 | 91.0 ± 1.4 | 200 |" in text
    test_part, held_part = text.split("Held-out macro-F1")
    assert "| s3 − gold | -6.0 ± 4.2 | 0 of 2 |" in test_part     # test: -3 and -9 points
    assert "| s3 − gold | 1.5 ± 4.9 | 1 of 2 |" in held_part      # held-out: +5 and -2 points
    assert "s3+gold |" not in text
