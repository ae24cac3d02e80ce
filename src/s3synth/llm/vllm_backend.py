"""`vllm:PATH_OR_NAME`: vLLM's offline engine on a GPU (`pip install 's3synth[vllm]'`).

A Hub name is downloaded by s3synth (`s3synth.hub`: safetensors, config and tokenizer files, at the
option `revision` / `--llm-revision`, the cache only under `--offline`) before the run writes
anything, and vLLM is given the local folder: it never downloads on its own. The commit is part of
the answer cache key and recorded in manifest.json.

vLLM is imported only when the first batch is generated. Plain prompts go to `LLM.generate`,
chat requests to `LLM.chat` (the model's chat template); every request carries its own
`SamplingParams(seed=...)`, so an answer depends on its request and seed, not on its batch
neighbours (up to vLLM's own batch-size numerics); its repetition penalty is vLLM's (over
prompt and answer, not llama.cpp's last 64 tokens). vLLM schedules the whole batch itself
(continuous batching), so `batch_size` is large; answers are cached as each call returns.
Under `--executor ray` a stage runs on Ray Data LLM instead (s3synth.llm.ray_executor): `actors`
replicas of this engine, each on tensor x pipeline parallel size GPUs.
A request with a `response_schema` (`--per-call N`) is decoded under vLLM's structured outputs:
`SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))` (vLLM >= 0.10.2; the only
form from 0.12), or `guided_decoding=GuidedDecodingParams(json=schema)` on older versions.
Not handled: LoRA adapters, regex/grammar/choice constraints, CPU-only vLLM builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from ..errors import LLMError
from .base import LLM, Completion, Request


class VLLMBackend(LLM):
    """`--llm vllm:/path/to/model` or `vllm:ORG/NAME` (a Hub name, downloaded once by s3synth)."""

    backend = "vllm"
    weights_hint = "--llm vllm:DIR"
    batch_size = 256
    supports_schema = True

    @dataclass
    class Options:
        """Settings of `--llm vllm:DIR_OR_HUB_NAME` (`-o KEY=VALUE`), passed to vLLM's engine."""

        gpu_memory_utilization: float = 0.85
        max_model_len: int | None = None
        dtype: str = "auto"
        tensor_parallel_size: int = 1   # GPUs one engine's layers are split over
        pipeline_parallel_size: int = 1     # pipeline stages of one engine (GPUs = tensor x pipeline)
        revision: str | None = None     # Hub revision (branch, tag or commit sha) of a model named by its Hub name

    def __init__(self, model: str, **kw):
        super().__init__(model, **kw)
        o = self.options
        gpu_memory_utilization, max_model_len, dtype = o.gpu_memory_utilization, o.max_model_len, o.dtype
        self.engine_kwargs = {"gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype,
                              "tensor_parallel_size": o.tensor_parallel_size,
                              "pipeline_parallel_size": o.pipeline_parallel_size}
        if max_model_len:
            self.engine_kwargs["max_model_len"] = max_model_len
        self._llm = None
        self._sp = None

    def fetch(self) -> None:
        if self._source is None and getattr(self.executor, "local_engine", True):
            self.check_runtime()    # before a download of many GB that could not be used here
        super().fetch()             # (under --executor ray the GPUs are on the actors: nothing to check here)

    @staticmethod
    def check_runtime() -> None:
        """LLMError unless vLLM is installed and a CUDA GPU is visible (vLLM itself is imported later)."""
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise LLMError("the vllm backend needs vLLM: pip install 's3synth[vllm]' "
                           "(Linux with an NVIDIA GPU)")
        try:
            import torch
            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            raise LLMError("the vllm backend needs a CUDA GPU and none is visible; use --llm embedded or "
                           "--llm transformers:DIR_OR_HUB_NAME on this machine")

    def identity(self) -> dict:
        return {"backend": self.backend, "model": self.model, **self.source_identity()}

    def _load(self):
        if self._llm is not None:
            return self._llm
        self.check_runtime()
        self.fetch()
        try:
            import vllm
        except ImportError as e:
            raise LLMError(f"the vllm backend needs vLLM, which does not import here ({e}): pip install "
                           "'s3synth[vllm]' (Linux with an NVIDIA GPU)") from None
        path = self._source.path        # a local folder: vLLM does not download (nor bypass --offline)
        try:
            self._llm = vllm.LLM(model=path, tokenizer=path, seed=self.seed, **self.engine_kwargs)
        except Exception as e:  # vLLM raises many kinds; one clear line for the user
            first = str(e).splitlines()[0] if str(e) else ""
            raise LLMError(f"vLLM could not load '{self.model}': {type(e).__name__}: {first}") from None
        self._sp = vllm.SamplingParams
        self._structured = structured_outputs_kind(vllm)
        return self._llm

    def sampling_params(self, req: Request, seed: int):
        p = req.params
        kw = {}
        if p.response_schema is not None:
            kw = structured_kwargs(self._structured, p.response_schema)
        return self._sp(n=1, seed=seed, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens,
                        stop=list(p.stop) or None, repetition_penalty=max(p.repeat_penalty, 1.0), **kw)

    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        llm = self._load()
        out: list[Completion | None] = [None] * len(requests)
        plain = [j for j, r in enumerate(requests) if not r.is_chat]
        chat = [j for j, r in enumerate(requests) if r.is_chat]
        for idx, is_chat in ((plain, False), (chat, True)):
            if not idx:
                continue
            params = [self.sampling_params(requests[j], seeds[j]) for j in idx]
            try:
                if is_chat:
                    convs = [[{"role": r, "content": c} for r, c in requests[j].messages] for j in idx]
                    results = llm.chat(convs, params, use_tqdm=False)
                else:
                    results = llm.generate([requests[j].prompt for j in idx], params, use_tqdm=False)
            except ValueError as e:        # e.g. a prompt longer than max_model_len
                for j in idx:
                    out[j] = Completion(text="", error=f"vllm: {e}")
                    self.emit(j, out[j])
                continue
            for j, res in zip(idx, results):
                o = res.outputs[0]
                out[j] = Completion(text=o.text, prompt_tokens=len(res.prompt_token_ids or []),
                                    completion_tokens=len(o.token_ids), finish_reason=o.finish_reason)
                self.emit(j, out[j])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self._llm = None


def structured_outputs_kind(vllm_module) -> tuple[str, type] | None:
    """("structured_outputs", StructuredOutputsParams) on vLLM >= 0.10.2, ("guided_decoding",
    GuidedDecodingParams) before, None when neither exists (then schemas are not enforced)."""
    sp_mod = getattr(vllm_module, "sampling_params", None)
    for field, cls_name in (("structured_outputs", "StructuredOutputsParams"),
                            ("guided_decoding", "GuidedDecodingParams")):
        cls = getattr(sp_mod, cls_name, None) or getattr(vllm_module, cls_name, None)
        if cls is not None:
            return field, cls
    return None


def structured_kwargs(kind: tuple[str, type] | None, schema_json: str) -> dict:
    """SamplingParams keyword arguments that constrain the answer to the JSON schema `schema_json`.

    Example: structured_kwargs(("structured_outputs", StructuredOutputsParams), '{"type": "object"}')
    -> {"structured_outputs": StructuredOutputsParams(json={"type": "object"})}"""
    if kind is None:
        return {}
    field, cls = kind
    return {field: cls(json=json.loads(schema_json))}
