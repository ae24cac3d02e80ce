"""S3 through `openai:` against a real OpenAI-compatible server: llama-cpp-python's own server running the
embedded SmolLM2 GGUF, started once for the module, with tests/fault_proxy.py in front of it.

- a small S3 round through the CLI completes and the run directory is whole;
- at a 20% fault rate (429, 500, 503, hangs past the client timeout, truncated and non-JSON bodies) a run
  completes, every kept example comes from exactly one successful answer, and none is asked for twice;
- a run killed mid-stage and resumed sends no prompt again that was already answered;
- the API key never reaches the run directory or the captured output, errors included.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import SHARED, plugin_env
from fault_proxy import RANDOM_FAULTS, FaultProxy
from openai_stub import OpenAIStub

from s3synth.data import Example, example_row, row_names
from s3synth.io import read_json, read_jsonl
from s3synth.tasks import load_task

FAKE_KEY = "sk-s3synth-FAKE-4f1c9e27d3b8a6"
MODEL = "smollm2"
ENV = plugin_env(OPENAI_API_KEY=FAKE_KEY, OPENAI_BASE_URL="", OMP_NUM_THREADS="1",     # `--learner fake`
                 TOKENIZERS_PARALLELISM="false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m llama_cpp.server` on a free port; yields its base URL (without /v1)."""
    try:
        import llama_cpp.server.app  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama-cpp-python[server] is not installed ({e}); run scripts/setup.sh")
    from s3synth.errors import LLMError
    from s3synth.llm.embedded import embedded_model_path

    try:
        model = embedded_model_path()
    except LLMError as e:
        pytest.skip(str(e))
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
                                stdout=f, stderr=subprocess.STDOUT, env=ENV)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 120 s:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


@pytest.fixture(scope="module")
def gold(tmp_path_factory) -> Path:
    src = SHARED / "rte" / "train.jsonl"
    if not src.exists():
        pytest.skip(f"{src} is not beside the repository")
    p = tmp_path_factory.mktemp("data") / "gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(src)[:20]))
    return p


def cli_cmd(gold: Path, url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "s3synth.cli", "run", "--task", "rte", "--gold-eval", str(gold),
            "--llm", f"openai:{MODEL}", "--base-url", url, "--learner", "fake", "--prompt-style", "fewshot",
            "--concurrency", "2", "--out", str(out), *extra]


def body_key(body: dict) -> str:
    """What identifies an answer: the prompt (or messages) and the sampling seed."""
    return json.dumps([body.get("messages") or body.get("prompt"), body.get("seed")], sort_keys=True)


def cache_texts(run: Path) -> list[str]:
    with sqlite3.connect(str(run / "llm_cache.sqlite"), timeout=5) as db:
        return [r[0] for r in db.execute("SELECT text FROM answers")]


def cache_rows(run: Path) -> int:
    try:
        return len(cache_texts(run))
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="module")
def cli_run(server, gold, tmp_path_factory):
    """One small S3 round through the CLI, via a proxy that injects nothing (it logs what is sent)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    with FaultProxy(server) as proxy:
        r = subprocess.run(cli_cmd(gold, proxy.url, out, "--seed-size", "8", "--rounds", "1"), env=ENV,
                           capture_output=True, text=True, timeout=300)
        return out, r, proxy.entries()


def test_proxy_injects_each_fault_and_the_client_recovers():
    """The proxy itself, in front of the stub server (fast; no llama.cpp needed)."""
    from s3synth.llm.base import Request
    from s3synth.llm.openai_compat import OpenAICompatLLM

    with OpenAIStub() as stub, FaultProxy(stub.url.removesuffix("/v1"), hang_s=1.5, retry_after="0.05") as proxy:
        for kind in RANDOM_FAULTS:
            proxy.fail_next(kind)
        llm = OpenAICompatLLM("m", base_url=proxy.url, api_key_env=None, concurrency=1, timeout=0.5,
                              backoff_base=0.01, backoff_cap=0.05, max_retries=8)
        try:
            out = llm.generate([Request(prompt="one prompt")])
        finally:
            llm.close()
        log = proxy.entries()
    assert out[0].error is None and out[0].text.startswith("answer to: one prompt")
    assert [e["fault"] for e in log] == list(RANDOM_FAULTS) + [None]
    assert [e["ok"] for e in log] == [False] * len(RANDOM_FAULTS) + [True]
    assert [e["forwarded"] for e in log] == [False, False, False, False, True, True, True]
    assert [e["status"] for e in log] == [429, 500, 503, None, 200, 200, 200]
    assert len(stub.answered) == 3 and proxy.figures()["faults"] == len(RANDOM_FAULTS)


@pytest.mark.slow
def test_small_round_through_the_cli(cli_run):
    out, r, sent = cli_run
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("config.toml", "manifest.json", "llm_cache.sqlite", "seed.jsonl", "round-1/metrics.json",
              "round-1/errors.jsonl", "round-1/sources.jsonl", "round-1/added.jsonl", "final/metrics.json",
              "final/train.jsonl"):
        assert (out / f).is_file(), f
    assert any((out / "final" / "model").iterdir())
    m = read_json(out / "manifest.json")
    assert all(st["finished"] for st in m["stages"].values())
    assert {"seed", "round-1/train", "round-1/extrapolate", "final"} <= set(m["stages"])
    assert m["llm"]["name"] == f"openai:{MODEL}" and m["prompt_style"] == "fewshot"
    seed, added = read_jsonl(out / "seed.jsonl"), read_jsonl(out / "round-1/added.jsonl")
    assert 1 <= len(seed) <= 8 and all(ex["text"].strip() and ex["context"] for ex in seed)
    final_train = read_jsonl(out / "final/train.jsonl")     # the default final training: + the mining gold
    rte = load_task("rte")          # final/train.jsonl has rte's names (hypothesis, premise); seed.jsonl text, context
    assert final_train[:len(seed) + len(added)] == [example_row(Example.from_dict(d), rte) for d in seed + added]
    assert len(final_train) == len(seed) + len(added) + m["split"]["gold_eval"] - m["split"]["holdout"]
    assert {e["path"] for e in sent} == {"/v1/chat/completions"} and all(e["ok"] for e in sent)
    assert len(cache_texts(out)) == len(sent) == m["llm"]["spent_total"]["answers"]
    assert "run directory:" in r.stdout


@pytest.mark.slow
def test_fault_proxy_at_20_percent(server, gold, tmp_path, capsys):
    """In-process run (the client timeout is short so that hangs are felt) in completions mode."""
    from s3synth.config import RunConfig
    from s3synth.llm.openai_compat import OpenAICompatLLM
    from s3synth.method import S3
    from s3synth.progress import set_quiet

    out = tmp_path / "run"
    set_quiet(True)
    try:
        with FaultProxy(server, rate=0.2, seed=4, hang_s=13.0) as proxy:
            llm = OpenAICompatLLM(MODEL, base_url=proxy.url, mode="completions", concurrency=2, timeout=12.0,
                                  backoff_base=0.2, backoff_cap=2.0, extra_body={"repeat_penalty": True})
            cfg = RunConfig(task="rte", gold_eval=str(gold), llm=f"openai:{MODEL}", learner="fake", seed_size=8,
                            rounds=1, prompt_style="fewshot", llm_options={"concurrency": 2},
                            final_train="synthetic")     # final/train.jsonl: the LLM's examples only
            result = S3(cfg, llm=llm).run(out)
            figs, entries, attempts = proxy.figures(), proxy.entries(), llm.http_stats
    finally:
        set_quiet(False)
    ok = [e for e in entries if e["ok"]]
    keys = [body_key(e["body"]) for e in ok]
    final = read_jsonl(out / "final" / "train.jsonl")
    assert result["final"] and final
    assert figs["faults"] >= 3 and len(figs["by_kind"]) >= 2, figs
    assert {e["path"] for e in entries} == {"/v1/completions"}
    assert len(keys) == len(set(keys)), "a successful answer was requested again"
    assert sorted(cache_texts(out)) == sorted(e["text"] for e in ok)     # every OK answer saved, nothing else
    text = row_names(load_task("rte"))["text"]      # final/train.jsonl has the task's names (hypothesis)
    match = _match([{"text": ex[text]} for ex in final], [e["text"] for e in ok])
    assert match is not None, "an example cannot be traced to its own successful answer"
    with capsys.disabled():
        print(f"\nfault proxy: {figs['requests']} requests, {figs['faults']} faults {figs['by_kind']}, "
              f"{figs['ok']} answered OK, {len(final)} examples kept, "
              f"{len(keys) - len(set(keys))} duplicates; client attempts {attempts['attempts']}, "
              f"retries {attempts['retries']}")


def _norm(s: str) -> str:
    return " ".join(s.replace('"', "").replace("'", "").split())


def _match(examples: list[dict], answers: list[str]) -> dict | None:
    """A matching example -> a distinct answer whose text contains it (augmenting paths), or None."""
    cands = [[j for j, a in enumerate(answers) if _norm(ex["text"]) in _norm(a)] for ex in examples]
    owner: dict[int, int] = {}

    def take(i: int, seen: set) -> bool:
        for j in cands[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or take(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return owner if all(take(i, set()) for i in range(len(examples))) else None


@pytest.mark.slow
def test_killed_mid_stage_resumes_without_asking_again(server, gold, tmp_path):
    out = tmp_path / "run"
    cmd = cli_cmd(gold, "", out, "--seed-size", "12", "--rounds", "0", "-q")
    with FaultProxy(server) as proxy:
        cmd[cmd.index("--base-url") + 1] = proxy.url
        proxy.hold_after = 6          # the 7th request on waits: the run is killed with 6 answers in
        p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 180
        while time.time() < deadline:
            held = [e for e in proxy.entries() if e["held"]]
            if held and proxy.pending() == len(held) and cache_rows(out) == len(proxy.ok_bodies()) == 6:
                break
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the run did not reach the hold point")
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        first = {body_key(b) for b in proxy.ok_bodies()}
        assert not (out / "seed.jsonl").exists() and len(first) == 6
        n_before = len(proxy.entries())
        proxy.hold_after = None
        proxy.release.set()
        again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        entries = proxy.entries()
    assert not any(e["forwarded"] for e in entries[:n_before] if e["held"])    # dropped with the killed client
    resent = [body_key(e["body"]) for e in entries[n_before:]]
    assert resent and first.isdisjoint(resent)
    ok_all = [body_key(e["body"]) for e in entries if e["ok"]]
    assert len(ok_all) == len(set(ok_all)) == cache_rows(out)
    m = read_json(out / "manifest.json")
    assert len(m["invocations"]) == 2 and "seconds" not in m["invocations"][0]     # the killed one never finished
    assert m["invocations"][-1]["llm"]["cache_hits"] >= 6
    assert (out / "seed.jsonl").exists() and (out / "final" / "metrics.json").exists()


def _leaks(folder: Path) -> list[str]:
    key = FAKE_KEY.encode()
    return [str(f) for f in folder.rglob("*") if f.is_file() and key in f.read_bytes()]


@pytest.mark.slow
def test_api_key_never_written_or_printed(cli_run, server, gold, tmp_path):
    out, r, sent = cli_run
    assert sent and all(e["key"] == FAKE_KEY for e in sent)        # the key was in use all along
    assert _leaks(out) == []
    assert FAKE_KEY not in r.stdout + r.stderr
    # an error that echoes the key (OpenAI's 401 does), with tracebacks on: redacted everywhere
    bad = tmp_path / "bad"
    with FaultProxy(server) as proxy:
        proxy.fail_next("401")
        e = subprocess.run(cli_cmd(gold, proxy.url, bad, "--seed-size", "4", "--rounds", "0", "-v"), env=ENV,
                           capture_output=True, text=True, timeout=300)
        assert proxy.entries()[0]["status"] == 401 and proxy.entries()[0]["key"] == FAKE_KEY
    assert e.returncode == 2 and "HTTP 401" in e.stderr and "***" in e.stderr
    assert FAKE_KEY not in e.stdout + e.stderr
    assert bad.exists() and _leaks(bad) == []
