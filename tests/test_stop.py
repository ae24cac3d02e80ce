"""Ctrl-C and SIGTERM stop a run carefully (s3synth.stop), met as a user meets them: a real `s3synth run`
(a subprocess) against the local OpenAI-compatible stub.

The stub holds every request after the first HELD_AFTER, so requests are in flight when the signal
comes; the test lets them go once the run's line says it waits for them. The first SIGINT: nothing new
is sent, the answers in flight are saved, exit 130; the same command then finishes, and the server
has produced exactly as many answers as for an uninterrupted run of that command (nothing paid twice),
with `--executor local` and `--executor ray` (slow: two runs that start a local Ray). A second SIGINT
stops at once. (SIGTERM, exit 143: see test_rundir_damaged.py.)

In this process: the anthropic backend sends nothing new after the first SIGINT; the wait is bounded;
a signal with no request in flight stops at once; the handlers are put back afterwards, and put back
after ray.init replaces the SIGTERM handler.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from conftest import cache_rows, plugin_env
from openai_stub import OpenAIStub

import s3synth.cli
import s3synth.progress
from s3synth.cli import cli
from s3synth.llm import GenParams, Request, make_llm
from s3synth.llm.cache import LLMCache

ROWS = [{"premise": f"The harbour of Port{i} holds {i + 2} ships and a lighthouse.",
         "hypothesis": f"Port{i} has ships." if i % 2 == 0 else f"Port{i} has no lighthouse.",
         "label": "entailment" if i % 2 == 0 else "not_entailment"} for i in range(24)]
MAIN = "import s3synth.cli as c; c._write_report = lambda *a, **k: None; c.main()"   # no report: not tested here
HELD_AFTER = 3          # requests the stub answers before it holds the rest
CONCURRENCY = 8         # the openai backend's default: requests in flight
STOP_LINE = ("s3synth: interrupted: sending no new LLM requests, waiting up to 30 s for those in flight so that "
             "their answers are saved (press Ctrl-C again to stop at once)")
RESUME_LINE = "s3synth: interrupted; run the same command again to resume"


def run_args(gold, out, url, *extra) -> list[str]:
    return ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "openai:stub", "--learner", "fake",
            "--seed-size", "12", "--rounds", "1", "--out", str(out), "-q", "--base-url", url, *extra]


@pytest.fixture
def gold(tmp_path):
    p = tmp_path / "gold.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def settled(stub: OpenAIStub) -> int:
    """Answers the stub has produced, once it has finished every request it received."""
    deadline = time.time() + 60
    while stub.in_flight and time.time() < deadline:
        time.sleep(0.02)
    assert stub.in_flight == 0
    return len(stub.answered)


def whole_run(stub: OpenAIStub, gold, out, monkeypatch) -> int:
    """Answers the stub produces for an uninterrupted run (in this process, `--executor local`: cache keys
    and per-request seeds do not depend on the executor, so every executor sends the same requests)."""
    monkeypatch.setattr(s3synth.cli, "_write_report", lambda *a, **k: None)
    before = settled(stub)
    r = CliRunner().invoke(cli, run_args(gold, out, stub.url))
    assert r.exit_code == 0, r.output
    return settled(stub) - before


def start_and_signal(stub: OpenAIStub, cmd: list[str], out, exact_in_flight: int | None):
    """Start `cmd`, wait until HELD_AFTER answers are in its cache and requests are held at the stub
    (`exact_in_flight` of them, where known), send SIGINT; returns the process and its first s3synth line."""
    n0 = stub.count
    stub.hold_after = n0 + HELD_AFTER
    env = plugin_env(OPENAI_BASE_URL="", OPENAI_API_KEY="sk-test")
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    want = n0 + HELD_AFTER + (exact_in_flight or 1)
    deadline = time.time() + 120
    while not (stub.count >= want and cache_rows(out / "llm_cache.sqlite") >= HELD_AFTER):
        assert p.poll() is None and time.time() < deadline, f"no requests held; stderr: {p.stderr.read()}"
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    line = ""
    while not line.startswith("s3synth:"):     # Ray logs a warning or two first
        line = p.stderr.readline().rstrip("\n")
        if not line and p.poll() is not None:
            break
    return p, line


def release(stub: OpenAIStub) -> None:
    stub.hold_after = None
    stub.release.set()


def interrupted_then_resumed(stub: OpenAIStub, cmd: list[str], out, exact_in_flight: int | None):
    """(answers the server produced for the interrupted run, of them in its cache, for both runs, the
    interrupted run's s3synth lines)."""
    before = settled(stub)
    p, line = start_and_signal(stub, cmd, out, exact_in_flight)
    release(stub)       # the run waits for these: their answers come now
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail(f"no exit within 120 s of SIGINT; stderr: {p.communicate()[1]}")
    lines = [line] + [x for x in err.splitlines() if x.startswith("s3synth:")]
    assert p.returncode == 130, err
    interrupted, saved = settled(stub) - before, cache_rows(out / "llm_cache.sqlite")
    again = subprocess.run(cmd, env=plugin_env(OPENAI_BASE_URL="", OPENAI_API_KEY="sk-test"), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    return interrupted, saved, settled(stub) - before, lines


def test_ctrl_c_saves_the_answers_in_flight(tmp_path, gold, monkeypatch):
    with OpenAIStub(delay=0.02) as stub:
        whole = whole_run(stub, gold, tmp_path / "whole", monkeypatch)
        out = tmp_path / "run"
        cmd = [sys.executable, "-c", MAIN, *run_args(gold, out, stub.url)]
        interrupted, saved, total, lines = interrupted_then_resumed(stub, cmd, out, CONCURRENCY)
    print(f"\nlocal executor: uninterrupted {whole} answers; interrupted {interrupted} ({saved} saved) + resumed "
          f"{total - interrupted} = {total}")
    assert total == whole == 28
    assert interrupted == saved == HELD_AFTER + CONCURRENCY     # the 8 in flight at the signal were waited for
    assert lines == [STOP_LINE, RESUME_LINE]


@pytest.mark.slow      # two runs that each start a local Ray: ~45 s on 2 cores
def test_ctrl_c_saves_the_answers_in_flight_on_ray(tmp_path, gold, monkeypatch):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 's3synth[ray]'")
    with OpenAIStub(delay=0.02) as stub:
        whole = whole_run(stub, gold, tmp_path / "whole", monkeypatch)
        out = tmp_path / "run"
        cmd = [sys.executable, "-c", MAIN, *run_args(gold, out, stub.url, "--executor", "ray",
                                                     "--executor-option", "actors=2")]
        interrupted, saved, total, lines = interrupted_then_resumed(stub, cmd, out, None)
    print(f"\nray executor: uninterrupted {whole} answers (local); interrupted {interrupted} ({saved} saved) + "
          f"resumed {total - interrupted} = {total}")
    assert total == whole == 28
    assert interrupted == saved and interrupted > HELD_AFTER
    assert lines == [STOP_LINE, RESUME_LINE]


def test_a_second_ctrl_c_stops_at_once(tmp_path, gold):
    """The run does not wait for the held requests: it exits while the stub still holds them, without the
    line of a wait that ran out, and keeps only the answers it had."""
    out = tmp_path / "run"
    with OpenAIStub() as stub:
        cmd = [sys.executable, "-c", MAIN, *run_args(gold, out, stub.url)]
        p, line = start_and_signal(stub, cmd, out, CONCURRENCY)
        try:
            assert line == STOP_LINE
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
            assert stub.in_flight == CONCURRENCY    # still held at the server when the run had exited
        finally:
            release(stub)
            p.kill()
    assert p.returncode == 130
    assert err.splitlines() == [RESUME_LINE]
    assert cache_rows(out / "llm_cache.sqlite") == HELD_AFTER


def test_anthropic_sends_nothing_new_after_a_ctrl_c(tmp_path, monkeypatch, capsys):
    """In this process: the first SIGINT while 2 requests are held at the stub (concurrency 2): no other
    request is sent, the 2 are answered and saved, then KeyboardInterrupt."""
    pytest.importorskip("anthropic")
    from anthropic_stub import AnthropicStub

    from s3synth import stop

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.setattr(s3synth.progress, "_QUIET", True)      # no progress bar on stderr
    reqs = [Request(messages=(("user", f"Write example number {i}."),), params=GenParams(max_tokens=16))
            for i in range(12)]
    cache_file = tmp_path / "cache.sqlite"

    def interrupt():
        deadline = time.time() + 60
        while not (len(stub.received) >= HELD_AFTER + 2 and cache_rows(cache_file) >= HELD_AFTER):
            if time.time() > deadline:
                return stub.release.set()
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)
        while not stop.stopping() and time.time() < deadline:
            time.sleep(0.02)
        stub.release.set()

    with AnthropicStub() as stub:
        stub.hold_after = HELD_AFTER
        llm = make_llm("anthropic:claude-test", base_url=stub.base_url, concurrency=2, cache=LLMCache(cache_file))
        threading.Thread(target=interrupt, daemon=True).start()
        with stop.handling_signals(), pytest.raises(KeyboardInterrupt):
            llm.generate(reqs)
        llm.close()
        sent = len(stub.received)
    assert sent == len(stub.messages) == cache_rows(cache_file) == HELD_AFTER + 2
    assert capsys.readouterr().err.splitlines() == [STOP_LINE]


def test_a_signal_with_nothing_in_flight_stops_at_once_and_the_handlers_are_put_back():
    from s3synth import stop

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop.handling_signals():
        assert signal.getsignal(signal.SIGINT) not in before
        with pytest.raises(stop.Terminated):    # training, writing: no request to wait for
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    box = {}

    def off_the_main_thread():
        with stop.handling_signals():
            box["handler"] = signal.getsignal(signal.SIGINT)

    th = threading.Thread(target=off_the_main_thread)
    th.start()
    th.join()
    assert box == {"handler": before[0]}    # Python sets handlers in the main thread only: nothing changed


def test_sigterm_stays_careful_after_ray_starts(monkeypatch):
    """ray.init sets its own SIGTERM handler (sys.exit(15): exit code 15 and the answers in flight lost, as
    main did); the executor puts the careful one back."""
    from types import SimpleNamespace

    from s3synth import stop
    from s3synth.llm import ray_executor

    def init(**kw):
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))      # what ray.init does

    fake = SimpleNamespace(is_initialized=lambda: False, init=init, shutdown=lambda: None,
                           data=SimpleNamespace(DataContext=SimpleNamespace(get_current=SimpleNamespace)))
    monkeypatch.setattr(ray_executor, "_import_ray", lambda local=False: fake)
    with stop.handling_signals():
        ours = signal.getsignal(signal.SIGTERM)
        ray_executor.RayExecutor().ray()
        assert signal.getsignal(signal.SIGTERM) is ours


def test_the_wait_for_the_requests_in_flight_is_bounded(capsys):
    """Requests in flight that do not finish within the wait: the signal again, i.e. a stop at once."""
    from s3synth import stop

    with stop.handling_signals(), pytest.raises(KeyboardInterrupt):
        with stop.waiting_for_in_flight(0.2):
            signal.raise_signal(signal.SIGINT)
            assert stop.stopping()
            time.sleep(30)      # a request that hangs
    assert not stop.stopping()
    assert capsys.readouterr().err.splitlines() == [
        STOP_LINE.replace("30 s", "0.2 s"),
        "s3synth: the LLM requests in flight did not finish within 0.2 s; stopping without them"]
