"""`transformers:PATH_OR_NAME`: a causal LM run by Hugging Face transformers, CPU or GPU.

Weights are read from local safetensors files only (`local_files_only`, `use_safetensors`): a
folder, or a Hugging Face Hub name, downloaded once into the Hugging Face cache (safetensors,
config and tokenizer files; option `revision`, `--llm-revision`) before the run writes anything,
or found there (`--offline`: the cache only). The commit it resolved to is part of the answer
cache key and recorded in manifest.json. Chat requests go through the
tokenizer's chat template; plain prompts are tokenized as they are. Requests with the same
max_tokens and stop strings are generated together (left padding), `n_parallel` at a time.

Seeds: every request has its own sampling seed. transformers draws one random stream for a whole
batch, so sampling is done here instead: a logits processor picks each row's token with the shared
numpy sampler of the embedded backend (`llama_batch.pick`: repeat penalty over the last 64 tokens
of prompt + answer but the newline, top-k 40, top-p, min-p 0.05, temperature) from that row's own generator, and
generate() runs greedy over the result. An answer so depends on its request and seed only, up to
the last bits of the logits that padding and batch size may change (rarely a different token).
Not handled: quantised weights (bitsandbytes, GPTQ), multi-GPU sharding, pickle (.bin) weights.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import LLMError
from .base import LLM, Completion, Request
from .llama_batch import SamplerSettings, find_stop, pick

SAMPLER = "s3synth-1"


class TransformersLLM(LLM):
    """`--llm transformers:/path/to/model` or `transformers:ORG/NAME` (a Hub name, downloaded once)."""

    backend = "transformers"
    weights_hint = "--llm transformers:DIR"
    batch_size = 32

    @dataclass
    class Options:
        """Settings of `--llm transformers:DIR_OR_HUB_NAME` (`-o KEY=VALUE`)."""

        device: str | None = None       # default: cuda when there is one, else cpu
        n_parallel: int = 8             # sequences generated together
        revision: str | None = None     # Hub revision (branch, tag or commit sha) of a model named by its Hub name

    def __init__(self, model: str, **kw):
        super().__init__(model, **kw)
        self.device_name = self.options.device
        self.n_parallel = max(1, int(self.options.n_parallel))
        self._model = self._tok = self._device = None

    def identity(self) -> dict:
        return {"backend": self.backend, "model": self.model, "sampler": SAMPLER, **self.source_identity()}

    def _load(self):
        if self._model is not None:
            return
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError:
            raise LLMError("the transformers backend needs torch and transformers: "
                           "pip install 's3synth[learn]'") from None
        dev = self.device_name or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        self.fetch()
        src = self._source.path
        try:
            tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, use_safetensors=True,
                                                         dtype=dtype)
        except (OSError, ValueError) as e:
            raise LLMError(f"transformers could not load '{self.model}' from local safetensors files: "
                           f"{str(e).splitlines()[0]}") from None
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self._model, self._tok, self._device = model.to(dev).eval(), tok, dev

    def _prompt_ids(self, req: Request) -> list[int]:
        tok = self._tok
        if req.is_chat:
            if not tok.chat_template:
                raise LLMError(f"{self.model} has no chat template; send completion prompts instead")
            text = tok.apply_chat_template([{"role": r, "content": c} for r, c in req.messages],
                                           add_generation_prompt=True, tokenize=False)
            return tok(text, add_special_tokens=False)["input_ids"]
        return tok(req.prompt)["input_ids"]

    def _generate_batch(self, requests: Sequence[Request], seeds: Sequence[int]) -> list[Completion]:
        self._load()
        out: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        limit = getattr(self._model.config, "max_position_embeddings", None)
        ids: dict[int, list[int]] = {}
        for j, req in enumerate(requests):
            try:
                ids[j] = self._prompt_ids(req)
            except (LLMError, ValueError) as e:
                out[j] = Completion(text="", error=f"transformers: {e}")
                self.emit(j, out[j])
                continue
            if limit and len(ids[j]) + req.params.max_tokens > limit:
                out[j] = Completion(text="", prompt_tokens=len(ids[j]), error=(
                    f"transformers: prompt of {len(ids[j])} tokens + {req.params.max_tokens} new tokens "
                    f"exceeds the model's {limit} positions"))
                self.emit(j, out[j])
                continue
            groups[(req.params.max_tokens, tuple(req.params.stop))].append(j)
        for (max_tokens, stop), members in groups.items():
            for k in range(0, len(members), self.n_parallel):
                part = members[k:k + self.n_parallel]
                for j, c in zip(part, self._run(part, requests, seeds, ids, max_tokens, stop)):
                    out[j] = c
                    self.emit(j, c)
        return out  # type: ignore[return-value]

    def _run(self, part, requests, seeds, ids, max_tokens, stop) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tok, model = self._tok, self._model
        width = max(len(ids[j]) for j in part)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids[j])) + ids[j] for j in part], device=self._device)
        mask = torch.tensor([[0] * (width - len(ids[j])) + [1] * len(ids[j]) for j in part], device=self._device)
        nl = tuple(tok("\n", add_special_tokens=False)["input_ids"][-1:])
        settings = [SamplerSettings(temperature=requests[j].params.temperature, top_p=requests[j].params.top_p,
                                    repeat_penalty=max(requests[j].params.repeat_penalty, 1.1), exempt=nl)
                    for j in part]
        proc = RowSampler(settings, [seeds[j] for j in part], [width - len(ids[j]) for j in part])
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
            else tok.eos_token_id
        cfg = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos,
                               stop_strings=list(stop) or None)
        with torch.inference_mode():
            gen = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=cfg,
                                 logits_processor=LogitsProcessorList([proc]), tokenizer=tok)
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        res = []
        for r, j in enumerate(part):
            new = gen[r, width:].tolist()
            n = next((i for i, t in enumerate(new) if t in eos_ids), len(new))
            text = tok.decode(new[:n], skip_special_tokens=True)
            cut = find_stop(text, stop)
            finish = "stop" if (n < len(new) or cut >= 0) else "length"
            res.append(Completion(text=text[:cut] if cut >= 0 else text, prompt_tokens=len(ids[j]),
                                  completion_tokens=min(n + (n < len(new)), len(new)), finish_reason=finish))
        return res

    def close(self) -> None:
        self._model = self._tok = None


class RowSampler:
    """A transformers logits processor that samples each row with its own numpy generator and turns
    the scores into a one-hot choice (generate() then runs greedy)."""

    def __init__(self, settings: Sequence[SamplerSettings], seeds: Sequence[int], pads: Sequence[int]):
        self.settings, self.pads = list(settings), list(pads)
        self.rngs = [np.random.default_rng(s) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        out = torch.full_like(scores, float("-inf"))
        for r, s in enumerate(self.settings):
            row = scores[r].float()
            hist = input_ids[r, self.pads[r]:][-s.last_n:]
            if s.repeat_penalty != 1.0 and hist.numel():
                h = torch.unique(hist)
                if s.exempt:
                    h = h[~torch.isin(h, torch.tensor(s.exempt, device=h.device))]
                v = row[h]
                row = row.clone()
                row[h] = torch.where(v > 0, v / s.repeat_penalty, v * s.repeat_penalty)
            k = min(s.top_k, row.shape[0]) if s.top_k > 0 else row.shape[0]
            vals, idx = torch.topk(row, k)
            tok = pick(idx.cpu().numpy(), vals.cpu().numpy(), s, self.rngs[r])
            out[r, tok] = 0.0
        return out
