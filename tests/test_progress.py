"""Progress bars (s3synth.progress) as `LLM.generate` drives them: a resumed stage starts at its cached
answers and its rate counts only the answers generated now; a bar with nothing done yet still moves."""

from __future__ import annotations

import re

import pytest
from conftest import QueuedLLM

from s3synth import progress
from s3synth.llm.base import GenParams, Request
from s3synth.llm.cache import LLMCache

REQS = [Request(prompt=f"write example {i}", params=GenParams(max_tokens=10)) for i in range(20)]


@pytest.fixture
def bars_on(monkeypatch):
    """Bars shown (other test modules turn them off), on a clock the test moves: a list of one time."""
    was = progress.is_quiet()
    progress.set_quiet(False)
    now = [0.0]
    monkeypatch.setattr(progress, "clock", lambda: now[0])
    yield now
    progress.set_quiet(was)


class TenSecondBatches(QueuedLLM):
    """Every batch takes 10 s of the test's clock, its answers arriving together at the end (as a parallel
    engine's do)."""

    def __init__(self, now, *a, **kw):
        super().__init__(*a, **kw)
        self.now = now

    def _generate_batch(self, requests, seeds):
        self.now[0] += 10.0
        return super()._generate_batch(requests, seeds)


def test_a_resumed_stage_starts_at_its_cached_answers_and_rates_only_new_ones(tmp_path, bars_on, capsys):
    cache = LLMCache(tmp_path / "c.sqlite")
    TenSecondBatches(bars_on, lambda r: "a b c", cache=cache).generate(REQS[:12], desc="seed")
    capsys.readouterr()
    llm = TenSecondBatches(bars_on, lambda r: "a b c", cache=cache)
    llm.generate(REQS, desc="seed")                  # 12 from the cache, 8 generated in one 10 s batch
    assert len(llm.seen) == 8
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"seed \(12 cached\) [━╸ ]+ 20/20 0\.80 req/s 0:00:10 eta 0:00:00", line), line


def test_a_bar_with_nothing_done_yet_shows_a_spinner_and_its_time(bars_on, capsys):
    with progress.bar(12, "rationales", "req"):
        bars_on[0] = 31.0
    line = capsys.readouterr().err.strip()
    spinner = "[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]"
    assert re.fullmatch(spinner + r" rationales [━╸ ]+ 0/12 \? req/s 0:00:31 eta -:--:--", line), line


def test_rate_leaves_out_what_the_bar_started_with():
    assert progress.rate(52, 40, 30.0, 92) == (0.4, 100.0)
    assert progress.rate(40, 40, 30.0, 92) == (None, None)
    assert progress.rate(5, 0, 0.0, 10) == (None, None)
