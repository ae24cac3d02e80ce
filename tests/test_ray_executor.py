"""`--executor ray` against a real Ray, started once for the module by `ray start --head` as a user starts
it (2 CPUs, no RAY_* variable, a token in ~/.ray/auth_token: it checks tokens). This process joins it
as Ray's `auto` does; `s3synth run` subprocesses join it at the address `ray start` printed.

- `s3synth run --ray-address` as `ray start` printed it, through the local OpenAI-compatible stub: the
  same seed set, added set, final training set and cache as `--executor local`, every request sent once
  (the same S3 round in this process: slow); a port nothing listens at: a one-line error at once, a
  token that is not the cluster's: one too (slow: Ray retries it for about 20 s);
- an actor killed (SIGKILL) mid-stage: the stage completes, every example from exactly one answer, no
  prompt answered before the kill is sent again (counted at the stub), at most the killed actor's
  requests in flight are repeated;
- the driver killed (`kill -9`) mid-stage: the same command resumes from the cache, sending no answered
  prompt again;
- the embedded model (slow): the same answers on Ray actors as in this process;
- vLLM on Ray Data LLM: the processor configuration built from our options (no GPU needed); the real
  run skips without a CUDA GPU, vLLM and a model.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import SHARED, cache_rows, user_env
from openai_stub import OpenAIStub

from s3synth.errors import S3Error
from s3synth.io import read_jsonl
from s3synth.llm import GenParams, Request, make_llm
from s3synth.llm.cache import LLMCache
from s3synth.llm.executor import make_executor
from s3synth.llm.ray_executor import host_port, on_this_machine

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 's3synth[ray]' (scripts/setup.sh does)")


@pytest.fixture(scope="module")
def started_cluster():
    """The module's Ray (starting one costs seconds), started as a user starts one: `ray start --head` (2
    CPUs) in a shell with no RAY_* variable (`user_env`: neither conftest's RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    nor the RAY_AUTH_MODE a local ray.init() puts in os.environ) and this user's HOME, whose
    ~/.ray/auth_token (written here when missing, as `ray get-auth-token --generate` and every local
    ray.init() write it) makes the cluster check every driver's token, as Ray >= 2.59 does by default. Its
    own --temp-dir (short: Ray's socket paths have a length limit) leaves /tmp/ray/ray_current_cluster
    alone; `--block` keeps its processes in the process group started here, which the teardown ends (`ray
    stop` would stop every Ray of the machine). Yields (the address `ray start` printed, HOME, temp dir)."""
    home = Path.home()
    token = home / ".ray" / "auth_token"
    if not (token.is_file() and token.stat().st_size):
        token.parent.mkdir(exist_ok=True)
        token.write_text(secrets.token_hex(32))
    temp = Path(tempfile.mkdtemp(prefix="s3r-"))
    log = temp / "start.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start",
                              "--head", "--block", "--port", "0", "--num-cpus", "2", "--include-dashboard=false",
                              "--object-store-memory", str(256 * 1024 ** 2), "--disable-usage-stats",
                              "--temp-dir", str(temp)],
                             env=user_env(home), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, printed = time.time() + 120, None
        while printed is None:      # "To add another node to this Ray cluster, run  ray start --address='IP:PORT'"
            printed = re.search(r"ray start --address='([^']+)'", log.read_text())
            assert p.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert "Token authentication is enabled for this Ray cluster" in log.read_text()
        yield printed.group(1), home, temp
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def local_ray(started_cluster):
    """This process as a driver of `started_cluster`, joined as Ray's `auto` joins (it finds the cluster in
    its temp dir and sends ~/.ray/auth_token). Yields the cluster's address, for drivers in other
    processes (`--ray-address`)."""
    address, _, temp = started_cluster
    ray.init(address="auto", _temp_dir=str(temp), log_to_driver=False, logging_level="WARNING")
    assert ray.get_runtime_context().gcs_address == address
    yield address
    ray.shutdown()


def run_command(gold, out, *extra, rounds: int = 0) -> list[str]:
    """`s3synth run` in a subprocess (the fake learner, no report): 24 seed examples from the OpenAI stub
    (`--base-url` in `extra`), then `rounds` extrapolation rounds."""
    return [sys.executable, "-c", "import fake_plugins; fake_plugins.main_without_reports()", "run",
            "--task", "rte", "--gold-eval", str(gold), "--llm", "openai:stub-model", "--learner", "fake",
            "--seed-size", "24", "--rounds", str(rounds), "--concurrency", "4", "--out", str(out), "-q", *extra]


STUB_KEY = {"OPENAI_BASE_URL": "", "OPENAI_API_KEY": "sk-test"}


@pytest.fixture(scope="module")
def module_stub():
    """One OpenAI stub for the module's `s3synth run`s: its URL is part of every cache key and request
    seed, so runs compared with `local_run` ask this one (`fresh(stub)` before each)."""
    with OpenAIStub() as stub:
        yield stub


def fresh(stub: OpenAIStub) -> OpenAIStub:
    """`stub` with no request recorded and none held."""
    stub.hold_after = None
    stub.release.clear()
    stub.received.clear()
    stub.answered.clear()
    return stub


@pytest.fixture(scope="module")
def local_run(module_stub, tmp_path_factory):
    """`run_command` with --executor local against `module_stub` (about a second), once per number of
    rounds: `local_run(rounds)` -> (gold file, run directory, the requests the stub got, as `body_id`s)."""
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not beside the repository")
    d = tmp_path_factory.mktemp("local-run")
    gold = gold_file(d, SHARED)
    done: dict[int, tuple] = {}

    def run(rounds: int) -> tuple:
        if rounds not in done:
            stub = fresh(module_stub)
            r = subprocess.run(run_command(gold, d / f"rounds-{rounds}", "--base-url", stub.url, rounds=rounds),
                               env=user_env(d, **STUB_KEY), capture_output=True, text=True, timeout=300, check=False)
            assert r.returncode == 0, r.stderr
            done[rounds] = gold, d / f"rounds-{rounds}", [body_id(b) for b in stub.bodies]
        return done[rounds]

    return run


def gold_file(tmp_path, shared_data, n=40):
    rows = read_jsonl(shared_data / "rte" / "validation.jsonl")[:n]
    p = tmp_path / "gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def cache_table(path) -> dict:
    """key -> (text, prompt tokens, completion tokens, finish reason) of every answer in a run's cache."""
    with sqlite3.connect(str(path)) as db:
        return {k: rest for k, *rest in db.execute(
            "SELECT key, text, prompt_tokens, completion_tokens, finish_reason FROM answers")}


def body_id(b: dict) -> str:
    return json.dumps([b.get("messages") or b.get("prompt"), b.get("seed")])


@pytest.mark.slow   # test_ray_address_printed_by_ray_start checks the same through `s3synth run`
def test_s3_round_on_ray_equals_local(local_ray, tmp_path, shared_data):
    """An S3 round in this process (RunConfig, S3.run) with `--executor ray` and `--executor local`."""
    from s3synth.config import RunConfig
    from s3synth.method import S3

    gold = gold_file(tmp_path, shared_data)
    with OpenAIStub() as stub:
        def run(executor, out, **ex):
            cfg = RunConfig(task="rte", gold_eval=str(gold), llm="openai:stub-model", learner="fake",
                            llm_options={"base_url": stub.url, "api_key_env": None, "concurrency": 4},
                            seed_size=12, rounds=1, seed=3, executor=executor, executor_options=ex)
            before = stub.count
            res = S3(cfg).run(tmp_path / out)
            return res, [body_id(b) for b in stub.bodies[before:]]

        ref, sent_local = run("local", "local")
        res, sent_ray = run("ray", "ray", actors=2)
    assert res["final"]["train_size"] == ref["final"]["train_size"] and ref["added"] > 0
    for name in ("seed.jsonl", "round-1/added.jsonl", "final/train.jsonl"):
        assert read_jsonl(tmp_path / "ray" / name) == read_jsonl(tmp_path / "local" / name), name
    assert cache_table(tmp_path / "ray" / "llm_cache.sqlite") == cache_table(tmp_path / "local" / "llm_cache.sqlite")
    assert sorted(sent_ray) == sorted(sent_local) and len(set(sent_ray)) == len(sent_ray)   # each request once
    m = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert m["invocations"][-1]["executor"]["name"] == "ray"
    assert json.loads((tmp_path / "local" / "manifest.json").read_text())["stages"].keys() == m["stages"].keys()
    for stage, st in m["stages"].items():   # same fingerprints: the executor is not an input of any stage
        assert st["fingerprint"] == json.loads((tmp_path / "local" / "manifest.json").read_text())[
            "stages"][stage]["fingerprint"], stage


def running(pid: int) -> bool:
    """Whether process `pid` runs (exited or a zombie: no)."""
    import psutil   # a dependency of Ray

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow       # a Ray job killed and resubmitted (about 10 s)
def test_killed_actor_mid_stage(local_ray, tmp_path):
    """SIGKILL one of two actors while requests hang at the server: its job fails, the driver sends the
    requests still unanswered in a new job; every request is answered once in the result, no prompt
    answered before the kill is sent again, and at most the requests in flight are repeated."""
    n, held_after = 24, 6
    reqs = [Request(messages=(("user", f"Write example number {i}."),), params=GenParams(max_tokens=16))
            for i in range(n)]
    with OpenAIStub() as stub:
        llm = make_llm("openai:stub-model", base_url=stub.url, api_key_env=None, concurrency=4,
                       cache=LLMCache(tmp_path / "cache.sqlite"))
        ex = llm.executor = make_executor("ray", actors=2)
        stub.hold_after = held_after
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(out=llm.generate(reqs)), daemon=True)
        t.start()
        deadline = time.time() + 120
        # 6 answered and committed by the driver, the next ones hanging at the server (each actor sends its
        # first request alone, a probe, then 2 at a time): wait until nothing new arrives for a second
        last, since = -1, time.time()
        while time.time() < deadline:
            c = stub.count
            if c != last:
                last, since = c, time.time()
            elif (c > held_after and stub.in_flight == c - held_after and time.time() - since > 1.0
                  and cache_rows(tmp_path / "cache.sqlite") == held_after):
                break
            time.sleep(0.1)
        assert cache_rows(tmp_path / "cache.sqlite") == held_after and stub.in_flight >= 2
        answered_before = {body_id(b) for b in stub.answered}
        n_before = stub.count
        pids_before = set(ex.answers_by_worker)
        victim = min(pids_before)
        os.kill(victim, signal.SIGKILL)
        # the held requests go free once the driver has seen the job fail and stopped its other actor (freed
        # before, that actor would send new requests, whose answers nobody reads: more repeats than in flight)
        deadline = time.time() + 60
        while (not ex.resubmitted or any(map(running, pids_before))) and time.time() < deadline:
            time.sleep(0.05)
        stub.hold_after = None
        stub.release.set()
        t.join(180)
        assert not t.is_alive(), "the stage did not finish after an actor was killed"
        llm.close()
    out = box["out"]
    sent = [body_id(b) for b in stub.bodies]
    repeats = len(sent) - len(set(sent))
    print(f"\nkilled actor: {len(sent)} requests sent, {len(stub.answered)} answered by the server, "
          f"{sum(c.error is None for c in out)} answers received, {repeats} repeats "
          f"({n_before - held_after} in flight at the kill), {ex.resubmitted} resubmitted in a new job")
    assert all(c.error is None for c in out)
    assert [c.text for c in out] == [f"answer to: {r.messages[-1][1][-30:]} #{llm.request_seed(llm.key(r))}"
                                     for r in reqs]        # every example from its own answer
    assert answered_before.isdisjoint(sent[n_before:])     # nothing answered before the kill is asked again
    assert repeats <= n_before - held_after                # at most what was in flight
    assert ex.resubmitted == n - held_after                # the new job got exactly the unanswered ones
    assert set(sent) == {body_id({"messages": [{"role": "user", "content": r.messages[0][1]}],
                                  "seed": llm.request_seed(llm.key(r))}) for r in reqs}
    assert set(ex.answers_by_worker) - pids_before         # new actors answered the rest
    assert cache_rows(tmp_path / "cache.sqlite") == n


@pytest.mark.slow       # two `s3synth run` processes on the cluster (about 12 s)
def test_killed_driver_resumes_from_the_cache(started_cluster, local_run, module_stub, tmp_path):
    """`kill -9` a `s3synth run --executor ray` mid-seed, run it again: no prompt answered before the kill
    is sent again, and the seed set equals that of an uninterrupted `--executor local` run. The driver
    joins the cluster of `ray start` at 127.0.0.1 and the port it printed, from a shell with no RAY_*
    variable (before, that was refused: Ray's driver sends its token for `auto` only)."""
    address, home, _ = started_cluster
    gold, ref, _ = local_run(0)
    env = user_env(home, **STUB_KEY)
    loopback = f"127.0.0.1:{host_port(address)[1]}"
    ray_flags = ("--executor", "ray", "--ray-address", loopback, "--executor-option", "actors=2")
    stub = fresh(module_stub)
    base = ("--base-url", stub.url)
    stub.hold_after = 10
    p = subprocess.Popen(run_command(gold, tmp_path / "run", *base, *ray_flags), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "run" / "llm_cache.sqlite"
    deadline = time.time() + 180
    last, since = -1, time.time()     # 10 answered, the next ones hanging: until nothing new arrives for 1 s
    while time.time() < deadline and p.poll() is None:
        c = stub.count
        if c != last:
            last, since = c, time.time()
        elif c > 10 and stub.in_flight == c - 10 and time.time() - since > 1.0 and cache_rows(db) >= 10:
            break
        time.sleep(0.1)
    p.kill()                               # SIGKILL: no clean-up of any kind
    p.wait(30)
    assert cache_rows(db) == 10, p.stderr.read().decode()[-2000:]
    answered_first = {body_id(b) for b in stub.answered}
    in_flight = stub.count - 10
    assert not (tmp_path / "run" / "seed.jsonl").exists()
    n_before = stub.count
    stub.hold_after = None
    stub.release.set()
    again = subprocess.run(run_command(gold, tmp_path / "run", *base, *ray_flags), check=False, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    sent = [body_id(b) for b in stub.bodies]
    sent_again = sent[n_before:]
    repeats = len(sent) - len(set(sent))
    print(f"\nkilled driver: {n_before} requests sent before the kill ({len(answered_first)} answered and "
          f"committed, {in_flight} in flight), {len(sent_again)} sent by the resumed run, {repeats} repeats")
    assert sent_again and answered_first.isdisjoint(sent_again)
    assert repeats <= in_flight
    assert read_jsonl(tmp_path / "run" / "seed.jsonl") == read_jsonl(ref / "seed.jsonl")
    assert cache_table(tmp_path / "run" / "llm_cache.sqlite") == cache_table(ref / "llm_cache.sqlite")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow       # two `s3synth run` processes, local and on the cluster (about 8 s)
def test_ray_address_printed_by_ray_start(started_cluster, local_run, module_stub, tmp_path):
    """`s3synth run --executor ray --ray-address` with the address `ray start --head` printed (the node's
    IP), on the machine of a cluster that checks tokens, from a shell with no RAY_* variable (Ray's driver
    sends its token for `auto` only: this driver was refused before): the same seed set, added set, final
    training set, cache and stage fingerprints as `--executor local`, and as many requests, each sent once.
    A port nothing listens at: exit 2 at once, with one line naming the cause and the ways out."""
    address, home, _ = started_cluster
    gold, ref, sent_local = local_run(1)
    assert on_this_machine(host_port(address)[0])
    closed = f"127.0.0.1:{free_port()}"
    stub = fresh(module_stub)
    base = ("--base-url", stub.url)
    env = user_env(home, **STUB_KEY)
    wrong = subprocess.Popen(run_command(gold, tmp_path / "wrong", *base, "--executor", "ray", "--ray-address", closed),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = subprocess.run(run_command(gold, tmp_path / "ray", *base, "--executor", "ray", "--ray-address", address,
                                       "--executor-option", "actors=1", rounds=1),
                           env=env, capture_output=True, text=True, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-3000:]
        err = wrong.communicate(timeout=120)[1]
    finally:
        wrong.kill()
        wrong.communicate()
    sent_ray = [body_id(b) for b in stub.bodies]
    assert len(sent_ray) == len(sent_local) and sorted(sent_ray) == sorted(sent_local)     # each once, as local
    assert len(read_jsonl(ref / "round-1" / "added.jsonl")) > 0
    for name in ("seed.jsonl", "round-1/added.jsonl", "final/train.jsonl"):
        assert read_jsonl(tmp_path / "ray" / name) == read_jsonl(ref / name), name
    assert cache_table(tmp_path / "ray" / "llm_cache.sqlite") == cache_table(ref / "llm_cache.sqlite")
    m, m_local = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "ray", ref))
    assert m["invocations"][-1]["executor"] == {"name": "ray", "address": address, "actors": 1, "cpus_per_actor": 1.0}
    # the executor is not an input of any stage: the same fingerprints
    assert {k: st["fingerprint"] for k, st in m["stages"].items()} == {
        k: st["fingerprint"] for k, st in m_local["stages"].items()}
    assert (wrong.returncode, err.splitlines()) == (2, [
        f"s3synth: error: --ray-address {closed}: nothing answers at {closed} (Connection refused) - pass the "
        "address `ray start --head` printed (ray start --address='IP:PORT'), or --ray-address auto on the head node"])


@pytest.mark.slow       # Ray retries a refused token for about 20 s before it gives up
def test_a_refused_token_is_one_line(started_cluster, local_run, module_stub, tmp_path):
    """A driver on the cluster's machine whose ~/.ray/auth_token is not the cluster's (another user's
    HOME), at the address `ray start` printed: exit 2, one line naming the cause and the ways out."""
    address, _, _ = started_cluster
    gold, _, _ = local_run(0)
    other = tmp_path / "other-home"
    (other / ".ray").mkdir(parents=True)
    (other / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    r = subprocess.run(run_command(gold, tmp_path / "run", "--base-url", fresh(module_stub).url, "--executor", "ray",
                                   "--ray-address", address),
                       env=user_env(other, **STUB_KEY), capture_output=True, text=True, timeout=300, check=False)
    assert (r.returncode, r.stderr.strip().splitlines()[-1]) == (2, (
        f"s3synth: error: the Ray cluster at {address} refused this driver: it checks a token (Ray >= 2.59 token "
        "authentication) and the token in ~/.ray/auth_token is not the cluster's - on the head node pass the address "
        "`ray start --head` printed or --ray-address auto; elsewhere give this driver the head's token: "
        "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<output of `ray get-auth-token` on the head>"))
    assert module_stub.count == 0         # refused before any request


@pytest.mark.slow
def test_embedded_model_on_ray_equals_local(local_ray, tmp_path):
    """A handful of few-shot requests to the embedded model: the same answers from 2 Ray actors (one
    llama.cpp engine each, 1 thread) as from this process."""
    pytest.importorskip("llama_cpp", reason="the embedded model needs llama-cpp-python (scripts/setup.sh)")
    prompt = ("Premise: The cat sat on the mat.\nHypothesis: A cat is sitting.\nLabel: entailment\n\n"
              "Premise: Rain fell all day in {city}.\nHypothesis:")
    reqs = [Request(prompt=prompt.format(city=c), params=GenParams(max_tokens=12, stop=("\n",)))
            for c in ("Paris", "Lima", "Oslo", "Cairo", "Quito", "Perth")]
    answers = {}
    for name, opts in (("local", {}), ("ray", {"actors": 2})):
        llm = make_llm("embedded", n_parallel=4, cache=LLMCache(tmp_path / f"{name}.sqlite"))
        llm.executor = make_executor(name, **opts)
        answers[name] = [(c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.error)
                         for c in llm.generate(reqs)]
        llm.close()
    assert answers["ray"] == answers["local"]
    assert all(a[4] is None and a[2] > 0 for a in answers["ray"])
    assert cache_table(tmp_path / "ray.sqlite") == cache_table(tmp_path / "local.sqlite")


@pytest.mark.slow       # a Ray job per wave until the budget stops it (about 5 s)
def test_budget_holds_on_ray(local_ray, tmp_path):
    """A token budget cuts every Ray wave to what it still allows: the same requests are sent as with the
    local executor, and the spend never passes the budget."""
    from s3synth.errors import BudgetExceeded
    from s3synth.llm import Budget
    from s3synth.llm.base import estimate_prompt_tokens

    reqs = [Request(prompt=f"Write example number {i:02d}.", params=GenParams(max_tokens=10)) for i in range(12)]
    limit = 5 * (estimate_prompt_tokens(reqs[0]) + 10)      # the worst case of 5 requests
    sent = {}
    with OpenAIStub() as stub:
        for name, opts in (("local", {}), ("ray", {"actors": 1})):
            cache = LLMCache(tmp_path / f"{name}.sqlite")
            llm = make_llm("openai:stub-model", base_url=stub.url, api_key_env=None, concurrency=2,
                           mode="completions", cache=cache, budget=Budget(max_tokens=limit))
            llm.executor = make_executor(name, **opts)
            before = stub.count
            with pytest.raises(BudgetExceeded):
                llm.generate(reqs)
            sent[name] = sorted(body_id(b) for b in stub.bodies[before:])
            spent = cache.spent()
            assert spent["prompt_tokens"] + spent["completion_tokens"] <= limit
            llm.close()
    assert 5 <= len(sent["ray"]) < len(reqs) and sent["ray"] == sent["local"]


def test_shards_keep_limits_over_the_cluster():
    """openai: every actor gets its share of the concurrency and rate limits; embedded: its cores."""
    llm = make_llm("openai:m", base_url="http://127.0.0.1:9/v1", api_key_env=None, concurrency=8, rpm=600, tpm=1e5)
    s = llm.shard(3, 1.0)
    assert s.stream and s.engines == 1 and s.options["concurrency"] == 2   # 8 over 3 actors: 2 + 2 + 2 in flight
    assert s.options["rpm"] * 3 == pytest.approx(600) and s.options["tpm"] * 3 == pytest.approx(1e5)
    assert llm.shard(2, 1.0).options["concurrency"] == 4 and llm.shard(16, 1.0).options["concurrency"] == 1
    e = make_llm("embedded", n_threads=2).shard(2, 1.0)
    assert e.stream and e.options["n_threads"] == 1
    r = Request(messages=(("system", "s"), ("user", "u")), params=GenParams(stop=("\n",)), sample_index=3)
    assert Request.from_payload(json.loads(json.dumps(r.payload()))) == r     # how a request travels to an actor


def test_which_token_a_driver_sends(tmp_path, monkeypatch):
    """What a `--ray-address` driver sends a cluster that checks tokens, by where the token is and where the
    cluster is (the text goes into the one-line error when the cluster refuses the driver). This process
    imported Ray already, so it can no longer turn Ray's token mode on, and says so; a fresh `s3synth`
    process does (test_ray_address_printed_by_ray_start)."""
    from s3synth.llm.ray_executor import send_token

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)     # local_ray's ray.init() may have set RAY_AUTH_MODE
    monkeypatch.setenv("HOME", str(tmp_path))
    assert send_token("127.0.0.1:6379") == "this driver sent no token (none found here)"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 64)
    assert send_token("198.51.100.7:6379") == ("this driver sent no token (~/.ray/auth_token is not sent to "
                                               "another machine)")
    assert send_token("127.0.0.1:6379") == ("this driver sent no token (Ray was imported before "
                                            "RAY_AUTH_MODE=token could be set)")
    assert send_token("auto") == "the token in ~/.ray/auth_token is not the cluster's"
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert send_token("127.0.0.1:6379") == "this driver sent no token (RAY_AUTH_MODE=disabled)"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "u" * 64)
    assert send_token("198.51.100.7:6379") == "the token in RAY_AUTH_TOKEN is not the cluster's"


def test_bad_executor_settings_are_one_line(tmp_path):
    from click.testing import CliRunner

    from s3synth.cli import cli

    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"premise": "P.", "hypothesis": "H.", "label": 0}) + "\n")
    base = ["run", "--task", "rte", "--gold-eval", str(gold), "--out", str(tmp_path / "r")]
    for extra, words in ((["--ray-address", "auto"], "needs --executor ray"),
                         (["--executor", "ray", "--executor-option", "actors=0"], "actors=0: must be >= 1"),
                         (["--executor", "ray", "--executor-option", "nodes=2"], "unknown option nodes"),
                         (["--executor", "ray", "--executor-option", "resubmit=-2"], "resubmit=-2: -1 (no limit) or >= 0"),
                         (["--executor", "ray", "--ray-address", "somewhere"], "write auto, HOST:PORT"),
                         (["--executor", "ray", "--ray-address", "head:port"], "write auto, HOST:PORT"),
                         (["--llm", "openai:m", "--batch", "--executor", "ray"], "exclude each other"),
                         (["--executor", "spark"], "unknown executor 'spark'; available: ")):
        r = CliRunner().invoke(cli, base + extra)
        assert r.exit_code == 2 and words in r.output, (extra, r.output)
    assert not (tmp_path / "r").exists()


def test_vllm_processor_config_from_our_options(local_ray, tmp_path):
    """The Ray Data LLM processor of `vllm:MODEL` under --executor ray: replicas, tensor/pipeline sizes and
    the seed from our options, failed rows kept; a request row carries its sampling parameters and seed.
    Built only (vLLM itself is not needed for that)."""
    pytest.importorskip("aiohttp", reason="ray.data.llm needs aiohttp (pip install 's3synth[ray]')")
    from ray.data.llm import build_processor

    from s3synth.llm.ray_executor import vllm_preprocess, vllm_processor_config

    llm = make_llm("vllm:/models/llama-8b", seed=7, tensor_parallel_size=2, pipeline_parallel_size=2,
                   max_model_len=4096)
    cfg = vllm_processor_config(llm, replicas=3, batch_size=32, chat=True, accelerator_type="H100")
    assert cfg.concurrency == 3 and cfg.batch_size == 32 and cfg.should_continue_on_error
    assert cfg.accelerator_type == "H100" and cfg.model_source == "/models/llama-8b"
    e = cfg.engine_kwargs
    assert (e["tensor_parallel_size"], e["pipeline_parallel_size"], e["seed"], e["max_model_len"]) == (2, 2, 7, 4096)
    proc = build_processor(cfg, preprocess=vllm_preprocess)
    stage = proc.stages["vLLMEngineStage"]
    assert stage.fn_constructor_kwargs["engine_kwargs"]["tensor_parallel_size"] == 2
    assert stage.fn_constructor_kwargs["should_continue_on_error"] is True
    req = Request(messages=(("user", "hi"),), params=GenParams(max_tokens=9, temperature=0.5, stop=("\n",)))
    row = vllm_preprocess({"index": 4, "payload": json.dumps(req.payload()), "seed": 1234})
    assert row["messages"] == [{"role": "user", "content": "hi"}] and row["index"] == 4
    assert row["sampling_params"] == {"n": 1, "seed": 1234, "temperature": 0.5, "top_p": 0.95, "max_tokens": 9,
                                      "stop": ["\n"], "repetition_penalty": 1.15}
    # the driver of a Ray run needs no GPU or vLLM itself: the engines run on the actors
    (tmp_path / "config.json").write_text("{}")
    local = make_llm(f"vllm:{tmp_path}")
    with pytest.raises(S3Error, match="needs vLLM|CUDA GPU"):
        local.identity()
    on_ray = make_llm(f"vllm:{tmp_path}")
    on_ray.executor = make_executor("ray", actors=2)
    assert on_ray.identity() == {"backend": "vllm", "model": str(tmp_path)}


def test_vllm_on_ray_data_llm_gpu(local_ray, tmp_path):
    """A real vLLM stage on Ray Data LLM: needs a CUDA GPU, vLLM (pip install 'ray[llm]') and a local model
    folder in $S3SYNTH_VLLM_TEST_MODEL; answers equal the single-process vllm backend's for the same seeds."""
    try:
        import torch
        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        pytest.skip("no CUDA GPU: the vLLM stage on Ray Data LLM runs only on a GPU machine")
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install 'ray[llm]')")
    model = os.environ.get("S3SYNTH_VLLM_TEST_MODEL")
    if not model or not Path(model).is_dir():
        pytest.skip("set S3SYNTH_VLLM_TEST_MODEL to a local model folder (e.g. Qwen2.5-0.5B-Instruct)")
    reqs = [Request(messages=(("user", f"Name a city starting with {c}."),), params=GenParams(max_tokens=16))
            for c in "ABCDEFGH"]
    llm = make_llm(f"vllm:{model}", gpu_memory_utilization=0.4, cache=LLMCache(tmp_path / "ray.sqlite"))
    llm.executor = make_executor("ray", actors=1, batch_size=4)
    out = llm.generate(reqs)
    assert all(c.error is None and c.text for c in out)
    assert cache_rows(tmp_path / "ray.sqlite") == len(reqs)
