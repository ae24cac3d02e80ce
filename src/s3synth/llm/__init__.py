"""LLM backends by name: `embedded`, `openai:MODEL`, `anthropic:MODEL`, `transformers:DIR_OR_HUB_NAME`,
`vllm:DIR_OR_HUB_NAME`, and any registered under the entry-point group `s3synth.llms` (the built-ins are
registered there too)."""

from __future__ import annotations

from ..errors import LLMError
from ..plugins import load_plugin
from .base import LLM, Budget, Completion, GenParams, Request  # noqa: F401


def backend_class(backend: str):
    return load_plugin("llms", backend, hint=" (write BACKEND:MODEL)")


def make_llm(spec: str, **kwargs) -> LLM:
    """Example: make_llm("openai:gpt-4o-mini", base_url=..., cache=cache, seed=1); keyword arguments other
    than cache, seed, cache_mode and budget are the backend's options (unknown ones are refused)."""
    backend, _, model = spec.partition(":")
    cls = backend_class(backend)
    if not model:
        model = getattr(cls, "default_model", None)
        if not model:
            raise LLMError(f"the {backend} backend needs a model: --llm {backend}:MODEL")
    return cls(model, **kwargs)
