"""Shared fixtures. `QueuedLLM` is a fake backend for unit tests only (never shipped to users)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "tests"))

from s3synth.llm.base import LLM, Completion, Request  # noqa: E402


class QueuedLLM(LLM):
    """Answers from a queue of strings, or from `fn(request) -> str`; records every request it answered."""

    backend = "fake"

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


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is not beside the repository")
    return SHARED
