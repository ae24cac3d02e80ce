"""`s3synth report` and `export` on small real run directories (queued fake LLM, fake learner, reports
embedded with fake_plugins.fake_embed; one slow test with the real MiniLM embedder), and the leakage /
dedup hooks of the pipeline."""

import json
import random
import re
import shutil

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from fake_plugins import fake_embed, use_fake_embedder
from test_pipeline import fake_answer, tiny_data

from s3synth.analysis import LeakGuard, find_duplicates, table6
from s3synth.method.bench import run_bench
from s3synth.cli import cli
from s3synth.config import RunConfig
from s3synth.data import Example
from s3synth.errors import S3Error
from s3synth.report.export import export_run
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.progress import set_quiet
from s3synth.report import write_report
from s3synth.report.pages import comparisons

set_quiet(True)

WORDS = {"positive": "great wonderful superb loved brilliant".split(),
         "negative": "awful boring terrible hated dull".split()}
SECTIONS = ("quality", "balance", "table6", "screen", "samples", "provenance")


def gold_rows(n=48):
    rng = random.Random(0)
    rows = []
    for i in range(n):
        lab = ["negative", "positive"][i % 2]
        shown = lab if i % 4 else ("positive" if lab == "negative" else "negative")   # hard cases: errors
        rows.append({"text": f"The film number {i} was {rng.choice(WORDS[shown])} and {rng.choice(WORDS[shown])}.",
                     "label": lab})
    return rows


def answer(r):
    """Seed: few distinct answers (duplicates); extrapolation: every other source pasted back (a leak)."""
    text = r.prompt or r.messages[-1][1]
    rng = random.Random(f"{text}|{r.sample_index}")
    if text.rstrip().endswith("3."):
        return " the acting is fine\n4. the story moves well\n5. the music works"
    if "similar to:" in text:
        shown = text.split("similar to:", 1)[1].strip()
        lab = "positive" if "positive movie review" in text else "negative"
        if rng.random() < 0.5:
            return f"{shown} I would watch it again next week."
        return f"A {rng.choice(WORDS[lab])} story with {rng.choice(WORDS[lab])} actors, {rng.randint(0, 999)} minutes."
    lab = "positive" if "positive" in text[-80:] else "negative"
    return f" This movie was {rng.choice(WORDS[lab][:2])} and quite {rng.choice(WORDS[lab][:2])} overall."


def make_run(tmp, out, embed=fake_embed, **kw):
    """A finished run in `out` and its report (S3.run writes none: the CLI does, after the run)."""
    gold, test = tmp / "gold.jsonl", tmp / "test.jsonl"
    rows = gold_rows()
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows[40:]))
    cfg = RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=20,
                    **{"rounds": 2, "min_gain": -1.0, **kw})     # min_gain -1: both rounds extrapolate
    llm = QueuedLLM(answer)
    res = S3(cfg, llm=llm).run(out)
    assert not (out / "report.html").exists()
    write_report(out, embed=embed)
    return res, cfg, llm


@pytest.fixture
def plain(small_run):
    return small_run


def test_run_writes_report_with_every_section(plain):
    out, res, _ = plain
    html = (out / "report.html").read_text()
    for sec in SECTIONS:
        assert f'<section id="{sec}">' in html, sec
    assert len(re.findall(r"<svg[^>]*class=\"plot-svg\"", html)) == 4          # metric, balance, table6, screen
    assert "<script" not in html and "<link" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    assert html.count('<div class="pair">') >= min(10, res["added"])             # samples beside their source
    md = (out / "report.md").read_text()
    assert "## Added data vs. its source (Table 6)" in md and "| round 1 |" in md and "| final |" in md
    card = (out / "dataset_card.md").read_text()
    assert "# Dataset card" in card and "## Known limits" in card and "Leakage" in card
    assert f"| examples | {res['final']['parts']['synthetic']} " in card       # the real rows are not the set's


def test_leaks_are_counted_per_round_and_in_the_manifest(plain):
    out, res, _ = plain
    m = read_json(out / "manifest.json")
    assert set(m["leakage"]) >= {"seed", "round-1"} and set(m["dedup"]) >= {"seed", "round-1"}
    r1 = read_json(out / "round-1/metrics.json")
    added = read_jsonl(out / "round-1/added.jsonl")
    pasted = [a["id"] for a in added if a["text"].endswith("I would watch it again next week.")]
    assert pasted and sorted(r1["leakage"]["flagged_ids"]) == sorted(pasted)  # every pasted source, nothing else
    assert r1["leakage"]["rate"] == round(len(pasted) / len(added), 4) and r1["leakage"]["dropped"] == 0
    assert m["leakage"]["round-1"]["flagged"] == len(pasted) and "flagged_ids" not in m["leakage"]["round-1"]
    seed_dups = find_duplicates([Example.from_dict(d) for d in read_jsonl(out / "seed.jsonl")])
    assert m["dedup"]["seed"]["duplicates"] == len(seed_dups) > 0 and m["dedup"]["seed"]["dropped"] == 0
    md = (out / "report.md").read_text()
    assert re.search(rf"\| round-1 \| \d+ \| \d+ \| {len(added)} \| {len(pasted)} \|", md)


def test_report_table6_matches_the_analysis(plain):
    out, _, _ = plain
    rows = []
    for q in (1, 2):
        src = {e["id"]: Example.from_dict(e) for e in read_jsonl(out / f"round-{q}/sources.jsonl")}
        rows.append((f"round-{q}", [(Example.from_dict(a), src[a["meta"]["source_id"]])
                                    for a in read_jsonl(out / f"round-{q}/added.jsonl")]))
    t6, _ = table6(dict(rows), fake_embed)
    md = (out / "report.md").read_text()
    for k, v in (*((f"round-{q}", t6[f"round-{q}"]) for q in (1, 2)), ("all rounds", t6["overall"])):
        assert 0 < v["cosine"] < 1 and v["cosine_pairs"] == v["added"] > 0
        assert (f"| {k} | {v['added']} | {v['cosine']:,.4f} | {v['edit_distance']:,.2f} | {v['len_mis']:,.2f} "
                f"| {v['len_add']:,.2f} |") in md


def test_report_cli_without_embeddings_and_on_a_bad_dir(plain, tmp_path):
    out, _, _ = plain
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = CliRunner().invoke(cli, ["report", str(copy), "--no-embed"])
    assert r.exit_code == 0, r.output
    assert str(copy / "report.html") in r.output
    assert "(not computed: no embedder)" in (copy / "report.html").read_text()
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not an s3synth run directory" in r.output


def test_export_all_formats_round_trip(plain, tmp_path):
    import pyarrow.parquet as pq

    out, res, _ = plain
    train = read_jsonl(out / "final/train.jsonl")
    n_syn = res["final"]["parts"]["synthetic"]            # the real mining examples the final model saw: not exported
    want = [{"id": d["id"], "text": d["text"], "label": d["label"], "stage": d["meta"]["stage"],
             "round": d["meta"].get("round"), "source_id": d["meta"].get("source_id")} for d in train[:n_syn]]
    assert len(want) == n_syn < len(train) and any(w["source_id"] for w in want)
    r = CliRunner().invoke(cli, ["export", str(out), "--format", "jsonl", "--out", str(tmp_path / "t.jsonl")])
    assert r.exit_code == 0 and f"{len(want)} rows" in r.output
    assert read_jsonl(tmp_path / "t.jsonl") == want
    where, n = export_run(out, "parquet", tmp_path / "t.parquet")
    table = pq.read_table(where)
    assert n == len(want) and table.column_names == list(want[0]) and table.to_pylist() == want
    assert str(table.schema.field("round").type) == "int64"
    datasets = pytest.importorskip("datasets")
    where, _ = export_run(out, "hf", tmp_path / "hf")
    ds = datasets.load_from_disk(str(where))
    assert ds.column_names == list(want[0]) and ds.num_rows == len(want) and ds.to_list() == want
    where, _ = export_run(out, "hf", tmp_path / "hf")             # over an earlier export
    assert datasets.load_from_disk(str(where)).num_rows == len(want)


def test_export_refuses_an_unfinished_run(plain, tmp_path):
    out, _, _ = plain
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "final/train.jsonl").unlink()
    with pytest.raises(S3Error, match="not a finished run"):
        export_run(copy, "jsonl")
    r = CliRunner().invoke(cli, ["export", str(copy), "--format", "parquet"])
    assert r.exit_code == 2 and "not a finished run" in r.output


def test_drop_leaks_and_dedup_drop_and_record(tmp_path):
    res, cfg, _ = make_run(tmp_path, tmp_path / "run", drop_leaks=True, dedup=True, rounds=1)
    out = tmp_path / "run"
    seed = [Example.from_dict(d) for d in read_jsonl(out / "seed.jsonl")]
    assert find_duplicates(seed) == []
    dropped_seed = read_jsonl(out / "seed_dropped.jsonl")
    m = read_json(out / "manifest.json")
    assert dropped_seed and m["dedup"]["seed"]["dropped"] == len(dropped_seed)
    assert {d["meta"]["dropped"] for d in dropped_seed} == {"duplicate"}
    gold = LeakGuard([Example.from_dict(r) for r in gold_rows()[:40]])
    r1 = read_json(out / "round-1/metrics.json")
    added = [Example.from_dict(d) for d in read_jsonl(out / "round-1/added.jsonl")]
    assert not any(r.flagged for r in gold.check(added))
    dropped = read_jsonl(out / "round-1/dropped.jsonl")
    assert r1["leakage"]["dropped"] == sum(d["meta"]["dropped"] == "leak" for d in dropped) > 0
    assert r1["added"] == len(added) and m["leakage"]["round-1"]["dropped"] == r1["leakage"]["dropped"]
    assert res["final"]["parts"]["synthetic"] == len(seed) + sum(r["added"] for r in res["rounds"] if r.get("added"))
    assert re.search(r"\| round-1 \| \d+ \| \d+ \| \d+ \| [1-9]\d* \|", (out / "report.md").read_text())


def test_turning_dedup_on_redoes_the_seed_from_the_cache(plain, tmp_path):
    out, _, cfg = plain
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    m0 = read_json(copy / "manifest.json")
    from dataclasses import replace

    again = QueuedLLM(answer)
    S3(cfg, llm=again).run(copy)                                     # same flags: nothing to do
    assert again.stats.calls == 0 and read_json(copy / "manifest.json")["stages"]["seed"] == m0["stages"]["seed"]
    on = QueuedLLM(answer)
    res = S3(replace(cfg, dedup=True), llm=on).run(copy)               # a new fingerprint: seed redone, all cached
    m1 = read_json(copy / "manifest.json")
    assert m1["stages"]["seed"]["fingerprint"] != m0["stages"]["seed"]["fingerprint"]
    assert m1["stages"]["seed"]["llm"]["requests"] > 0 == m1["stages"]["seed"]["llm"]["calls"]   # all cached
    assert m1["dedup"]["seed"]["dropped"] == m0["dedup"]["seed"]["duplicates"] > 0
    assert res["seed_size"] == 20 - m0["dedup"]["seed"]["duplicates"]


def cli_run(tmp_path, out, *extra):
    """`s3synth run` in-process with the echo backend and the fake learner (test plugins)."""
    gold = tmp_path / "gold.jsonl"
    if not gold.exists():
        gold.write_text("".join(json.dumps(r) + "\n" for r in gold_rows()[:40]))
    return CliRunner().invoke(cli, ["run", "--task", "imdb", "--gold-eval", str(gold), "--llm", "echo:m",
                                    "--learner", "fake", "--seed-size", "8", "--rounds", "1", "--out", str(out),
                                    *extra])


def test_cli_run_writes_the_report_and_a_failing_report_only_warns(tmp_path, monkeypatch, fake_embedder):
    r = cli_run(tmp_path, tmp_path / "run", "-q")
    assert r.exit_code == 0, r.output
    html = (tmp_path / "run" / "report.html").read_text()
    assert '<section id="table6">' in html and "(not computed: no embedder)" not in html   # embedded
    assert "why the loop stopped" in r.stdout

    import s3synth.report as report_mod

    def boom(*a, **k):
        raise RuntimeError("no report today")
    monkeypatch.setattr(report_mod, "write_report", boom)
    r = cli_run(tmp_path, tmp_path / "other")                         # not -q: warnings are status lines
    assert r.exit_code == 0, r.output                                      # the run itself is done
    assert "warning: no report written (RuntimeError: no report today)" in r.stderr
    assert f"s3synth report {tmp_path / 'other'}" in r.stderr
    assert (tmp_path / "other" / "final" / "metrics.json").exists()
    assert not (tmp_path / "other" / "report.html").exists()


@pytest.mark.slow
def test_report_with_the_minilm_embedder(plain, tmp_path):
    """The report's default embedder (the packaged MiniLM): cosines as the analysis computes them."""
    from s3synth.analysis import minilm_embedder

    out, _, _ = plain
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    write_report(copy, embed="minilm")
    pairs = []
    for q in (1, 2):
        src = {e["id"]: Example.from_dict(e) for e in read_jsonl(copy / f"round-{q}/sources.jsonl")}
        pairs += [(Example.from_dict(a), src[a["meta"]["source_id"]])
                  for a in read_jsonl(copy / f"round-{q}/added.jsonl")]
    o = table6({"all": pairs}, minilm_embedder())[0]["overall"]
    assert 0.3 < o["cosine"] < 1
    assert f"| all rounds | {o['added']} | {o['cosine']:,.4f} |" in (copy / "report.md").read_text()


def bench_answer(r):
    """fake_answer, but ZeroGen's fixed prompt gets a review of a random sentiment: a weaker baseline."""
    text = r.prompt or r.messages[-1][1]
    if text.endswith('sentiment is: "'):
        rng = random.Random(f"{text}|{r.sample_index}")
        words = WORDS[rng.choice(sorted(WORDS))]
        return f"This movie was {rng.choice(words)} and quite {rng.choice(words)} overall."
    return fake_answer("imdb")(r)


def bench_config(tmp):
    gold, test = tiny_data(tmp, "imdb", n=48)
    return RunConfig(task="imdb", gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1)


def make_bench(tmp, seeds=(0, 1)):
    """A small bench directory with its reports: S3, ZeroGen and gold data over `seeds` (fake LLM, fake
    learner, reports embedded with fake_embed)."""
    with pytest.MonkeyPatch.context() as mp:
        use_fake_embedder(mp)
        return run_bench(bench_config(tmp), ["s3", "zerogen", "gold"], list(seeds), tmp / "bench",
                         llm=QueuedLLM(bench_answer))


@pytest.fixture
def bench(small_bench):
    return small_bench


def test_bench_report_tables_and_comparison(bench):
    out, res = bench
    assert write_report(out, embed=None) == {"report.html": out / "report.html", "report.md": out / "report.md"}
    assert not (out / "dataset_card.md").exists()
    assert read_json(out / "bench.json")["table"] == res["table"]
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    for sec in ("comparison", "table", "seeds"):
        assert f'<section id="{sec}">' in html, sec
    assert "<script" not in html and "<link" not in html and not re.search(r'(src|href)="(https?:)?//', html)
    names = {"s3": "S3", "zerogen": "ZeroGen", "gold": "Gold data"}
    for r in res["table"]:                                              # the Table 2 row of every method
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["pred_share"].items())
        screen = f"{100 * r['leak_rate']:.1f}% | {r['duplicates']:,.1f}" if r["method"] != "gold" else "– | –"
        row = (f"| {names[r['method']]} | {r['size']:.0f} | {r['real']:.0f} | {100 * r['accuracy']:.1f} ± "
               f"{100 * r['accuracy_std']:.1f} "
               f"| {100 * r['macro_f1']:.1f} ± {100 * r['macro_f1_std']:.1f} | {share} | {screen} "
               f"| {r['llm_requests']:,.0f} | {r['llm_tokens']:,.0f} |")
        assert row in md, row
        assert f"<tr><td>{names[r['method']]}</td><td>{r['size']:,.0f}</td><td>{r['real']:,.0f}</td>" in html
    for r in res["runs"]:                                               # one row per run, linking its report
        name = f"{r['method']}-seed{r['seed']}"
        assert (out / name / "report.html").exists()
        assert f'<a href="{name}/report.html">' in html
        sizes = f"{r['size']} | {r['real']}"
        assert f"| {names[r['method']]} | {r['seed']} | {sizes} | {100 * r['test']['accuracy']:.1f} |" in md
    rows = {r["method"]: r for r in res["table"]}
    assert rows["s3"]["accuracy"] != rows["zerogen"]["accuracy"]       # a difference with a sign to check
    for m in ("zerogen", "gold"):                                       # the sentence follows the numbers
        diff = 100 * (rows["s3"]["accuracy"] - rows[m]["accuracy"])
        spread = 100 * max(rows["s3"]["accuracy_std"], rows[m]["accuracy_std"])
        said = re.search(rf"S3 − {names[m]}: ([+-]\d+\.\d) points; seed spread (\d+\.\d): (larger than|within) "
                         r"the spread", md)
        assert said and said.group(0) in html
        assert said.group(1) == f"{diff:+.1f}" and said.group(2) == f"{spread:.1f}"
        assert (said.group(3) == "larger than") == (abs(diff) > spread)
    svgs = re.findall(r"<svg[^>]*>.*?</svg>", html, re.S)
    assert len(svgs) == 1 and 'data-figure="bench-comparison"' in svgs[0]
    for m in names:                                                     # a dot per seed in both panels
        for panel in ("seeds", "tokens"):
            g = re.search(rf'<g id="bench-{panel}-{m}">(.*?)</g>\s*</g>', svgs[0], re.S)
            assert g and g.group(1).count("<use ") == len(res["seeds"]), (m, panel)


def test_comparison_verdicts():
    def row(m, acc, std, runs=3):
        return {"method": m, "accuracy": acc, "accuracy_std": std, "runs": runs}
    got = comparisons([row("s3", 0.80, 0.01), row("zerogen", 0.70, 0.02), row("seed-only", 0.81, 0.02),
                       row("gold", 0.90, 0.0, runs=1)], "accuracy")
    assert [c["text"] for c in got] == [
        "S3 − ZeroGen: +10.0 points; seed spread 2.0: larger than the spread",
        "S3 − Seed only (w/o EES): -1.0 points; seed spread 2.0: within the spread",
        "S3 − Gold data: -10.0 points; seed spread 1.0: one seed, no spread to compare with"]
    assert comparisons([row("zerogen", 0.7, 0.0)], "accuracy") == []
    runs = [{"method": m, "seed": k, "test": {"accuracy": a}}
            for m, accs in (("s3", (0.80, 0.70, 0.90)), ("zerogen", (0.78, 0.71, 0.85))) for k, a in enumerate(accs)]
    paired = comparisons([row("s3", 0.80, 0.10), row("zerogen", 0.78, 0.07)], "accuracy", runs)[0]
    assert paired["paired"]["wins"] == 2 and paired["paired"]["seeds"] == [0, 1, 2]
    assert paired["paired"]["mean"] == pytest.approx(2.0) and paired["paired"]["std"] == pytest.approx(3.0)
    assert paired["text"].endswith("(paired by seed: +2.0 ± 3.0, S3 ahead on 2 of 3 seeds)")


def test_bench_report_cli_and_a_failing_report_only_warns(bench, tmp_path, monkeypatch):
    out, res = bench
    copy = tmp_path / "bench"
    shutil.copytree(out, copy)
    r = CliRunner().invoke(cli, ["report", str(copy)])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [str(copy / "report.html"), str(copy / "report.md")]
    before = (copy / "report.html").stat().st_mtime_ns
    import s3synth.report as report_mod

    def boom(*a, **k):
        raise RuntimeError("no report today")
    monkeypatch.setattr(report_mod, "write_report", boom)
    again = QueuedLLM(bench_answer)
    assert run_bench(bench_config(tmp_path), ["s3", "zerogen", "gold"], res["seeds"], copy,
                     llm=again)["table"] == res["table"]
    assert again.stats.calls == 0 and (copy / "report.html").stat().st_mtime_ns == before


def test_write_report_on_a_broken_bench_dir(tmp_path):
    (tmp_path / "bench.json").write_text("{}")
    with pytest.raises(S3Error, match="not a bench result"):
        write_report(tmp_path, embed=None)


def test_report_commands_use_the_run_path_as_typed_and_a_legend_explains_ids(plain, tmp_path, monkeypatch):
    """The suggested export command names the run directory as the user types it (relative under the current
    folder, else absolute; quoted), not its last part; `gold-12` is explained as line 12 of the gold-eval file,
    and it is that line."""
    out, _, cfg = plain
    copy = tmp_path / "my runs" / "urg"
    shutil.copytree(out, copy)
    monkeypatch.chdir(tmp_path)
    write_report(copy, embed=None)
    md, html = (copy / "report.md").read_text(), (copy / "report.html").read_text()
    assert "(export with `s3synth export 'my runs/urg' --format jsonl|parquet|hf`)" in md
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    write_report(copy, embed=None)
    assert f"(export with `s3synth export '{copy}' --format jsonl|parquet|hf`)" in (copy / "report.md").read_text()
    gold = read_json(copy / "manifest.json")["inputs"]["gold_eval"]["path"]
    assert gold == cfg.gold_eval
    assert (f"Ids: `gold-12` is the example on line 12 of the gold-eval file ({gold}) and `test-12` line 12 of "
            "the test file (counted from 1, blank lines included; a CSV's header is line 1; Parquet: row 12); a row "
            "with its own `id` keeps it. `seed-3` and `r1-3` are synthetic: the LLM's examples of the seed and of "
            "round 1, numbered from 0.") in md
    legend = (f'<p class="note" data-legend="ids">Ids: <code>gold-12</code> is the example on line 12 of the '
              f"gold-eval file ({gold}) and <code>test-12</code> line 12 of the test file")
    assert html.count(legend) == 2           # beside the samples and beside the test errors
    lines = open(gold, encoding="utf-8").read().split("\n")
    for a in read_jsonl(copy / "round-1/sources.jsonl"):
        assert a["id"].startswith("gold-")
        assert json.loads(lines[int(a["id"][len("gold-"):]) - 1])["text"] == a["text"]
