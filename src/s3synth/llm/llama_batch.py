"""Batched generation on llama.cpp's low-level API, and the numpy sampler shared by local backends.

`BatchEngine` keeps `n_parallel` sequences in flight, each in its own KV stream (non-unified
cache). A prompt pays only for the tokens after the longest prefix it shares either with what its
slot already holds or with the shared-prefix stream (sequence 0, the common prefix of the call's
prompts, evaluated once and copied); then one forward pass decodes one token of every live sequence.

Outputs do not depend on `n_parallel` or on which prompts run together: prompt tokens are always
evaluated in chunks aligned to absolute positions (multiples of `CHUNK`), so a token's keys and
values come from the same computation whether they were computed in this slot, in another, or in
the prefix stream; flash attention is off and every sequence has its own stream, so the attention
of one sequence never sees another's cells (llama.cpp's CPU kernels then give bit-identical logits
for a row alone or in a batch: tests/test_llm_local.py checks it).

Not handled: grammars, logprobs, embeddings, recurrent or sliding-window models (cross-stream KV
copies), GPU offload, prompts longer than the per-sequence context (answered with an error).
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..errors import LLMError

CHUNK = 32          # prompt tokens are evaluated in chunks [k*CHUNK, (k+1)*CHUNK): part of the output identity


# ------------------------------------------------------------------------------------ sampler
@dataclass(frozen=True)
class SamplerSettings:
    """llama.cpp's order: repeat penalty, top-k, top-p, min-p, temperature, one draw.
    top_k 40 and min_p 0.05 are llama-cpp-python's defaults (the earlier embedded backend used them)."""

    temperature: float = 0.8
    top_p: float = 0.95
    repeat_penalty: float = 1.1
    top_k: int = 40
    min_p: float = 0.05
    last_n: int = 64        # the repeat penalty looks at the last 64 tokens of prompt + answer


def penalize(logits: np.ndarray, history: Sequence[int], penalty: float, last_n: int = 64) -> np.ndarray:
    """A copy of `logits` with each distinct token of the last `last_n` of `history` penalised once:
    a positive logit is divided by `penalty`, a negative one multiplied (llama.cpp's rule)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or not len(history) or last_n <= 0:
        return out
    ids = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    v = out[ids]
    out[ids] = np.where(v > 0, v / penalty, v * penalty)
    return out


def top_candidates(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest logits (all when k <= 0) as (ids, values), sorted by value, ties by id."""
    n = logits.shape[0]
    if 0 < k < n:
        part = np.argpartition(-logits, k - 1)[:k]
        part = part[np.lexsort((part, -logits[part]))]
    else:
        part = np.lexsort((np.arange(n), -logits))
    return part, logits[part]


def pick(ids: np.ndarray, values: np.ndarray, s: SamplerSettings, rng) -> int:
    """One token from candidates sorted by logit (descending): top-p, min-p, temperature, then a draw
    with `rng.random()` (temperature <= 0: the first candidate)."""
    if s.temperature <= 0 or len(ids) == 1:
        return int(ids[0])
    v = values.astype(np.float64)
    n = len(v)
    if s.top_p < 1.0:
        p = np.exp(v - v[0])
        cum = np.cumsum(p / p.sum())
        n = min(int(np.searchsorted(cum, s.top_p, side="left")) + 1, n)
    if s.min_p > 0.0:
        n = max(int(np.count_nonzero(v[:n] >= v[0] + np.log(s.min_p))), 1)
    q = np.exp((v[:n] - v[0]) / s.temperature)
    cum = np.cumsum(q)
    j = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return int(ids[min(j, n - 1)])


def sample(logits: np.ndarray, history: Sequence[int], s: SamplerSettings, rng) -> int:
    """Repeat penalty over `history` (prompt + answer so far), top-k, then `pick`."""
    lg = penalize(logits, history, s.repeat_penalty, s.last_n)
    ids, values = top_candidates(lg, s.top_k)
    return pick(ids, values, s, rng)


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def render_chat(template: str, messages: Sequence[tuple[str, str]], bos: str = "", eos: str = "") -> str:
    """A chat as a prompt string through the model's Jinja chat template (generation prompt added)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise LLMError(f"chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": r, "content": c} for r, c in messages], add_generation_prompt=True,
        bos_token=bos, eos_token=eos, raise_exception=raise_exception)


# ------------------------------------------------------------------------------------ engine
@dataclass
class Job:
    tokens: list[int]
    settings: SamplerSettings
    seed: int
    max_tokens: int
    stop: tuple = ()


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: str | None = None


@dataclass
class _Slot:
    seq: int
    tokens: list[int] = field(default_factory=list)   # what its KV stream holds, position p at cell p
    job: int | None = None
    history: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    rng: object = None
    logits: np.ndarray | None = None


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class BatchEngine:
    """A GGUF model with `n_parallel` sequence slots of `n_ctx` tokens each (plus the prefix stream)."""

    def __init__(self, path: str, *, n_ctx: int = 2048, n_parallel: int = 8, n_threads: int | None = None):
        try:
            import llama_cpp.llama_cpp as L
        except ImportError:
            raise LLMError("the embedded backend needs llama-cpp-python: run scripts/setup.sh "
                           "(it compiles once, about 5 minutes)") from None
        self.L = L
        self.n_ctx, self.n_parallel = n_ctx, max(1, int(n_parallel))
        _quiet(L)
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise LLMError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cp = L.llama_context_default_params()
        n_seq = self.n_parallel + 1
        cp.n_ctx = n_ctx * n_seq
        cp.n_seq_max = n_seq
        cp.kv_unified = False                       # one stream per sequence
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.n_batch = cp.n_ubatch = max(CHUNK, n_seq)
        threads = n_threads or os.cpu_count() or 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            raise LLMError("llama.cpp could not create a context (out of memory? lower n_ctx or n_parallel)")
        self.n_ctx = L.llama_n_ctx_seq(self.ctx) if hasattr(L, "llama_n_ctx_seq") else n_ctx
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(cp.n_batch, 0, 1)
        self.slots = [_Slot(seq=i + 1) for i in range(self.n_parallel)]
        self.prefix: list[int] = []                 # what sequence 0 holds
        self._pieces: dict[int, bytes] = {}
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))

    # -- text ---------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Tokens of `text`; special tokens written in the text (e.g. <|im_start|>) are parsed."""
        data = text.encode("utf-8")
        add = self.add_bos if add_bos is None else add_bos
        buf = (self.L.llama_token * (len(data) + 8))()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add, True)
        if n < 0:
            buf = (self.L.llama_token * (-n))()
            n = self.L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        p = self._pieces.get(token)
        if p is None:
            buf = ctypes.create_string_buffer(64)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.L.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            p = self._pieces[token] = buf.raw[:n]
        return p

    def is_eog(self, token: int) -> bool:
        return bool(self.L.llama_vocab_is_eog(self.vocab, token))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def token_text(self, token: int) -> str:
        t = self.L.llama_vocab_get_text(self.vocab, token)
        return t.decode("utf-8", "replace") if t else ""

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        template = self.meta("tokenizer.chat_template")
        if not template:
            raise LLMError("this GGUF has no chat template; send completion prompts instead")
        bos = self.token_text(self.L.llama_vocab_bos(self.vocab))
        eos = self.token_text(self.L.llama_vocab_eos(self.vocab))
        return render_chat(template, messages, bos, eos)

    # -- low level ------------------------------------------------------------------------------
    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise LLMError(f"llama_decode failed with code {rc}")

    def _logits(self, i: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()

    def _extend(self, seq: int, held: list[int], tokens: Sequence[int], want_last: bool) -> np.ndarray | None:
        """Evaluate tokens[len(held):] on `seq` in position-aligned chunks; `held` grows in place."""
        start = len(held)
        while start < len(tokens):
            end = min((start // CHUNK + 1) * CHUNK, len(tokens))
            self._decode([(tokens[k], k, seq, want_last and k == len(tokens) - 1) for k in range(start, end)])
            held.extend(tokens[start:end])
            start = end
        return self._logits(-1) if want_last else None

    def _truncate(self, seq: int, held: list[int], n: int) -> None:
        self.L.llama_memory_seq_rm(self.mem, seq, n, -1)
        del held[n:]

    def _set_prefix(self, tokens: list[int]) -> None:
        keep = common_prefix(self.prefix, tokens) // CHUNK * CHUNK
        self._truncate(0, self.prefix, keep)
        self._extend(0, self.prefix, tokens, want_last=False)

    def _start(self, slot: _Slot, job: Job) -> None:
        """Put the job's prompt in the slot's KV stream (reusing what it can) and keep its logits."""
        limit = (len(job.tokens) - 1) // CHUNK * CHUNK     # the chunk holding the last token is recomputed
        own = min(common_prefix(slot.tokens, job.tokens) // CHUNK * CHUNK, limit)
        pre = min(common_prefix(self.prefix, job.tokens) // CHUNK * CHUNK, limit)
        if pre > own:       # copying a stream is cheaper than evaluating a chunk
            self.L.llama_memory_seq_cp(self.mem, 0, slot.seq, -1, -1)
            slot.tokens = list(self.prefix)
            self._truncate(slot.seq, slot.tokens, pre)
        else:
            self._truncate(slot.seq, slot.tokens, own)
        slot.logits = self._extend(slot.seq, slot.tokens, job.tokens, want_last=True)

    # -- generation -----------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], on_done: Callable[[int, Result], None] | None = None) -> list[Result]:
        """Answer every job; `on_done(j, result)` is called as each one finishes."""
        results: list[Result | None] = [None] * len(jobs)

        def finish(j: int, r: Result) -> None:
            results[j] = r
            if on_done is not None:
                on_done(j, r)

        queue = deque()
        for j, job in enumerate(jobs):
            if len(job.tokens) == 0:
                finish(j, Result("", 0, 0, None, error="empty prompt"))
            elif len(job.tokens) >= self.n_ctx:
                finish(j, Result("", len(job.tokens), 0, None, error=(
                    f"prompt of {len(job.tokens)} tokens does not fit the context of {self.n_ctx} tokens")))
            else:
                queue.append(j)
        if len(queue) > 1:       # the prefix shared by every prompt of the call, evaluated once
            toks = [jobs[j].tokens for j in queue]
            n = min(common_prefix(toks[0], t) for t in toks[1:]) // CHUNK * CHUNK
            if n >= CHUNK and n > common_prefix(self.prefix, toks[0]) // CHUNK * CHUNK:
                self._set_prefix(toks[0][:n])
        live: list[_Slot] = []
        while queue or live:
            for slot in self.slots:              # fill free slots in queue order
                if not queue:
                    break
                if slot.job is not None:
                    continue
                j = queue.popleft()
                job = jobs[j]
                slot.job, slot.out, slot.raw = j, [], bytearray()
                slot.history, slot.rng = list(job.tokens), np.random.default_rng(job.seed)
                self._start(slot, job)
                live.append(slot)
            step = []
            for slot in list(live):
                job = jobs[slot.job]
                tok = sample(slot.logits, slot.history, job.settings, slot.rng)
                done = self._advance(slot, job, tok)
                if done is not None:
                    finish(slot.job, done)
                    slot.job, slot.logits = None, None
                    live.remove(slot)
                else:
                    step.append(slot)
            if step:
                self._decode([(s.out[-1], len(s.tokens), s.seq, True) for s in step])
                for i, s in enumerate(step):
                    s.tokens.append(s.out[-1])
                    s.logits = self._logits(i)
        return results  # type: ignore[return-value]

    def _advance(self, slot: _Slot, job: Job, tok: int) -> Result | None:
        """Add a sampled token to the slot; a Result when the answer is complete."""
        n_prompt = len(job.tokens)
        if self.is_eog(tok):
            return Result(slot.raw.decode("utf-8", "ignore"), n_prompt, len(slot.out), "stop")
        slot.out.append(tok)
        slot.history.append(tok)
        slot.raw += self.piece(tok)
        text = slot.raw.decode("utf-8", "ignore")
        cut = find_stop(text, job.stop)
        if cut >= 0:
            return Result(text[:cut], n_prompt, len(slot.out), "stop")
        if len(slot.out) >= job.max_tokens or len(slot.tokens) >= self.n_ctx:
            return Result(text, n_prompt, len(slot.out), "length")
        return None

    def close(self) -> None:
        L = getattr(self, "L", None)
        if L is None:
            return
        if getattr(self, "batch", None) is not None:
            L.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_QUIET = None


def _quiet(L) -> None:
    """Silence llama.cpp's log (it is chatty at debug level on every graph build)."""
    global _QUIET
    if _QUIET is None:
        @L.llama_log_callback
        def _drop(level, text, user_data):
            return None
        _QUIET = _drop
        L.llama_log_set(_QUIET, ctypes.c_void_p(0))
