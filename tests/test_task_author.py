"""`s3synth new-task` writes a task file that loads and runs (author/write.py); `s3synth check-task` checks a
task against real data and shows what the LLM would be asked (author/check.py). Data: tests/data/tickets.csv, 36 support tickets
with the columns `body` and `priority` (low / medium / high, 12 each)."""

import csv
import json
import random
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import QueuedLLM

from s3synth.cli import cli
from s3synth.config import RunConfig
from s3synth.io import read_json
from s3synth.method import S3
from s3synth.progress import set_quiet
from s3synth.tasks import load_task
from s3synth.author.write import draft_task, new_task, parse_draft, task_spec
from s3synth.author.check import check_task

TICKETS = Path(__file__).parent / "data" / "tickets.csv"
NEW_URGENCY = ["new-task", "urgency", "--kind", "single", "--labels", "low,medium,high",
               "--describe", "how urgent a support ticket is", "--item", "support ticket",
               "--data", str(TICKETS), "--columns", "text=body,label=priority"]


def tickets() -> list[dict]:
    with open(TICKETS, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def urgency(tmp_path) -> Path:
    out = tmp_path / "tasks" / "urgency.yaml"
    res = CliRunner().invoke(cli, NEW_URGENCY + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_new_task_writes_a_complete_task_that_loads(tmp_path):
    out = urgency(tmp_path)
    task = load_task(str(out))
    assert (task.name, task.kind, task.fields) == ("urgency", "single", {"text": "body", "label": "priority"})
    assert [(lab.name, lab.word, lab.id) for lab in task.labels] == [("low", "low", 0), ("medium", "medium", 1),
                                                                      ("high", "high", 2)]
    assert {s: task.stage(s).styles() for s in task.prompts} == {
        "rationale": ["paper", "fewshot"], "seed": ["paper", "fewshot"], "extrapolate": ["paper", "fewshot"],
        "zerogen": ["paper"]}
    assert task.stage("seed").fewshot.n_demos == 6            # two per label
    assert task.stage("seed").paper == ("Now imagine a support ticket that has {rationales}. The label of a support "
                                        "ticket says how urgent a support ticket is. Now you should write a support "
                                        "ticket labelled {label_word}.")
    # extrapolation demonstrations: 6 pairs of real tickets, each pair of one label, the labels in turn
    demos = task.stage("extrapolate").fewshot.demos
    by_text = {r["body"]: r["priority"] for r in tickets()}
    assert [d["label"] for d in demos] == ["low", "medium", "high"] * 2
    assert all(by_text[d["text"]] == by_text[d["new_text"]] == d["label"] and d["text"] != d["new_text"]
               for d in demos)
    text = out.read_text()
    assert "# REVIEW these demonstrations, drawn from " + str(TICKETS) in text
    assert len(re.findall(r"^\s*- # tickets-\d+ -> tickets-\d+$", text, re.M)) == 6
    # every part is commented: each stage and top-level key has a comment line right before it
    lines = text.splitlines()
    for key in ("kind:", "fields:", "labels:", "prompts:", "  rationale:", "  seed:", "  extrapolate:", "  zerogen:"):
        i = next(i for i, ln in enumerate(lines) if ln.startswith(key))
        assert lines[i - 1].lstrip().startswith("#"), key


def test_new_task_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "t.yaml"
    cases = [
        (["--labels", "low"], "--labels 'low': a single task needs at least two labels, as your data writes them, "
                              "e.g. --labels low,medium,high (or NAME=WORD to word one differently in the prompts)"),
        (["--labels", "low,low"], "--labels 'low,low': label 'low' is given twice"),
        (["--labels", "low,high", "--columns", "txt=body"], "--columns txt=body: 'txt' is not a field of a single "
                                                            "task; its fields: text, label"),
        (["--labels", "low,medium,high", "--data", str(TICKETS)],
         f"{TICKETS}:2: field 'text': missing or empty (fields present: body, priority); name the column that "
         "holds it with --columns text=COLUMN"),
        (["--labels", "low,high", "--data", str(TICKETS), "--columns", "text=body,label=priority"],
         f"{TICKETS}:4: field 'priority': unknown label 'medium'; expected one of: low (0), high (1)"),
    ]
    for extra, message in cases:
        res = CliRunner().invoke(cli, ["new-task", "t", "--kind", "single", "--describe", "urgency", *extra,
                                       "--out", str(out)])
        assert (res.exit_code, res.output) == (2, f"s3synth: error: {message}\n"), extra
    assert not out.exists()
    out.write_text("keep me")
    res = CliRunner().invoke(cli, ["new-task", "t", "--kind", "qa", "--describe", "answers", "--out", str(out)])
    assert (res.exit_code, out.read_text()) == (2, "keep me")
    assert res.output == f"s3synth: error: --out {out}: the file exists; give another path, or --force to replace it\n"


@pytest.mark.parametrize("kind, labels", [("single", "a,b"), ("pair", "yes,no,maybe"), ("qa", None)])
def test_every_kind_drafts_a_valid_task_with_the_stages_of_the_builtins(kind, labels):
    task = parse_draft(draft_task(task_spec("t", kind, labels, "whether it holds", item="claim {x}")))
    want = {"single": ["rationale", "seed", "extrapolate", "zerogen"]}.get(kind, ["seed", "extrapolate", "zerogen"])
    assert list(task.prompts) == want
    assert "{{x}}" in task.stage("seed").paper            # braces in --item are written literally
    assert task.max_length == {"single": 128, "pair": 256, "qa": 384}[kind]


def test_pair_demonstrations_share_premise_and_label_and_qa_without_pairs_gets_the_chat_form(tmp_path):
    rows = [{"premise": f"Town {i // 4} has {i // 4 + 2} bridges and one river.", "hypothesis": f"Claim {i}.",
             "label": ["yes", "no"][i % 2]} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = task_spec("p", "pair", "yes,no", "whether the claim follows", columns="text=hypothesis,context=premise")
    new_task(spec, tmp_path / "p.yaml", data=str(data))
    demos = load_task(str(tmp_path / "p.yaml")).stage("extrapolate").fewshot.demos
    by_text = {r["hypothesis"]: r for r in rows}
    assert [d["label"] for d in demos] == ["yes", "no", "yes", "no"]
    assert all(by_text[d["text"]]["premise"] == by_text[d["new_text"]]["premise"] == d["context"] and
               by_text[d["text"]]["label"] == by_text[d["new_text"]]["label"] == d["label"] for d in demos)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"context": f"Anna{i} built it.", "question": f"Who built {i}?",
                                      "answers": {"text": [f"Anna{i}"], "answer_start": [0]}}) + "\n"
                          for i in range(4)))
    new_task(task_spec("q", "qa", None, "who did it"), tmp_path / "q.yaml", data=str(qa))
    fs = load_task(str(tmp_path / "q.yaml")).stage("extrapolate").fewshot
    assert (fs.is_chat, fs.demos) == (True, ())
    assert f"# a short chat form: {qa} has no two examples of one context and answer to draw" in (
        tmp_path / "q.yaml").read_text()


def test_generated_imdb_is_close_to_the_builtin_one():
    """`s3synth new-task imdb --kind single --labels negative,positive --describe "whether the review is positive
    or negative" --item "movie review"` beside src/s3synth/tasks/builtin/imdb.yaml. The same: name, kind, fields,
    labels (names, words, ids: --labels in id order), the stages and the styles of each (rationale, seed and
    extrapolate in both styles, zerogen's paper prompt), the forms (completion for rationale and seed, the chat
    form for extrapolation), stops, max_tokens, the rationale settings and the seed's 4 demonstrations.
    What differs:
    - wording: generic ("The label of a movie review says whether the review is positive or negative. Write a
      movie review labelled {label_word} similar to: ...") where imdb has the paper's own ("Write a {label_word}
      movie review similar to: ..."); the seed completion says "A movie review labelled positive:" where imdb
      says "A positive review of the movie:";
    - rationale few-shot demos: none (a comment shows where to write some) where imdb has two hand-written
      reasons per label;
    - min_words 5 where imdb has 8; learner max_length 128 where imdb has 256 (256 when --data shows long
      texts: a tenth of them over 90 words);
    - the description is the --describe text.
    """
    gen = parse_draft(draft_task(task_spec("imdb", "single", "negative,positive",
                                           "whether the review is positive or negative", item="movie review")))
    imdb = load_task("imdb")
    assert (gen.name, gen.kind, gen.fields, gen.labels) == (imdb.name, imdb.kind, imdb.fields, imdb.labels)
    assert (gen.rationale_k, gen.rationale_keep, gen.rationale_calls) == (2, 16, 12) == (
        imdb.rationale_k, imdb.rationale_keep, imdb.rationale_calls)
    for stage, sp in imdb.prompts.items():
        g = gen.stage(stage)
        assert g.styles() == sp.styles(), stage
        assert (g.max_tokens, g.stop, g.context_window) == (sp.max_tokens, sp.stop, sp.context_window), stage
        if sp.fewshot:
            assert g.fewshot.is_chat == sp.fewshot.is_chat, stage
    assert gen.stage("seed").fewshot.n_demos == imdb.stage("seed").fewshot.n_demos == 4
    differs = {(stage, key) for stage, sp in imdb.prompts.items() for key in ("paper", "min_words")
               if getattr(sp, key) != getattr(gen.stage(stage), key)}
    assert differs == {(s, k) for s in ("rationale", "seed", "extrapolate", "zerogen") for k in ("paper", "min_words")
                       } - {("rationale", "min_words")}
    assert (gen.stage("rationale").fewshot.demos, len(imdb.stage("rationale").fewshot.demos)) == ((), 2)
    assert (gen.max_length, imdb.max_length) == (128, 256)


def test_generated_task_runs_the_loop(tmp_path):
    """The generated urgency task, the tickets CSV under its own column names, a queued fake LLM and the fake
    learner: the run goes through seed, a round and the final model, its prompts as check-task showed them."""
    set_quiet(True)
    task_file = urgency(tmp_path)
    words = {"low": "question about settings and a small wish", "medium": "a bug that slows some users",
             "high": "outage for every customer right now"}

    def fn(r):
        text = r.prompt or r.messages[-1][1]
        if text.rstrip().endswith("1."):
            return " the customer only asks a question\n2. nothing is broken"
        lab = re.findall(r"labelled (low|medium|high)", text)[-1]
        return f" Ticket {random.Random(f'{text}{r.sample_index}').randint(0, 999)}: {words[lab]}."

    llm = QueuedLLM(fn)
    cfg = RunConfig(task=str(task_file), gold_eval=str(TICKETS), learner="fake", seed_size=12, rounds=1,
                    holdout_frac=0.25)
    res = S3(cfg, llm=llm).run(tmp_path / "run")
    assert res["seed_size"] == 12 and res["final"]["holdout"]["n"] == 9
    m = read_json(tmp_path / "run" / "manifest.json")
    assert len(m["split"]["demos"]) == 6 and m["synthesis"]["rationale"]["kept"] == 36
    shown = check_task(task_file, TICKETS).prompts
    seed_shown = next(p.text for p in shown if (p.stage, p.style) == ("seed", "fewshot"))
    seed_sent = next(r.prompt for r in llm.seen if r.prompt and "About the support ticket:" in r.prompt)
    # the same demonstrations (the run's are the gold eval's mining part, check-task's all the data)
    assert seed_shown.count("\n\n") == seed_sent.count("\n\n") == 6


def test_check_task_renders_every_stage_and_style(tmp_path):
    out = urgency(tmp_path)
    res = CliRunner().invoke(cli, ["check-task", str(out), "--gold-eval", str(TICKETS)])
    assert res.exit_code == 0, res.stderr
    heads = re.findall(r"^=== (\w+), (\w+) style: (.*) \(", res.stdout, re.M)
    assert heads == [("rationale", "paper", "paper prompts"),
                     ("rationale", "fewshot", "fewshot prompts: list completion"),
                     ("seed", "paper", "paper prompts"),
                     ("seed", "fewshot", "fewshot prompts: completion with 6 demonstrations"),
                     ("extrapolate", "paper", "paper prompts"),
                     ("extrapolate", "fewshot", "fewshot prompts: completion with 6 demonstrations"),
                     ("zerogen", "completion", "zerogen completion prompts")]
    assert "warnings: none" in res.stdout and res.stdout.rstrip().endswith("problems: 0")
    assert "data " + str(TICKETS) + ": 36 usable examples of 36 rows; low 12, medium 12, high 12" in res.stdout
    # the seed's few-shot prompt: six real tickets, two per label, then the open query
    seed = res.stdout.split("=== seed, fewshot style")[1].split("\n=== ")[0]
    demos = re.findall(r"^A support ticket labelled (\w+): (.+)$", seed, re.M)
    by_text = {r["body"]: r["priority"] for r in tickets()}
    assert sorted(lab for lab, _ in demos) == ["high", "high", "low", "low", "medium", "medium"]
    assert all(by_text[t] == lab for lab, t in demos)
    assert re.search(r"\nA support ticket labelled (low|medium|high):\n$", seed)


def test_check_task_on_a_builtin_task(tmp_path, shared_data):
    gold = tmp_path / "imdb.jsonl"
    gold.write_text("".join((shared_data / "s3_release" / "imdb_round1.jsonl").read_text().splitlines(True)[:20]))
    res = CliRunner().invoke(cli, ["check-task", "imdb", "--gold-eval", str(gold)])
    assert res.exit_code == 0, res.stderr
    assert len(re.findall(r"^=== ", res.stdout, re.M)) == 7
    assert "\n[system] You are a movie critic. You write one short movie review and nothing else.\n" in res.stdout


def test_check_task_names_each_problem_once_exit_2(tmp_path):
    rows = tickets()
    rows[2]["priority"] = rows[7]["priority"] = "urgent"      # lines 4 and 9
    rows[4]["body"] = ""                                      # line 6
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["body", "priority"])
        w.writeheader()
        w.writerows(rows)
    out = urgency(tmp_path)
    res = CliRunner().invoke(cli, ["check-task", str(out), "--gold-eval", str(bad)])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"s3synth: error: {bad}:4: field 'priority': unknown label 'urgent'; expected one of: low (0), medium (1), "
        "high (2) (also line 9)",
        f"s3synth: error: {bad}:6: field 'body': missing or empty (fields present: body, priority)"]
    assert f"data {bad}: 33 usable examples of 36 rows" in res.stdout
    assert res.stdout.rstrip().endswith("problems: 2 (one line each on stderr)")


def test_check_task_lists_fallbacks_and_skipped_stages(tmp_path, paper_only_task):
    gold = tmp_path / "gold.csv"
    gold.write_text("body,y\n" + "".join(f"text number {i},{['ham', 'spam'][i % 2]}\n" for i in range(12)))
    res = CliRunner().invoke(cli, ["check-task", str(paper_only_task), "--gold-eval", str(gold)])
    assert res.exit_code == 0, res.stderr
    warnings = res.stdout.split("warnings:\n")[1].split("\n\n")[0].splitlines()
    assert warnings == [
        "  stage rationales skipped: task spam has no prompts.rationale, so the seed prompts show no reasons "
        "({rationales} is left empty); add prompts.rationale to the task file (`s3synth new-task` writes one)",
        "  --prompt-style fewshot: stage seed: task spam has no fewshot prompt for it (prompts.seed.fewshot), so it "
        "sends its paper prompt: one chat message, no demonstrations",
        "  --prompt-style fewshot: stage extrapolate: task spam has no fewshot prompt for it "
        "(prompts.extrapolate.fewshot), so it sends its paper prompt: one chat message, no demonstrations"]
    assert "  --prompt-style fewshot:\n    seed         paper prompts\n    extrapolate  paper prompts\n" in res.stdout


@pytest.fixture
def paper_only_task(tmp_path) -> Path:
    p = tmp_path / "spam.yaml"
    p.write_text(yaml.safe_dump({
        "name": "spam", "kind": "single", "fields": {"text": "body", "label": "y"}, "labels": ["ham", "spam"],
        "prompts": {"seed": {"paper": "Write a {label_word} email."},
                    "extrapolate": {"paper": "Write a {label_word} email similar to: {text}"}}}))
    return p


@pytest.mark.slow
def test_new_task_check_task_run_on_the_embedded_model(tmp_path):
    """The three commands on the tickets CSV under its own column names, with the embedded SmolLM2 and the
    fast learner (the rationale calls cut to 3 per label in the written file, as a user may edit it)."""
    pytest.importorskip("llama_cpp")
    import subprocess
    import sys

    task = tmp_path / "urgency.yaml"
    s3 = [sys.executable, "-m", "s3synth.cli"]
    new = subprocess.run(s3 + NEW_URGENCY + ["--out", str(task)], capture_output=True, text=True)
    assert new.returncode == 0, new.stderr
    task.write_text(task.read_text().replace("calls_per_label: 12", "calls_per_label: 3"))
    check = subprocess.run(s3 + ["check-task", str(task), "--gold-eval", str(TICKETS)], capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.rstrip().endswith("problems: 0"), check.stderr
    out = tmp_path / "run"
    run = subprocess.run(s3 + ["run", "--task", str(task), "--gold-eval", str(TICKETS), "--llm", "embedded",
                               "--learner", "fast", "--seed-size", "12", "--rounds", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "stage: rationales (fewshot prompts: list completion)" in run.stderr
    assert "stage: seed (12 examples, fewshot prompts: completion with 6 demonstrations)" in run.stderr
    assert "warning:" not in run.stderr
    m = read_json(out / "manifest.json")
    assert m["prompt_style"] == "fewshot" and len(m["split"]["demos"]) == 6
    assert m["synthesis"]["seed"]["kept"] >= 12 and m["synthesis"]["rationale"]["kept"] > 0
    assert (out / "final" / "metrics.json").exists()
