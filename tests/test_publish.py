"""`s3synth push`: what goes to which Hub repo, through huggingface_hub with its HTTP client routed to an
in-process stand-in of the Hub (tests/hub_stub.py); and the Hub's refusals as one line, exit 2."""

import io
import json
import os

import pytest
from click.testing import CliRunner
from conftest import QueuedLLM
from test_pipeline import fake_answer, tiny_data

from s3synth.cli import cli
from s3synth.config import RunConfig
from s3synth.io import read_json, read_jsonl
from s3synth.method import S3
from s3synth.progress import set_quiet
from s3synth.report.cards import read_header
from s3synth.report.export import export_rows
from s3synth.report.runview import load_run

hub_stub = pytest.importorskip("hub_stub")
set_quiet(True)

TOKEN = "hf_TestTokenNeverWritten1234567890"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("push")
    gold, test = tiny_data(tmp, "rte")
    cfg = RunConfig(task="rte", gold_eval=str(gold), test=str(test), learner="fake", seed_size=16, rounds=1,
                    holdout_frac=0.25)
    S3(cfg, llm=QueuedLLM(fake_answer("rte"))).run(tmp / "run")
    return tmp / "run"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    stub = hub_stub.HubStub(TOKEN)
    with hub_stub.installed(stub):
        yield stub


def push(*args):
    return CliRunner().invoke(cli, ["push", *map(str, args)])


def test_dry_run_lists_both_repos_and_sends_nothing(run_dir, hub):
    r = push(run_dir, "--repo-id", "alice/rte-s3", "--private", "--dry-run")
    assert r.exit_code == 0, r.output
    assert hub.requests == []
    out = r.output
    assert "model repo alice/rte-s3 (private; https://huggingface.co/alice/rte-s3)" in out
    assert "dataset repo alice/rte-s3 (private; https://huggingface.co/datasets/alice/rte-s3)" in out
    for name in ("README.md", "fake_model.json", "s3synth_learner.json", "data/train.parquet"):
        assert f"  {name}  " in out, name
    assert out.rstrip().endswith("dry run: nothing uploaded") and TOKEN not in out


def test_push_uploads_model_and_dataset_with_their_cards(run_dir, hub):
    import pyarrow.parquet as pq

    r = push(run_dir, "--repo-id", "alice/rte-s3", "--private")
    assert r.exit_code == 0, r.output
    model, data = hub.repo("model", "alice/rte-s3"), hub.repo("dataset", "alice/rte-s3")
    assert model["private"] is True and data["private"] is True
    local = {p.name: p.read_bytes() for p in (run_dir / "final/model").iterdir() if p.name != "README.md"}
    assert set(model["files"]) == {"README.md", *local}
    assert all(model["files"][k] == v for k, v in local.items())
    assert set(data["files"]) == {"README.md", "data/train.parquet"}
    assert [c["summary"] for c in model["commits"]] == ["s3synth: rte model from run run (s3, LLM fake:queued)"]
    assert data["commits"][0]["summary"] == "s3synth: rte synthetic training set from run run (s3, LLM fake:queued)"
    # the data file is the export, row for row; the cards link each other and declare the data file
    rows = pq.read_table(io.BytesIO(data["files"]["data/train.parquet"])).to_pylist()
    parts = read_json(run_dir / "final/metrics.json")["parts"]          # the synthetic rows only
    assert rows == export_rows(load_run(run_dir)) and len(rows) == parts["synthetic"] == \
        len(read_jsonl(run_dir / "final/train.jsonl")) - parts["gold"]
    mhead = read_header(model["files"]["README.md"].decode())
    dhead = read_header(data["files"]["README.md"].decode())
    assert mhead["datasets"] == ["alice/rte-s3"] and mhead["s3synth"]["labels"] == ["entailment", "not_entailment"]
    assert dhead["configs"] == [{"config_name": "default", "data_files": [{"split": "train",
                                                                           "path": "data/train.parquet"}]}]
    assert "https://huggingface.co/alice/rte-s3" in data["files"]["README.md"].decode()
    assert {v["repoType"] for v in hub.validated} == {"model", "dataset"}      # the Hub checked both headers
    assert "alice/rte-s3" in r.output and TOKEN not in r.output
    # the token is in no file of the run directory
    for root, _, files in os.walk(run_dir):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert TOKEN.encode() not in fh.read(), f


def test_pushing_again_adds_a_commit_to_the_existing_repos(run_dir, hub):
    assert push(run_dir, "--repo-id", "s3org/rte", "--what", "model").exit_code == 0
    r = push(run_dir, "--repo-id", "s3org/rte", "--what", "model", "--message", "retrained")
    assert r.exit_code == 0, r.output                       # the Hub's 409 on create is taken as "exists"
    assert [c["summary"] for c in hub.repo("model", "s3org/rte")["commits"]][1] == "retrained"
    assert hub.repo("model", "s3org/rte")["private"] is False
    assert hub.repo("dataset", "s3org/rte") is None                      # --what model: no dataset repo
    assert "datasets" not in read_header(hub.repo("model", "s3org/rte")["files"]["README.md"].decode())


def test_dataset_only_to_its_own_repo_its_parquet_through_lfs(run_dir, hub):
    r = push(run_dir, "--repo-id", "alice/m", "--what", "dataset", "--dataset-repo-id", "alice/rte-synthetic")
    assert r.exit_code == 0, r.output
    assert hub.repo("model", "alice/m") is None and hub.repo("dataset", "alice/rte-synthetic") is not None
    assert len(hub.lfs) == 1                                  # the Parquet file went through git-LFS


def test_bad_token_is_one_line_and_creates_nothing(run_dir, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    r = push(run_dir, "--repo-id", "alice/rte-s3")
    assert r.exit_code == 2 and hub.repos == {}
    line = r.output.strip()
    assert "\n" not in line and line.startswith("s3synth: error: the Hub refused the token (401")
    assert "HF_TOKEN" in line and "hf_wrong" not in line


def test_other_namespace_is_refused_with_403(run_dir, hub):
    r = push(run_dir, "--repo-id", "bob/rte-s3")
    assert r.exit_code == 2 and "\n" not in r.output.strip()
    assert "403" in r.output and 'namespace "bob"' in r.output and hub.repos == {}


def test_private_push_into_an_existing_public_repo_is_refused(run_dir, hub):
    hub.repos[("model", "alice/public")] = {"private": False, "files": {}, "commits": []}
    r = push(run_dir, "--repo-id", "alice/public", "--what", "model", "--private")
    assert r.exit_code == 2 and "already exists and is public" in r.output
    assert hub.repos[("model", "alice/public")]["commits"] == []


def test_no_token_and_bad_input(run_dir, hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    r = push(run_dir, "--repo-id", "alice/x")
    assert r.exit_code == 2 and "no Hugging Face token" in r.output and hub.requests == []
    for bad in ("alice", "alice/x/y", "-a/b", "a/b--c"):
        r = push(run_dir, "--repo-id", bad, "--dry-run")
        assert r.exit_code == 2 and "USER/NAME" in r.output, bad
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {}, "invocations": []}))
    r = push(tmp_path, "--repo-id", "alice/x", "--dry-run")
    assert r.exit_code == 2 and "not a finished run" in r.output


def test_unreachable_hub_is_one_line(run_dir, monkeypatch, tmp_path):
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    def refuse(request):
        raise httpx2.ConnectError("connection refused", request=request)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(refuse)))
    try:
        r = push(run_dir, "--repo-id", "alice/x")
    finally:
        set_client_factory(default_client_factory)
    assert r.exit_code == 2 and "cannot reach the Hugging Face Hub" in r.output and "\n" not in r.output.strip()


def test_without_private_the_namespace_default_visibility_applies(run_dir, hub):
    """No --private: the repo is created without a visibility, so an org that makes new repos private keeps
    them private (the stub's 'closedorg' does)."""
    r = push(run_dir, "--repo-id", "closedorg/rte", "--what", "model")
    assert r.exit_code == 0, r.output
    assert hub.repo("model", "closedorg/rte")["private"] is True
