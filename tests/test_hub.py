"""Models by Hugging Face Hub name (s3synth.hub), with no network: tiny models built here are put into a
Hugging Face cache folder of the documented layout (HF_HUB_CACHE/models--ORG--NAME/{refs/main,
snapshots/<sha>/...}), as a download would have left them, and found there by huggingface_hub itself.

- a run with `--learner hf:ORG/NAME --offline` trains from the cached commit and records it;
- nothing cached: one line naming the model and the ways out, exit 2, nothing written to the run
  directory, both with --offline and with the Hub unreachable (HF_ENDPOINT at a closed local port);
- the same for generators (transformers:NAME, vllm:NAME), which are fetched before the run writes;
- revisions (branch, tag, commit), safetensors only, the download's file patterns;
- a real download through huggingface_hub from an in-process stand-in of the Hub's read API (no
  pickled .bin, no subfolders fetched; refs/main and the snapshot written as the cache layout says).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import plugin_env, user_env
from hub_stub import DownloadStub
from test_encoder_families import build_encoder
from test_plugins import GOLD

from s3synth import hub
from s3synth.cli import cli
from s3synth.errors import S3Error
from s3synth.io import read_json
from s3synth.learners import TrainConfig, load_learner, make_learner
from s3synth.llm import make_llm
from s3synth.tasks import load_task

pytestmark = pytest.mark.usefixtures("quiet_single_thread")   # conftest.py

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA_V1 = "89abcdef0123456789abcdef0123456789abcdef"
REPO = "s3synth-test/tiny-bert"


def put_in_cache(cache: Path, repo_id: str, folder: Path, sha: str, refs=("main",)) -> Path:
    """`folder`'s files as the snapshot `sha` of `repo_id` in a Hugging Face cache, `refs` pointing at it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(sha)
    return snap


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return build_encoder("bert", tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_bert):
    """An HF cache holding REPO at SHA (main) and SHA_V1 (tag v1); resolution starts afresh."""
    c = tmp_path / "hf-cache"
    put_in_cache(c, REPO, tiny_bert, SHA)
    put_in_cache(c, REPO, tiny_bert, SHA_V1, refs=("v1",))
    monkeypatch.setenv("HF_HUB_CACHE", str(c))
    hub.forget()
    yield c
    hub.forget()


@pytest.fixture
def gold(tmp_path):
    p = tmp_path / "gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in GOLD))
    return p


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nothing listens there once the socket is closed


# ---------------------------------------------------------------- the resolver

def test_download_patterns_take_safetensors_config_and_tokenizers_only():
    from huggingface_hub.utils import filter_repo_objects

    repo = ["config.json", "model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
            "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "tokenizer.json", "tokenizer_config.json",
            "vocab.txt", "vocab.json", "merges.txt", "spm.model", "special_tokens_map.json", "generation_config.json",
            "chat_template.jinja", "README.md", "onnx/model.onnx", "onnx/model.safetensors", "1_Pooling/config.json",
            "training_args.bin", "optimizer.pt"]
    got = set(filter_repo_objects(repo, allow_patterns=hub.ALLOW_PATTERNS, ignore_patterns=hub.IGNORE_PATTERNS))
    assert got == {"config.json", "model.safetensors", "model-00001-of-00002.safetensors",
                   "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "vocab.json", "merges.txt", "spm.model", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja"}


def test_revisions_resolve_to_their_commit_from_the_cache(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    main = hub.resolve(REPO)
    assert main.sha == SHA and Path(main.path) == cache / "models--s3synth-test--tiny-bert" / "snapshots" / SHA
    assert main.to_dict() == {"name": REPO, "source": "hub", "revision": "main", "sha": SHA, "path": main.path}
    assert hub.resolve(REPO, revision="v1").sha == SHA_V1
    assert hub.resolve(REPO, revision=SHA_V1).sha == SHA_V1      # a commit sha needs no ref
    assert hub.resolve(REPO) is main                             # once per process: every round, one commit
    with pytest.raises(S3Error, match=r"'s3synth-test/tiny-bert' at revision 'v2' is not in the local Hugging "
                                      r"Face cache .* offline mode is on"):
        hub.resolve(REPO, revision="v2")


def test_folders_are_used_as_they_are(tiny_bert, tmp_path):
    src = hub.resolve(str(tiny_bert))
    assert src.path == str(tiny_bert) and src.sha is None and not src.from_hub
    assert src.to_dict() == {"name": str(tiny_bert), "source": "folder", "path": str(tiny_bert)}
    with pytest.raises(S3Error, match="is a local folder: a Hub revision .'v1'. does not apply"):
        hub.resolve(str(tiny_bert), revision="v1")
    with pytest.raises(S3Error, match="folder './no/such/model' not found"):
        hub.resolve("./no/such/model")
    assert not hub.looks_like_folder("microsoft/deberta-v3-small")
    assert not hub.looks_like_folder("distilbert-base-uncased")
    assert hub.looks_like_folder("a/b/c") and hub.looks_like_folder("~/models/x")


def test_a_hub_model_without_safetensors_is_refused(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    put_in_cache(cache, "s3synth-test/pickled", pickled, SHA)
    with pytest.raises(S3Error, match="'s3synth-test/pickled' has no .safetensors weights"):
        hub.resolve("s3synth-test/pickled")


# ---------------------------------------------------------------- learners by Hub name

def test_learners_by_hub_name_use_the_cached_commit(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    imdb = load_task("imdb")
    lrn = make_learner(f"hf:{REPO}", imdb, TrainConfig(revision="v1"))
    assert lrn.model_source.sha == SHA_V1 and lrn.base_model == REPO
    # the paper's DistilBERT by its Hub name (a stand-in put into the cache under that name)
    put_in_cache(cache, "distilbert-base-uncased", Path(lrn.model_path), SHA)
    d = make_learner("distilbert", imdb)
    assert d.model_source.repo_id == "distilbert-base-uncased" and d.model_source.sha == SHA
    # the fast learner's encoder by Hub name; its saved model finds the encoder again by name and commit
    fast = make_learner(f"fast:{REPO}", imdb, TrainConfig(max_length=32))
    from test_encoder_families import pairs
    data = [ex.__class__(ex.text, ["positive", "negative"][i % 2], id=ex.id) for i, ex in enumerate(pairs())]
    fast.fit(data)
    fast.save(tmp_path / "fast")
    meta_file = tmp_path / "fast" / "s3synth_learner.json"
    meta = json.loads(meta_file.read_text())
    assert meta["encoder_source"]["sha"] == SHA
    meta["encoder"] = str(tmp_path / "moved-away")
    meta_file.write_text(json.dumps(meta))
    again = load_learner(tmp_path / "fast", imdb)
    assert again.model_source.sha == SHA
    for x, y in zip(again.predict(data), fast.predict(data)):
        assert x.label == y.label and x.score == pytest.approx(y.score, abs=1e-6)


def test_run_with_a_cached_hub_encoder_offline_records_its_commit(cache, gold, tmp_path, monkeypatch):
    import s3synth.report as report_mod

    monkeypatch.setattr(report_mod, "write_report", lambda path, embed: None)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m",
                                 "--learner", f"hf:{REPO}", "--offline", "--revision", "v1", "--epochs", "1",
                                 "--max-length", "32", "--seed-size", "6", "--rounds", "1", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    m = read_json(out / "manifest.json")
    assert m["models"]["learner"]["sha"] == SHA_V1
    assert {k: m["models"]["learner"][k] for k in ("name", "source", "revision")} == {
        "name": REPO, "source": "hub", "revision": "v1"}
    assert "llm" not in m["models"]            # the echo backend has no weights
    saved = read_json(out / "final" / "model" / "s3synth_learner.json")
    assert saved["base_model"] == REPO and saved["base_model_source"]["sha"] == SHA_V1
    toml = (out / "config.toml").read_text()
    assert "offline = true" in toml and 'revision = "v1"' in toml
    # the same command again: nothing to redo (the revision's commit is the learner's fingerprint)
    r = CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m",
                                 "--learner", f"hf:{REPO}", "--offline", "--revision", SHA_V1, "--epochs", "1",
                                 "--max-length", "32", "--seed-size", "6", "--rounds", "1", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    again = read_json(out / "manifest.json")["stages"]
    assert again == m["stages"]          # same fingerprints, nothing redone (a redone stage adds its seconds)
    # another commit is other weights: the learner's stages are redone, the seed (LLM answers) is kept
    r = CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m",
                                 "--learner", f"hf:{REPO}", "--offline", "--epochs", "1",
                                 "--max-length", "32", "--seed-size", "6", "--rounds", "1", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    m2 = read_json(out / "manifest.json")
    assert m2["models"]["learner"]["sha"] == SHA and m2["stages"]["seed"] == m["stages"]["seed"]
    assert m2["stages"]["final"]["fingerprint"] != m["stages"]["final"]["fingerprint"]


# ---------------------------------------------------------------- nothing cached: one line, nothing written

def _run_cli(args, tmp_path, **env):
    full = plugin_env(HF_HUB_CACHE=str(tmp_path / "empty-cache"), **env)
    return subprocess.run([sys.executable, "-m", "s3synth.cli", *args], capture_output=True, text=True,
                          env=full, timeout=120, cwd=tmp_path, check=False)


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_uncached_learner_stops_before_writing(how, gold, tmp_path):
    out = tmp_path / "run"
    args = ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m", "--learner", "hf:s3synth-test/absent",
            "--out", str(out)]
    if how == "offline":
        p = _run_cli([*args, "--offline"], tmp_path, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
        why, way = "offline mode is on", "without --offline / HF_HUB_OFFLINE=1"
    else:
        p = _run_cli(args, tmp_path, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
                     HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
        why, way = "the Hub cannot be reached (ConnectError)", "run on a machine with access to huggingface.co"
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert line.startswith("s3synth: error: learner model 's3synth-test/absent' is not in the local Hugging Face cache")
    assert why in line and way in line and "give --learner hf:DIR" in line
    assert not out.exists()


def test_environment_offline_is_honoured(gold, tmp_path):
    out = tmp_path / "run"
    p = _run_cli(["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m", "--learner", "distilbert",
                  "--out", str(out)], tmp_path, HF_HUB_OFFLINE="1")
    assert p.returncode == 2 and "'distilbert-base-uncased' is not in the local Hugging Face cache" in p.stderr
    assert "--learner-path DIR" in p.stderr and not out.exists()


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_uncached_generator_stops_before_writing(backend, gold, tmp_path, monkeypatch):
    from s3synth.llm.vllm_backend import VLLMBackend

    monkeypatch.setattr(VLLMBackend, "check_runtime", staticmethod(lambda: None))   # as on a GPU with vLLM
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub.forget()
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", f"{backend}:org/absent-lm",
                                 "--llm-revision", "v2", "--learner", "fake", "--offline", "--out", str(out), "-q"])
    assert r.exit_code == 2
    assert ("generator 'org/absent-lm' at revision 'v2' is not in the local Hugging Face cache" in r.output
            and f"give --llm {backend}:DIR" in r.output), r.output
    assert not out.exists()


def build_causal_lm(folder: Path, tokenizer_from: Path) -> Path:
    """A tiny random Llama (1 layer, hidden 16) with `tokenizer_from`'s tokenizer and a plain chat template, saved
    as safetensors."""
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(tokenizer_from))
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)
    tf.LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tiny_bert, tmp_path_factory):
    return build_causal_lm(tmp_path_factory.mktemp("tiny") / "lm", tiny_bert)


def test_transformers_generator_by_hub_name(cache, monkeypatch, tmp_path, tiny_lm):
    """A tiny causal LM from the cache: fetched by name, answers keyed by its commit, loaded from the snapshot."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tiny_lm
    put_in_cache(cache, "s3synth-test/tiny-lm", folder, SHA)
    from s3synth.llm import GenParams, Request

    llm = make_llm("transformers:s3synth-test/tiny-lm", device="cpu", n_parallel=2)
    assert llm.identity()["sha"] == SHA and llm.model_source.repo_id == "s3synth-test/tiny-lm"
    (c,) = llm.generate([Request(prompt="the bridge was opened", params=GenParams(max_tokens=4))])
    assert c.error is None and c.completion_tokens >= 1
    assert Path(llm._model.name_or_path) == cache / "models--s3synth-test--tiny-lm" / "snapshots" / SHA
    llm.close()
    with pytest.raises(S3Error, match="no revision|not in the local"):
        make_llm("transformers:s3synth-test/tiny-lm", revision="nope").fetch()
    with pytest.raises(S3Error, match="a local folder: a Hub revision"):
        make_llm(f"transformers:{folder}", revision="v1").fetch()


def test_vllm_without_vllm_says_so_before_any_download(gold, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    hub.forget()
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "vllm:org/absent-lm",
                                 "--learner", "fake", "--out", str(out), "-q"])
    assert r.exit_code == 2 and "pip install 's3synth[vllm]'" in r.output, r.output
    assert not out.exists() and not (tmp_path / "empty-cache").exists()


def test_train_command_by_hub_name_records_the_commit(cache, gold, tmp_path):
    out = tmp_path / "trained"
    r = CliRunner().invoke(cli, ["train", "--task", "rte", "--train", str(gold), "--learner", f"hf:{REPO}",
                                 "--revision", "v1", "--offline", "--epochs", "1", "--max-length", "32",
                                 "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    base = read_json(out / "metrics.json")["base_model"]
    assert base["name"] == REPO and base["sha"] == SHA_V1 and base["revision"] == "v1"
    r = CliRunner().invoke(cli, ["train", "--task", "rte", "--train", str(gold), "--learner", "hf:s3synth-test/absent",
                                 "--offline", "--out", str(tmp_path / "t2"), "-q"])
    assert r.exit_code == 2 and "'s3synth-test/absent' is not in the local Hugging Face cache" in r.output
    assert not (tmp_path / "t2").exists()


# ---------------------------------------------------------------- a download, from a stand-in of the Hub

@pytest.fixture
def online_hub(tmp_path, monkeypatch, tiny_bert):
    """REPO served by a DownloadStub (with a pickled .bin beside the safetensors), an empty cache, online."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    files = {p.name: p.read_bytes() for p in tiny_bert.iterdir() if p.is_file()}
    files["pytorch_model.bin"] = b"pickled weights are never fetched"
    files["onnx/model.onnx"] = b"nor files in subfolders"
    stub = DownloadStub(REPO, SHA, files)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    set_client_factory(stub.client)
    hub.forget()
    try:
        yield stub
    finally:
        set_client_factory(default_client_factory)
        hub.forget()


def test_a_hub_name_is_downloaded_once_without_pickles(online_hub, tmp_path):
    src = hub.resolve(REPO)
    assert src.sha == SHA and src.revision is None
    snap = tmp_path / "hf-cache" / "models--s3synth-test--tiny-bert" / "snapshots" / SHA
    assert Path(src.path) == snap
    got = {p.name for p in snap.iterdir()}
    assert "model.safetensors" in got and "config.json" in got and "tokenizer.json" in got
    assert "pytorch_model.bin" not in got and not (snap / "onnx").exists()
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for _, p in online_hub.requests if "/resolve/" in p}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= fetched      # through the stand-in
    assert "pytorch_model.bin" not in fetched and "onnx/model.onnx" not in fetched
    assert (tmp_path / "hf-cache" / "models--s3synth-test--tiny-bert" / "refs" / "main").read_text() == SHA
    # a learner from it; and a later process, offline, finds the same commit in the cache
    lrn = make_learner(f"hf:{REPO}", load_task("rte"))
    assert lrn.model_source.sha == SHA
    hub.forget()
    with hub.offline_mode():
        assert hub.resolve(REPO).path == src.path
    with pytest.raises(S3Error, match="no revision 'v9' on the Hub"):
        hub.resolve(REPO, revision="v9")
    with pytest.raises(S3Error, match="'s3synth-test/other': no such model on the Hugging Face Hub"):
        hub.resolve("s3synth-test/other")


# ---------------------------------------------------------------- as users run it: a plain shell, the Hub over HTTP
# No HF_HUB_CACHE, HF_HUB_OFFLINE or other Hugging Face variable (the suite sets some for itself: conftest.py);
# the Hub is a stand-in on a loopback port (HF_ENDPOINT), the cache where huggingface_hub puts it by default.

LM_REPO = "s3synth-test/tiny-lm"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def hub_server(tiny_bert, tiny_lm):
    stub = DownloadStub(REPO, SHA, files_of(tiny_bert)).add(LM_REPO, SHA_V1, files_of(tiny_lm))
    with stub.serve() as server:
        yield server


def _as_user(args, tmp_path, **env):
    """`s3synth ARGS` in a fresh process with a user's environment (conftest.user_env), HOME in tmp_path."""
    return subprocess.run([sys.executable, "-m", "s3synth.cli", *map(str, args)], capture_output=True, text=True,
                          env=user_env(tmp_path / "home", **env), timeout=300, cwd=tmp_path, check=False)


def downloaded(server, repo_id: str) -> set[str]:
    """The files of `repo_id` that were fetched from the stand-in (GET on /resolve/)."""
    return {p.rsplit("/", 1)[1] for m, p in server.stub.requests if m == "GET" and p.startswith(f"/{repo_id}/resolve/")}


@pytest.mark.slow      # two fresh processes that train (about 8 s each on 2 cores)
def test_train_by_hub_name_in_a_plain_shell(hub_server, gold, tmp_path):
    """Nothing set but the endpoint: the learner's weights land in ~/.cache/huggingface/hub, once."""
    out = tmp_path / "trained"
    args = ["train", "--task", "rte", "--train", gold, "--test", gold, "--learner", f"hf:{REPO}", "--epochs", "1",
            "--max-length", "32", "--out", out, "-q"]
    p = _as_user(args, tmp_path, HF_ENDPOINT=hub_server.endpoint)
    assert p.returncode == 0, p.stderr
    snap = tmp_path / "home" / ".cache" / "huggingface" / "hub" / "models--s3synth-test--tiny-bert" / "snapshots" / SHA
    assert (snap / "model.safetensors").is_file() and (snap / "config.json").is_file()
    assert read_json(out / "metrics.json")["base_model"] == {"name": REPO, "source": "hub", "revision": "main",
                                                               "sha": SHA, "path": str(snap)}
    assert "model.safetensors" in downloaded(hub_server, REPO)
    # the same command with the Hub gone: the cache answers (the commit is found by refs/main)
    endpoint = hub_server.endpoint
    hub_server.stop()
    p = _as_user([*args[:-3], "--out", tmp_path / "again", "-q"], tmp_path, HF_ENDPOINT=endpoint)
    assert p.returncode == 0, p.stderr


@pytest.mark.slow      # a fresh process that runs the whole loop
def test_run_with_hub_learner_and_generator_under_hf_home(hub_server, gold, tmp_path):
    """HF_HOME alone places the cache (HF_HOME/hub): the generator and the learner are both fetched by name."""
    out = tmp_path / "run"
    p = _as_user(["run", "--task", "rte", "--gold-eval", gold, "--llm", f"transformers:{LM_REPO}", "-o", "device=cpu",
                  "--learner", f"hf:{REPO}", "--epochs", "1", "--max-length", "32", "--seed-size", "4",
                  "--rounds", "1", "--out", out, "-q"], tmp_path,
                 HF_ENDPOINT=hub_server.endpoint, HF_HOME=str(tmp_path / "hf-home"))
    assert p.returncode == 0, p.stderr
    hub_dir = tmp_path / "hf-home" / "hub"
    assert (hub_dir / "models--s3synth-test--tiny-lm" / "snapshots" / SHA_V1 / "model.safetensors").is_file()
    assert (hub_dir / "models--s3synth-test--tiny-bert" / "snapshots" / SHA / "model.safetensors").is_file()
    assert not (tmp_path / "home" / ".cache" / "huggingface").exists()
    models = read_json(out / "manifest.json")["models"]
    assert (models["llm"]["sha"], models["learner"]["sha"]) == (SHA_V1, SHA)
    assert {"model.safetensors", "config.json"} <= downloaded(hub_server, LM_REPO)
