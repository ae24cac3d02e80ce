"""LLM backends by name: `embedded`, `openai:MODEL`, `transformers:PATH`, `vllm:PATH`, and any
registered under the entry-point group `s3synth.llms`."""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import LLMError
from .base import LLM, Budget, Completion, GenParams, Request  # noqa: F401

# Built-in backends (also registered as entry points, exactly as a plugin would be).
BUILTIN = {
    "embedded": "s3synth.llm.embedded:EmbeddedLLM",
    "openai": "s3synth.llm.openai_compat:OpenAICompatLLM",
    "transformers": "s3synth.llm.transformers_backend:TransformersLLM",
    "vllm": "s3synth.llm.vllm_backend:VLLMBackend",
}


def _load(target: str):
    import importlib

    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def backend_class(backend: str):
    for ep in entry_points(group="s3synth.llms"):
        if ep.name == backend:
            return ep.load()
    if backend in BUILTIN:
        return _load(BUILTIN[backend])
    names = sorted({*BUILTIN, *(ep.name for ep in entry_points(group="s3synth.llms"))})
    raise LLMError(f"unknown LLM backend '{backend}'; available: {', '.join(names)} (write BACKEND:MODEL)")


def make_llm(spec: str, **kwargs) -> LLM:
    """Example: make_llm("openai:gpt-4o-mini", base_url=..., cache=cache, seed=1)."""
    backend, _, model = spec.partition(":")
    cls = backend_class(backend)
    if not model:
        model = getattr(cls, "default_model", None)
        if not model:
            raise LLMError(f"the {backend} backend needs a model: --llm {backend}:MODEL")
    return cls(model, **kwargs)
