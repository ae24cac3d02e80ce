"""Shared fixtures. `QueuedLLM` is a fake backend for unit tests only (never shipped to users).

The test plugins of fake_plugins.py (learner `fake`, LLM backend `echo`) are registered like any
third-party plugin: through entry points of a distribution `s3synth_test_plugins`, whose dist-info
folder is written to a temporary folder put on sys.path here (and on PYTHONPATH for subprocesses:
`plugin_env()`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# a Ray started in this process (ray.init, e.g. Ray Train's test) binds and advertises 127.0.0.1 only; Ray
# reads this when it is first imported, so it is set before any test module imports it. On Linux "0" makes
# Ray take 127.0.0.1 as this node's IP (services.get_node_ip_address), keep a driver's 127.0.0.1:PORT as
# given (not swapped for the node's IP) and refuse `ray start --address`. Users do not set it: the cluster
# of test_ray_executor.py is started by `ray start` without it (user_env), as are the `s3synth run`s that
# join it, and s3synth sets it itself for its private Ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

ENTRY_POINTS = """[s3synth.learners]
fake = fake_plugins:FakeLearner

[s3synth.llms]
echo = fake_plugins:EchoLLM
"""


def _register_test_plugins() -> Path:
    """A dist-info folder declaring the test plugins' entry points, on sys.path (removed at exit)."""
    where = Path(tempfile.mkdtemp(prefix="s3synth-test-plugins-"))
    info = where / "s3synth_test_plugins-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: s3synth_test_plugins\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    atexit.register(shutil.rmtree, where, ignore_errors=True)
    sys.path.insert(0, str(where))
    return where


PLUGIN_DIR = _register_test_plugins()


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): a worker per core, at most 4 (each imports torch; the stub servers and the
    Ray cluster gain nothing from more)."""
    return max(1, min(4, os.cpu_count() or 1))


def plugin_env(**extra) -> dict:
    """os.environ for a subprocess that should see the test plugins (`--learner fake`, `--llm echo:M`)."""
    path = os.pathsep.join([str(PLUGIN_DIR), str(TESTS)] + ([os.environ["PYTHONPATH"]]
                                                            if os.environ.get("PYTHONPATH") else []))
    return {**os.environ, "PYTHONPATH": path, **extra}


def user_env(home, **extra) -> dict:
    """os.environ as a user's plain shell has it, for a subprocess: no Hugging Face, transformers or Ray variable
    (the suite sets some for itself, see above), HOME at `home` (so ~/.cache is the test's own), the test plugins
    importable; then `extra` (e.g. HF_ENDPOINT at a local stand-in of the Hub, or HF_HOME)."""
    env = {k: v for k, v in plugin_env().items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "RAY_")) and k != "XDG_CACHE_HOME"}
    return {**env, "HOME": str(home), **extra}


from s3synth.llm.base import LLM, Completion, Request  # noqa: E402


class QueuedLLM(LLM):
    """Answers from a queue of strings, or from `fn(request) -> str`; records every request it answered."""

    backend = "fake"
    default_prompt_style = "fewshot"

    def __init__(self, answers: Sequence[str] | Callable[[Request], str] = (), **kw):
        super().__init__(kw.pop("model", "queued"), **kw)
        self._answers = answers if callable(answers) else list(answers)
        self.seen: list[Request] = []

    def _generate_batch(self, requests, seeds):
        out = []
        for r in requests:
            self.seen.append(r)
            if callable(self._answers):
                text = self._answers(r)
            else:
                if not self._answers:
                    raise AssertionError("QueuedLLM ran out of answers")
                text = self._answers.pop(0)
            if text is None:
                out.append(Completion(text="", error="injected failure"))
            else:
                out.append(Completion(text=text, prompt_tokens=len((r.prompt or str(r.messages)).split()),
                                      completion_tokens=len(text.split())))
        return out


def cache_rows(path) -> int:
    """Answers stored in an LLM cache file (0 when it is missing or not readable yet)."""
    import sqlite3

    try:
        with sqlite3.connect(str(path), timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not beside the repository")
    return SHARED


@pytest.fixture
def fake_embedder(monkeypatch):
    """Reports written during the test embed with fake_plugins.fake_embed instead of MiniLM."""
    from fake_plugins import fake_embed, use_fake_embedder

    use_fake_embedder(monkeypatch)
    return fake_embed


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """(run dir, result, RunConfig) of a finished two-round imdb run with its report, shared by the report
    tests (test_report_export, test_report_browser); a test that changes it works on a copy."""
    from test_report_export import make_run

    tmp = tmp_path_factory.mktemp("plain")
    res, cfg, _ = make_run(tmp, tmp / "run")
    return tmp / "run", res, cfg


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory):
    """(bench dir, bench result) of a small bench with its reports, shared like `small_run`."""
    from test_report_export import make_bench

    tmp = tmp_path_factory.mktemp("bench")
    return tmp / "bench", make_bench(tmp)


@pytest.fixture(scope="module")
def quiet_single_thread():
    """No progress bars and one torch thread for a module of tiny-model tests (two threads slow down many-fold
    when other processes share the cores); both restored afterwards."""
    import torch

    from s3synth import progress

    was, threads = progress.is_quiet(), torch.get_num_threads()
    progress.set_quiet(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    progress.set_quiet(was)
