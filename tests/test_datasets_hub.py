"""Data other than files (s3synth.datasets_hub): Hugging Face Hub datasets by name, read through the `datasets`
library from a stand-in of the Hub's HTTP API (hub_stub.DownloadStub with a dataset repository of parquet files:
nothing leaves the machine), and rows given from Python (a datasets.Dataset, a pandas DataFrame, a list of dicts).

- `--gold-eval hf:NAME:CONFIG:SPLIT` in a user's plain shell (HF_ENDPOINT at the stand-in on loopback, no other
  Hugging Face variable): the run records the commit, config, split and rows; the same command with --offline,
  the stand-in gone, resumes from the cache and redoes nothing (two processes: slow);
- a missing dataset, revision, config, split, column or label: one line naming it, exit 2, nothing written
  (in the test's process: the stand-in through huggingface_hub's documented client hook, the caches in tmp_path);
- ClassLabel columns map to the task's labels by name (or label word) first, then by id;
- rows from Python fingerprint like the same rows from a file; config.toml names them, and a RunConfig
  rebuilt from it refuses them in one line; `s3synth.load_run` gives a run's data as a DatasetDict.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tomllib

import datasets
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import user_env
from datasets import ClassLabel, Features, Value
from hub_stub import DownloadStub
from test_plugins import GOLD

from s3synth import RunConfig, datasets_hub, load_run
from s3synth.cli import cli
from s3synth.data import load_examples
from s3synth.errors import DataError, S3Error
from s3synth.io import read_json
from s3synth.method import S3
from s3synth.report.export import export_rows
from s3synth.report.runview import load_gold
from s3synth.report.runview import load_run as run_view
from s3synth.tasks import load_task

REPO = "s3synth-test/glue-like"
SHA = "5eed0123456789abcdef0123456789abcdef0123"
RTE_LABEL = ClassLabel(names=["entailment", "not_entailment"])
README = """---
configs:
- config_name: rte
  data_files:
  - split: validation
    path: rte/validation-*
  - split: test
    path: rte/test-*
- config_name: mnli
  data_files:
  - split: validation
    path: mnli/validation-*
---
# A GLUE-like dataset for the tests
"""


def parquet(rows: list[dict], label: ClassLabel) -> bytes:
    features = Features({"premise": Value("string"), "hypothesis": Value("string"), "label": label,
                         "idx": Value("int32")})
    buf = io.BytesIO()
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_list([{**r, "idx": i} for i, r in enumerate(rows)], features=features).to_parquet(buf)
    finally:
        if was:
            datasets.enable_progress_bars()
    return buf.getvalue()


def label_ids(rows: list[dict]) -> list[dict]:
    return [{**r, "label": RTE_LABEL.str2int(r["label"])} for r in rows]


@pytest.fixture(autouse=True)
def quiet():
    """No progress bars or status lines (the datasets library's bars included)."""
    from s3synth import progress

    was = progress.is_quiet()
    progress.set_quiet(True)
    yield
    progress.set_quiet(was)


@pytest.fixture(scope="module")
def repo_files() -> dict[str, bytes]:
    """REPO's files: README.md declaring two configs (as the Hub's GLUE does); rte: validation (GOLD, labels as
    ClassLabel ids) and test (no labels: -1, as GLUE's test splits); mnli: a third class rte does not have."""
    mnli = ClassLabel(names=["entailment", "neutral", "contradiction"])
    return {"README.md": README.encode(),
            "rte/validation-00000-of-00001.parquet": parquet(label_ids(GOLD), RTE_LABEL),
            "rte/test-00000-of-00001.parquet": parquet([{**r, "label": -1} for r in GOLD[:3]], RTE_LABEL),
            "mnli/validation-00000-of-00001.parquet": parquet([{**r, "label": i} for i, r in enumerate(GOLD[:3])],
                                                              mnli)}


@pytest.fixture
def online(repo_files, tmp_path, monkeypatch):
    """REPO on the stand-in, reached in this process through huggingface_hub's client hook; online (the suite
    sets HF_HUB_OFFLINE for itself), the Hub and datasets caches in tmp_path; datasets read afresh."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    stub = DownloadStub().add_dataset(REPO, SHA, repo_files)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    set_client_factory(stub.client)
    datasets_hub.forget()
    try:
        yield stub
    finally:
        set_client_factory(default_client_factory)
        datasets_hub.forget()


def run_args(gold, out, *more) -> list[str]:
    return ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m", "--learner", "fake",
            "--seed-size", "4", "--rounds", "1", "--out", str(out), "-q", *more]


# ---------------------------------------------------------------- as users run it: a plain shell, the Hub over HTTP

def _as_user(args, tmp_path, **env):
    """`s3synth ARGS` in a fresh process with a user's environment (conftest.user_env: HOME in tmp_path, no
    Hugging Face variable but `env`), writing no report."""
    return subprocess.run([sys.executable, "-c", "import fake_plugins; fake_plugins.main_without_reports()",
                           *map(str, args)], capture_output=True, text=True, env=user_env(tmp_path / "home", **env),
                          timeout=300, cwd=tmp_path, check=False)


@pytest.mark.slow
def test_a_run_from_a_hub_dataset_records_its_commit_and_resumes_offline(repo_files, tmp_path):
    spec, out = f"hf:{REPO}:rte:validation", tmp_path / "run"
    with DownloadStub().add_dataset(REPO, SHA, repo_files).serve() as server:
        endpoint = server.endpoint
        p = _as_user(run_args(spec, out), tmp_path, HF_ENDPOINT=endpoint)
        assert p.returncode == 0, p.stderr
        fetched = {path for method, path in server.stub.requests if method == "GET" and "/resolve/" in path}
    assert f"/datasets/{REPO}/resolve/{SHA}/rte/validation-00000-of-00001.parquet" in fetched
    m = read_json(out / "manifest.json")
    gold = m["inputs"]["gold_eval"]
    assert {k: v for k, v in gold.items() if k != "content_sha256"} == {
        "path": spec, "source": "hub", "dataset": REPO, "config": "rte", "split": "validation", "revision": "main",
        "sha": SHA, "rows": len(GOLD)}
    assert m["split"]["gold_eval"] == len(GOLD)
    cache = tmp_path / "home" / ".cache" / "huggingface"      # where huggingface_hub and datasets put them
    assert (cache / "hub" / "datasets--s3synth-test--glue-like" / "refs" / "main").read_text() == SHA
    assert (cache / "datasets" / "s3synth-test___glue-like" / "rte").is_dir()
    assert f'gold_eval = "{spec}"' in (out / "config.toml").read_text()
    # the Hub gone, --offline: the same data from the cache, the same fingerprints, nothing redone
    p = _as_user(run_args(spec, out, "--offline"), tmp_path, HF_ENDPOINT=endpoint)
    assert p.returncode == 0, p.stderr
    again = read_json(out / "manifest.json")
    assert again["stages"] == m["stages"] and again["inputs"] == m["inputs"]
    assert len(again["invocations"]) == 2


# ---------------------------------------------------------------- what is missing: one line, exit 2, nothing written

MISSING = [
    ("hf:s3synth-test/nothing:rte:validation", (), "hf:s3synth-test/nothing:rte:validation: no dataset "
     "'s3synth-test/nothing' on the Hugging Face Hub (or it is private: set HF_TOKEN); check the name"),
    (f"hf:{REPO}:rte:validation", ("--data-revision", "v9"), f"hf:{REPO}:rte:validation: no revision 'v9' of "
     f"dataset {REPO} on the Hub; give a branch, tag or commit sha of that repository (--data-revision)"),
    (f"hf:{REPO}:qnli:validation", (), f"hf:{REPO}:qnli:validation: dataset {REPO} has no config 'qnli'; its "
     "configs: rte, mnli"),
    (f"hf:{REPO}", (), f"hf:{REPO}: dataset {REPO} has several configs (rte, mnli); name one, e.g. "
     f"hf:{REPO}:rte:SPLIT"),
    (f"hf:{REPO}:rte:train", (), f"hf:{REPO}:rte:train: dataset {REPO} (config rte) has no split 'train'; its "
     "splits: validation, test"),
    (f"hf:{REPO}:rte", (), f"hf:{REPO}:rte: dataset {REPO} (config rte) has the splits validation, test; name one, "
     f"e.g. hf:{REPO}:rte:validation"),
    (f"hf:{REPO}:rte:validation", ("--task", "qnli"), f"hf:{REPO}:rte:validation:1: field 'question': missing or "
     "empty (fields present: hypothesis, idx, label, premise)"),
    (f"hf:{REPO}:rte:test", (), f"hf:{REPO}:rte:test:1: field 'label': missing or empty (fields present: "
     "hypothesis, idx, label, premise)"),
    (f"hf:{REPO}:mnli:validation", (), f"hf:{REPO}:mnli:validation:3: field 'label': unknown label "
     "'contradiction'; expected one of: entailment (0), not_entailment (1)"),
]


@pytest.mark.parametrize("spec, more, line", MISSING, ids=["dataset", "revision", "config", "no-config", "split",
                                                           "no-split", "column", "no-label", "unknown-label"])
def test_what_is_missing_is_one_line_exit_2_and_nothing_written(online, tmp_path, spec, more, line):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*run_args(spec, out), *more])
    assert r.exit_code == 2, r.output
    assert r.stderr == f"s3synth: error: {line}\n"
    assert not out.exists()


def test_offline_reads_the_cache_only(online, tmp_path, monkeypatch, fake_embedder):
    """Nothing cached: one line naming the dataset and the way out, no request; cached: no request either (the
    report, too, reads the gold eval from there, its dataset card names the commit), and a revision the cache
    does not hold is refused."""
    import s3synth.report as report_mod

    write_report = report_mod.write_report
    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: None)     # not after each run
    spec = f"hf:{REPO}:rte:validation"
    r = CliRunner().invoke(cli, [*run_args(spec, tmp_path / "run"), "--offline"])
    assert r.exit_code == 2 and r.stderr == (
        f"s3synth: error: {spec}: dataset {REPO} (config rte) is not in the local Hugging Face cache and offline "
        "mode is on (--offline or HF_HUB_OFFLINE=1): run once where huggingface.co can be reached without "
        "--offline / HF_HUB_OFFLINE=1 (it is kept in the Hugging Face cache), or give a data file\n")
    assert online.requests == [] and not (tmp_path / "run").exists()
    assert len(datasets_hub.load_hub(spec).dataset) == len(GOLD)     # online: downloaded into the cache
    datasets_hub.forget()
    n = len(online.requests)
    r = CliRunner().invoke(cli, [*run_args(spec, tmp_path / "run"), "--offline", "--data-revision", "main"])
    assert r.exit_code == 0, r.output
    assert read_json(tmp_path / "run" / "manifest.json")["inputs"]["gold_eval"]["sha"] == SHA
    datasets_hub.forget()
    gold, said = load_gold(run_view(tmp_path / "run"))
    assert len(gold) == len(GOLD) and said == f"the gold eval set ({len(GOLD)} examples, {spec})"
    write_report(tmp_path / "run", embed="minilm")          # fake_embedder: no MiniLM
    assert f"ids are `gold-<line>` of {spec}, Hub commit `{SHA[:12]}`" in (tmp_path / "run" / "dataset_card.md"
                                                                           ).read_text()
    datasets_hub.forget()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")        # as --offline
    assert datasets_hub.load_hub(spec).sha == SHA
    assert len(online.requests) == n
    datasets_hub.forget()
    r = CliRunner().invoke(cli, [*run_args(spec, tmp_path / "other"), "--offline", "--data-revision", "a" * 40])
    assert r.exit_code == 2 and r.stderr.startswith(
        f"s3synth: error: {spec}: revision '{'a' * 40}' of dataset {REPO} is not in the local Hugging Face cache "
        f"(it holds commit {SHA[:12]}) and offline mode is on")


def test_train_reads_hub_splits_and_records_them(online, tmp_path):
    out = tmp_path / "trained"
    r = CliRunner().invoke(cli, ["train", "--task", "rte", "--train", f"hf:{REPO}:rte:validation", "--test",
                                 f"hf:{REPO}:rte:validation", "--learner", "fake", "--data-revision", SHA,
                                 "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    metrics = read_json(out / "metrics.json")
    assert metrics["inputs"]["test"] == {"path": f"hf:{REPO}:rte:validation", "source": "hub", "dataset": REPO,
                                         "config": "rte", "split": "validation", "revision": SHA, "sha": SHA,
                                         "rows": len(GOLD)}
    assert metrics["test"]["n"] == len(GOLD)
    r = CliRunner().invoke(cli, ["train", "--task", "rte", "--train", str(tmp_path / "x.jsonl"), "--data-revision",
                                 "v1", "--learner", "fake", "--out", str(tmp_path / "t2")])
    assert r.exit_code == 2 and r.stderr == ("s3synth: error: --data-revision 'v1': applies to Hub datasets only "
                                             "(--train, --eval or --test hf:NAME...); drop it, or name a Hub "
                                             "dataset\n")


# ---------------------------------------------------------------- class labels

def rte_rows(names: list[str], ids: list[int]) -> datasets.Dataset:
    features = Features({"premise": Value("string"), "hypothesis": Value("string"), "label": ClassLabel(names=names)})
    return datasets.Dataset.from_list([{"premise": f"P{i}", "hypothesis": f"H{i}", "label": v}
                                       for i, v in enumerate(ids)], features=features)


def test_class_labels_map_by_name_first_then_by_id():
    rte = load_task("rte")

    def labels(names, ids):
        return [ex.label for ex in load_examples(rte_rows(names, ids), rte, id_prefix="gold")]
    # every class is a label of the task (by name, or by label word): by name, whatever the ids
    assert labels(["not_entailment", "entailment"], [0, 1, 1]) == ["not_entailment", "entailment", "entailment"]
    assert labels(["wrong", "correct"], [0, 1]) == ["not_entailment", "entailment"]
    # other names: by id (rte: entailment 0, not_entailment 1)
    assert labels(["yes", "no"], [0, 1, 0]) == ["entailment", "not_entailment", "entailment"]
    # an id the task does not have is named by its class in the error; -1 is no label
    with pytest.raises(DataError) as e:
        labels(["entailment", "neutral", "contradiction"], [0, 2])
    assert str(e.value) == ("<Dataset: 2 rows>:2: field 'label': unknown label 'contradiction'; expected one of: "
                            "entailment (0), not_entailment (1)")
    with pytest.raises(DataError, match=r"^<Dataset: 1 row>:1: field 'label': missing or empty"):
        labels(["entailment", "not_entailment"], [-1])


# ---------------------------------------------------------------- rows from Python

def test_rows_from_python_fingerprint_like_the_same_rows_from_a_file(tmp_path):
    """A JSON Lines file, a datasets.Dataset, a pandas DataFrame and a list of dicts of the same rows: the same
    examples (ids gold-1...), so the same stage fingerprints; each recorded as what it is."""
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GOLD))
    kw = dict(task="rte", llm="echo:m", learner="fake", seed_size=4, rounds=0)
    sources = {"file": path, "Dataset": datasets.Dataset.from_list(GOLD), "DataFrame": pd.DataFrame(GOLD),
               "list": [dict(r) for r in GOLD]}
    stages, inputs = {}, {}
    for name, rows in sources.items():
        S3(RunConfig(gold_eval=rows, test=rows, **kw)).run(tmp_path / name)
        m = read_json(tmp_path / name / "manifest.json")
        stages[name] = {k: v["fingerprint"] for k, v in m["stages"].items()}
        inputs[name] = m["inputs"]["gold_eval"]
    assert list(stages["file"]) == ["seed", "final"] and all(fp == stages["file"] for fp in stages.values())
    content = inputs["file"]["content_sha256"]
    assert all(i["content_sha256"] == content for i in inputs.values())
    sha = inputs["list"]["sha256"]
    for kind in ("Dataset", "DataFrame", "list"):
        assert inputs[kind] == {"path": f"<{kind}: 20 rows, sha256 {sha[:12]}>", "source": "python", "rows": 20,
                                "sha256": sha, "content_sha256": content}
    # another row: another fingerprint
    S3(RunConfig(gold_eval=GOLD[:-1], **kw)).run(tmp_path / "fewer")
    assert read_json(tmp_path / "fewer" / "manifest.json")["stages"]["seed"]["fingerprint"] != stages["file"]["seed"]


def test_config_toml_names_rows_from_python_and_refuses_to_rebuild_them(tmp_path):
    frame = pd.DataFrame(GOLD)
    cfg = RunConfig(task="rte", gold_eval=frame, llm="echo:m", learner="fake", seed_size=4, rounds=0)
    S3(cfg).run(tmp_path / "run")
    toml = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    sha = read_json(tmp_path / "run" / "manifest.json")["inputs"]["gold_eval"]["sha256"]
    assert toml["gold_eval"] == f"<DataFrame: 20 rows, sha256 {sha[:12]}>" and "test" not in toml
    with pytest.raises(S3Error) as e:
        RunConfig.from_dict(toml)
    assert str(e.value) == (f"--gold-eval '<DataFrame: 20 rows, sha256 {sha[:12]}>': rows given from Python are not "
                            "kept in config.toml, so this run cannot be rebuilt from it; give the same rows again "
                            "(RunConfig.from_dict({**config, 'gold_eval': rows})), or a data file or hf: name")
    again = RunConfig.from_dict({**toml, "gold_eval": frame})      # the same rows again: the run is done already
    before = read_json(tmp_path / "run" / "manifest.json")["stages"]
    S3(again).run(tmp_path / "run")
    assert read_json(tmp_path / "run" / "manifest.json")["stages"] == before
    with pytest.raises(S3Error, match=r"^RunConfig gold_eval: rows given as a list: row 2 is a str, not a dict"):
        RunConfig(task="rte", gold_eval=[GOLD[0], "text"])


def test_load_run_gives_the_synthetic_and_the_real_rows_apart(tmp_path):
    S3(RunConfig(task="rte", gold_eval=GOLD, llm="echo:m", learner="fake", seed_size=4, rounds=1)).run(tmp_path / "r")
    data = load_run(tmp_path / "r")
    assert isinstance(data, datasets.DatasetDict) and list(data) == ["train", "real"]
    cols = ["id", "hypothesis", "label", "premise", "stage", "round", "source_id"]
    assert data["train"].column_names == cols and data["real"].column_names == cols
    view = run_view(tmp_path / "r")
    assert data["train"].to_list() == export_rows(view)          # the rows `s3synth export` writes
    assert {r["stage"] for r in data["train"]} == {"seed", "extrapolate"}
    real = data["real"].to_list()
    assert len(real) == view.final["parts"]["gold"] == len(data["real"]) > 0
    assert all(r["id"].startswith("gold-") and r["stage"] is None for r in real)
    assert len(data["train"]) + len(real) == view.final["train_size"]


@pytest.mark.slow      # a fresh process (the warnings go to the real stderr, which only a subprocess shows whole)
def test_an_unreachable_hub_is_one_line_in_a_plain_shell(tmp_path):
    """Nothing listens at HF_ENDPOINT and nothing is cached: at once (not after the library's ~25 s of retries),
    stderr holds our one line only, not the library's retry warnings ("'...' thrown while requesting HEAD ..."),
    and no run directory is made."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # closed once the socket is
    out = tmp_path / "run"
    p = _as_user(run_args("hf:nobody/nothing::test", out), tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert p.returncode == 2
    assert p.stderr == ("s3synth: error: hf:nobody/nothing::test: dataset nobody/nothing is not in the local Hugging "
                        "Face cache and the Hub cannot be reached (ConnectError): run once where "
                        "huggingface.co can be reached (it "
                        "is kept in the Hugging Face cache), or give a data file\n"), p.stderr
    assert not out.exists()
