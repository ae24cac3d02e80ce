"""Batched generation on llama.cpp's low-level API, and the numpy sampler shared by local backends.

`BatchEngine` keeps `n_parallel` sequences in flight, each in its own KV stream (non-unified
cache), and decodes one token of every live sequence per forward pass. A new prompt pays only for
the tokens after the longest prefix already computed in any stream (its own, or another one's,
copied): the few-shot demonstrations of a stage are evaluated once per slot at most. The rest of
the prompt goes in as few calls as fit `CHUNK` tokens (small calls cost up to 1.5x per token).

Outputs do not depend on `n_parallel` or on which prompts run together: with flash attention off
and one stream per sequence, llama.cpp's CPU kernels compute every row of a matrix product and
every attention row on its own, so a token's keys, values and logits are the same bits whether it
was evaluated alone, in a chunk of any length, in another stream or beside other sequences
(tests/test_llm_local.py checks this on logits and on whole answers). With flash attention on,
prompt chunking does change the bits (measured), so it stays off.

Not handled: grammars, logprobs, embeddings, recurrent or sliding-window models (whole-stream KV
copies), GPU offload, prompts longer than the per-sequence context (answered with an error).
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import LLMError

CHUNK = 256         # most prompt tokens per llama_decode call


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
    exempt: tuple = ()      # tokens never penalised (the newline: llama.cpp's penalize_nl=false)


def penalize(logits: np.ndarray, history: Sequence[int], penalty: float, last_n: int = 64,
             exempt: Sequence[int] = ()) -> np.ndarray:
    """A copy of `logits` with each distinct token of the last `last_n` of `history` (but `exempt`)
    penalised once: a positive logit is divided by `penalty`, a negative one multiplied (llama.cpp)."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or not len(history) or last_n <= 0:
        return out
    ids = np.unique(np.asarray(history[-last_n:], dtype=np.int64))
    if len(exempt):
        ids = ids[~np.isin(ids, np.asarray(exempt, dtype=np.int64))]
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
    lg = penalize(logits, history, s.repeat_penalty, s.last_n, s.exempt)
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
    """One sequence: its KV stream (position p at cell p) and the job it is answering."""

    seq: int
    tokens: list[int] = field(default_factory=list)   # what the stream holds
    prompt: tuple | None = None                       # the last prompt evaluated here, and its logits
    prompt_logits: np.ndarray | None = None
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
    """A GGUF model with `n_parallel` sequence slots of `n_ctx` tokens each."""

    def __init__(self, path: str, *, n_ctx: int = 2048, n_parallel: int = 8, n_threads: int | None = None):
        try:
            import llama_cpp.llama_cpp as L
        except ImportError:
            raise LLMError("the embedded backend needs llama-cpp-python: run scripts/setup.sh "
                           "(it compiles once, about 5 minutes)") from None
        self.L = L
        self.n_parallel = max(1, int(n_parallel))
        _quiet(L)
        load_cpu_backend(L)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise LLMError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * self.n_parallel
        cp.n_seq_max = self.n_parallel
        cp.kv_unified = False                       # one stream per sequence
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.n_batch = cp.n_ubatch = max(CHUNK, self.n_parallel)
        cp.n_threads = cp.n_threads_batch = n_threads or os.cpu_count() or 1
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            L.llama_model_free(self.model)
            self.model = None
            raise LLMError("llama.cpp could not create a context (out of memory? lower n_ctx or n_parallel)")
        self.n_ctx = int(L.llama_n_ctx_seq(self.ctx))
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(cp.n_batch, 0, 1)
        self.slots = [_Slot(seq=i) for i in range(self.n_parallel)]
        self._pieces: dict[int, bytes] = {}
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self.newline = int(L.llama_vocab_nl(self.vocab))
        self.stats = {"prompt_evaluated": 0, "prompt_reused": 0, "decode_steps": 0, "copies": 0}

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
            p = self._pieces[token] = buf.raw[:max(n, 0)]
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

    def _truncate(self, s: _Slot, n: int) -> None:
        self.L.llama_memory_seq_rm(self.mem, s.seq, n, -1)
        del s.tokens[n:]
        if s.prompt is not None and len(s.prompt) > n:
            s.prompt, s.prompt_logits = None, None

    def _start(self, slot: _Slot, tokens: list[int]) -> None:
        """Put a prompt in the slot's stream, reusing the longest prefix computed in any stream (copied
        when it is in another one), and keep the logits of its last token."""
        key = tuple(tokens)
        best, best_n, hit = slot, -1, False
        for s in [slot] + [x for x in self.slots if x is not slot]:
            if s.prompt == key and s.tokens[:len(tokens)] == tokens:
                best, best_n, hit = s, len(tokens), True     # the same prompt: its logits too
                break
            n = min(common_prefix(s.tokens, tokens), len(tokens) - 1)   # the last token gives the logits
            if n > best_n + (8 if s is not slot else 0):      # a copy must save a few tokens
                best, best_n = s, n
        if best is not slot:
            self.L.llama_memory_seq_cp(self.mem, best.seq, slot.seq, -1, -1)   # the whole stream
            slot.tokens = list(best.tokens)
            slot.prompt, slot.prompt_logits = best.prompt, best.prompt_logits
            self.stats["copies"] += 1
        self._truncate(slot, best_n)
        self.stats["prompt_reused"] += best_n
        if hit:
            slot.logits = slot.prompt_logits.copy()
            return
        for start in range(best_n, len(tokens), CHUNK):
            end = min(start + CHUNK, len(tokens))
            self._decode([(tokens[k], k, slot.seq, k == end - 1) for k in range(start, end)])
            slot.tokens.extend(tokens[start:end])
            self.stats["prompt_evaluated"] += end - start
        slot.logits = self._logits(-1)
        slot.prompt, slot.prompt_logits = key, slot.logits.copy()

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
            elif job.max_tokens <= 0:
                finish(j, Result("", len(job.tokens), 0, "length"))
            elif len(job.tokens) >= self.n_ctx:
                finish(j, Result("", len(job.tokens), 0, None, error=(
                    f"prompt of {len(job.tokens)} tokens does not fit the context of {self.n_ctx} tokens")))
            else:
                queue.append(j)
        for slot in self.slots:
            slot.job, slot.logits = None, None
        try:
            self._loop(jobs, queue, finish)
        except BaseException:       # a failed decode (or an interrupt) leaves the streams unknown: start afresh
            self.L.llama_memory_clear(self.mem, True)
            for slot in self.slots:
                slot.tokens, slot.prompt, slot.prompt_logits, slot.job = [], None, None, None
            raise
        return results  # type: ignore[return-value]

    def _loop(self, jobs: Sequence[Job], queue: deque, finish: Callable[[int, Result], None]) -> None:
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
                self._start(slot, job.tokens)
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
                self.stats["decode_steps"] += 1
                for i, s in enumerate(step):
                    s.tokens.append(s.out[-1])
                    s.logits = self._logits(i)

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
_BACKEND_LOADED = False
_VARIANT = None           # the CPU variant loaded by load_cpu_backend (None: linked in)


def _loaded_ggml() -> str | None:
    """The path of the libggml that llama.cpp's library was linked to, as loaded in this process (a wheel
    holds copies, not links, of libggml.so and libggml.so.0: loading the other copy would make a second
    backend registry that llama.cpp never sees)."""
    try:
        with open(f"/proc/{os.getpid()}/maps", encoding="utf-8") as f:
            for line in f:
                path = line.split()[-1]
                if "/libggml.so" in path:
                    return path
    except OSError:
        pass
    return None


# Variants whose matrix kernels use AMX tiles: in the VMs this project runs on, ggml's AMX path stops the
# process with SIGILL (a tile instruction before the tile configuration); skipped unless asked for.
AMX_VARIANTS = ("sapphirerapids",)


def load_cpu_backend(L) -> str | None:
    """With a llama.cpp built with dynamic backends (GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON; not what
    scripts/setup.sh builds: measured no faster here, and its zen4 variant not batch-invariant - README),
    load the best variant this CPU runs: the highest `ggml_backend_score` (0 = an instruction it lacks)
    among libggml-cpu-*.so, AMX variants left out unless S3SYNTH_GGML_AMX=1. A build with the CPU backend
    linked in has it registered already and nothing is done. Returns the variant's file, if one was loaded."""
    global _BACKEND_LOADED
    if _BACKEND_LOADED:
        return None
    lib_dir = Path(L.__file__).parent / "lib"
    try:
        ggml = ctypes.CDLL(_loaded_ggml() or str(lib_dir / "libggml.so"))
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        if ggml.ggml_backend_reg_count() > 0:
            _BACKEND_LOADED = True
            return None
        ggml.ggml_backend_load.restype = ctypes.c_void_p
        ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    except (OSError, AttributeError):
        return None
    skip = () if os.environ.get("S3SYNTH_GGML_AMX") == "1" else AMX_VARIANTS
    only = os.environ.get("S3SYNTH_GGML_CPU_VARIANT")        # e.g. haswell: this variant or an error
    best, best_score = None, 0
    for d in (lib_dir, lib_dir.parent.parent / "bin"):     # pip puts the variants in site-packages/bin
        for f in sorted(d.glob("libggml-cpu-*.so")):
            name = f.stem.removeprefix("libggml-cpu-")
            if (only and name != only) or (not only and name in skip):
                continue
            try:
                score_fn = ctypes.CDLL(str(f)).ggml_backend_score
                score_fn.restype = ctypes.c_int
                score = score_fn()
            except (OSError, AttributeError):
                continue
            if score > best_score:
                best, best_score = f, score
    if best is None or not ggml.ggml_backend_load(str(best).encode()):
        raise LLMError("llama.cpp was built with dynamic CPU backends but none could be loaded (no usable "
                       "libggml-cpu-*.so beside it); reinstall it with scripts/setup.sh")
    global _VARIANT
    _BACKEND_LOADED, _VARIANT = True, best.stem.removeprefix("libggml-cpu-")
    return str(best)


def _quiet(L) -> None:
    """Silence llama.cpp's log (it is chatty at debug level on every graph build)."""
    global _QUIET
    if _QUIET is None:
        @L.llama_log_callback
        def _drop(level, text, user_data):
            return None
        _QUIET = _drop
        L.llama_log_set(_QUIET, ctypes.c_void_p(0))
