"""LLM throughput: s3synth's LLM backends against bare clients on the same model, in one run.

    .venv/bin/python benchmarks/llm_throughput.py [--requests 32] [--concurrency 4] [--threads 2] [--repeats 4]

Rows (one function each, registered in ROWS; `--rows` picks them, the table printer prints them):
- openai-bare: a bare concurrent httpx.AsyncClient sending exactly the bodies s3synth sends (same
  prompts, sampling seeds and concurrency) to a local llama.cpp server (llama-cpp-python's own
  OpenAI-compatible server with the embedded SmolLM2 GGUF, started here);
- openai-s3synth: `OpenAICompatLLM.generate()` with the cache off, against the same server.
- embedded-single / embedded-batched: the embedded backend (`--threads` threads, Q8_0 weights) with
  n_parallel 1 and 16 on few-shot RTE seed prompts (4 demonstrations + query, sorted as the pipeline
  sends them); the summary gives the ratio and how many answers are identical;
  embedded-batched-q4_1: the batch engine on the packaged Q4_1 file;
  embedded-legacy: the baseline, llama-cpp-python's create_completion one request at a time on the
  packaged Q4_1 file (its own sampler, so other texts); embedded-legacy-q8_0: that loop on Q8_0.
The requests are the RTE seed prompts a run sends with `--llm openai:...` (the paper's chat
template, 48 max tokens), on real premises. The rows run `--repeats` times in A B, B A, ... order
(the machine is shared; interleaving keeps the comparison fair); the summary takes each row's
median, and the s3synth overhead = 1 - s3synth / bare, in completion tokens/s and requests/s.

To add a row (e.g. the embedded backend single-stream vs batched): write `def row_x(ctx) -> Result`
and register it in ROWS; `ctx.server_url()` starts the server only for rows that need it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rte" / "train.jsonl"
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

MODEL = "smollm2"


@dataclass
class Result:
    row: str
    requests: int
    concurrency: int
    seconds: float
    prompt_tokens: int
    completion_tokens: int
    failed: int = 0

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tok_per_s(self) -> float:
        return self.completion_tokens / self.seconds


@dataclass
class Context:
    """What the rows share: settings, the requests, and a llama.cpp server started on first use."""

    args: argparse.Namespace
    requests: list = field(default_factory=list)
    _server: subprocess.Popen | None = None
    _url: str | None = None

    def server_url(self) -> str:
        if self._url is None:
            self._url = start_server(self.args.threads, self)
        return self._url

    def close(self) -> None:
        if self._server is not None:
            self._server.terminate()
            try:
                self._server.wait(15)
            except subprocess.TimeoutExpired:
                self._server.kill()


def start_server(threads: int, ctx: Context) -> str:
    from s3synth.llm.embedded import embedded_model_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(tempfile.gettempdir()) / f"llm_throughput_server_{port}.log", "wb")
    ctx._server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", str(threads)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ctx._server.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited ({ctx._server.returncode}); see {log.name}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"llama_cpp.server not ready after 120 s; see {log.name}")


def seed_requests(n: int, offset: int = 0) -> list:
    """n RTE seed requests as a `--llm openai:...` run builds them (paper style), on real premises."""
    from s3synth.data import load_examples
    from s3synth.method.prompts import PromptBuilder
    from s3synth.tasks import load_task

    task = load_task("rte")
    builder = PromptBuilder(task, style="paper")
    pool = load_examples(DATA, task)
    reqs = []
    for i in range(offset, offset + n):
        ex = pool[i % len(pool)]
        label = task.label_names[i % 2]
        reqs.append(builder.build("seed", builder.fields("seed", context=ex.context, label=label), 10_000_000 + i))
    return reqs


def _openai_llm(ctx: Context):
    from s3synth.llm.openai_compat import OpenAICompatLLM

    return OpenAICompatLLM(MODEL, base_url=ctx.server_url() + "/v1", api_key_env=None,
                           concurrency=ctx.args.concurrency, timeout=600.0, cache_mode="off")


# -- rows ------------------------------------------------------------------------------------------
def row_openai_s3synth(ctx: Context) -> Result:
    llm = _openai_llm(ctx)
    try:
        t = time.perf_counter()
        out = llm.generate(ctx.requests, desc="s3synth")
        dt = time.perf_counter() - t
    finally:
        llm.close()
    return Result("openai-s3synth", len(out), ctx.args.concurrency, dt, sum(c.prompt_tokens for c in out),
                  sum(c.completion_tokens for c in out), sum(c.error is not None for c in out))


def row_openai_bare(ctx: Context) -> Result:
    llm = _openai_llm(ctx)          # only to build the very same bodies (prompts, seeds, parameters)
    bodies = [llm._body(r, llm.request_seed(llm.key(r))) for r in ctx.requests]
    url = llm._url
    llm.close()
    conc = ctx.args.concurrency

    async def go():
        sem = asyncio.Semaphore(conc)
        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(timeout=600.0, limits=limits) as client:
            async def one(body):
                async with sem:
                    r = await client.post(url, json=body)
                return r.json()["usage"] if r.status_code == 200 else None
            return await asyncio.gather(*(one(b) for b in bodies))

    t = time.perf_counter()
    usage = asyncio.run(go())
    dt = time.perf_counter() - t
    ok = [u for u in usage if u]
    return Result("openai-bare", len(usage), conc, dt, sum(u["prompt_tokens"] for u in ok),
                  sum(u["completion_tokens"] for u in ok), len(usage) - len(ok))


def fewshot_seed_requests(n: int) -> list:
    """n RTE seed requests as an `--llm embedded` run builds them: 4 demonstrations + a query on a
    premise drawn from the rest of the train file, sorted by prompt as the pipeline sends them."""
    import random

    from s3synth.data import load_examples
    from s3synth.method.prompts import PromptBuilder
    from s3synth.tasks import load_task

    task = load_task("rte")
    b = PromptBuilder(task, style="fewshot")
    pool = load_examples(DATA, task)
    b.demos["seed"] = [b.fields("seed", text=d.text, context=d.context, label=d.label,
                                shorten=task.stage("seed").fewshot.demo_max_words) for d in pool[:4]]
    rng = random.Random(0)
    reqs = [b.build("seed", b.fields("seed", context=rng.choice(pool[4:]).context,
                                     label=rng.choice(task.label_names)), 10_000_000 + i) for i in range(n)]
    return sorted(reqs, key=lambda r: r.prompt)


def _fewshot(ctx: Context) -> list:
    """The few-shot RTE seed requests that every embedded row answers, built once per benchmark run."""
    if not hasattr(ctx, "fewshot"):
        ctx.fewshot = fewshot_seed_requests(ctx.args.requests)
    return ctx.fewshot


def _embedded_row(ctx: Context, name: str, n_parallel: int, weights: str = "q8_0") -> Result:
    from s3synth.llm.embedded import EmbeddedLLM

    requests = _fewshot(ctx)
    llm = EmbeddedLLM(n_threads=ctx.args.threads, n_parallel=n_parallel, weights=weights, cache_mode="off")
    llm._load()                                         # model load (and the one-off conversion) is not timed
    try:
        t = time.perf_counter()
        out = llm.generate(requests, desc=name)
        dt = time.perf_counter() - t
    finally:
        llm.close()
    ctx.__dict__.setdefault("texts", {})[name] = [c.text for c in out]
    return Result(name, len(out), n_parallel, dt, sum(c.prompt_tokens for c in out),
                  sum(c.completion_tokens for c in out), sum(c.error is not None for c in out))


def row_embedded_single(ctx: Context) -> Result:
    """The embedded backend one request at a time (n_parallel=1: same engine, same sampler, Q8_0)."""
    return _embedded_row(ctx, "embedded-single", 1)


def row_embedded_batched(ctx: Context) -> Result:
    """The embedded backend's default: 16 sequences per forward pass, Q8_0 weights."""
    return _embedded_row(ctx, "embedded-batched", 16)


def row_embedded_batched_q4_1(ctx: Context) -> Result:
    """The batch engine on the packaged Q4_1 file (what the weight conversion is worth)."""
    return _embedded_row(ctx, "embedded-batched-q4_1", 16, weights="original")


def _legacy_row(ctx: Context, name: str, weights: str) -> Result:
    from llama_cpp import Llama

    from s3synth.llm.embedded import EmbeddedLLM

    requests = _fewshot(ctx)
    seeds = EmbeddedLLM(cache_mode="off", weights=weights, n_threads=ctx.args.threads)
    llm = Llama(model_path=str(seeds.weights_path()), n_ctx=4096, n_threads=ctx.args.threads, n_batch=512, verbose=False)
    pt = ct = 0
    try:
        t = time.perf_counter()
        for r in requests:
            p = r.params
            o = llm.create_completion(r.prompt, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                                      repeat_penalty=max(p.repeat_penalty, 1.1), stop=list(p.stop) or None,
                                      seed=seeds.request_seed(seeds.key(r)))
            pt, ct = pt + o["usage"]["prompt_tokens"], ct + o["usage"]["completion_tokens"]
        dt = time.perf_counter() - t
    finally:
        llm.close()
    return Result(name, len(requests), 1, dt, pt, ct)


def row_embedded_legacy(ctx: Context) -> Result:
    """The baseline: llama-cpp-python's create_completion, one request at a time, on the packaged Q4_1
    file (it reuses the prefix shared with the previous prompt); its own sampler, so other texts."""
    return _legacy_row(ctx, "embedded-legacy", "original")


def row_embedded_legacy_q8_0(ctx: Context) -> Result:
    """The same one-at-a-time loop on the converted Q8_0 file (what batching is worth on its own)."""
    return _legacy_row(ctx, "embedded-legacy-q8_0", "q8_0")


def row_embedded_batched_other_build(ctx: Context) -> Result:
    """embedded-batched in a child process whose llama-cpp-python comes from `--other-build DIR` (a
    `pip install --target DIR` of another build, e.g. the portable one against the CPU-dispatched one)."""
    if not ctx.args.other_build:
        raise SystemExit("row embedded-batched-other-build needs --other-build DIR")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ctx.args.other_build, str(ROOT / "src")])}
        p = subprocess.run([sys.executable, __file__, "--rows", "embedded-batched", "--repeats", "1",
                            "--requests", str(ctx.args.requests), "--threads", str(ctx.args.threads),
                            "--json", str(out), "--texts"], env=env, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"the other build failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
        data = json.loads(out.read_text())
    ctx.__dict__.setdefault("texts", {})["embedded-batched-other-build"] = data["texts"]["embedded-batched"]
    r = data["embedded-batched"][0]
    return Result(**{**r, "row": "embedded-batched-other-build"})


ROWS = {"openai-bare": row_openai_bare, "openai-s3synth": row_openai_s3synth}
ROWS.update({"embedded-legacy": row_embedded_legacy, "embedded-legacy-q8_0": row_embedded_legacy_q8_0,
             "embedded-single": row_embedded_single, "embedded-batched": row_embedded_batched,
             "embedded-batched-q4_1": row_embedded_batched_q4_1,
             "embedded-batched-other-build": row_embedded_batched_other_build})


# -- output ----------------------------------------------------------------------------------------
def print_table(results: list[Result], title: str) -> None:
    print(f"\n{title}")
    print(f"{'row':<18} {'requests':>8} {'conc':>5} {'seconds':>8} {'req/s':>7} {'compl tok/s':>12} "
          f"{'prompt tok':>11} {'compl tok':>10} {'failed':>7}")
    for r in results:
        print(f"{r.row:<18} {r.requests:>8} {r.concurrency:>5} {r.seconds:>8.2f} {r.req_per_s:>7.2f} "
              f"{r.tok_per_s:>12.1f} {r.prompt_tokens:>11,} {r.completion_tokens:>10,} {r.failed:>7}")


def median_result(rs: list[Result]) -> Result:
    """The repeat with the median completion-token throughput."""
    return sorted(rs, key=lambda r: r.tok_per_s)[(len(rs) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp server threads")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    ap.add_argument("--other-build", help="a folder holding another llama-cpp-python build (pip install --target "
                                          "DIR), for the row embedded-batched-other-build")
    ap.add_argument("--texts", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    from s3synth.progress import set_quiet

    set_quiet(True)
    ctx = Context(args, requests=seed_requests(args.requests))
    try:
        if any(r.startswith("openai") for r in rows):    # warm up the server (model load, first prompts)
            warm = Context(args, requests=seed_requests(4, offset=10_000))
            warm._url = ctx.server_url()
            row_openai_bare(warm)
        runs: dict[str, list[Result]] = {r: [] for r in rows}
        order = []
        for k in range(args.repeats):       # A B, B A, A B, ...: drifts in machine load cancel out
            for r in (rows if k % 2 == 0 else rows[::-1]):
                order.append(ROWS[r](ctx))
                runs[r].append(order[-1])
        print_table(order, "every run, in order (rows alternate A B, B A, ...)")
        summary = [median_result(v) for v in runs.values()]
        print_table(summary, f"median of {args.repeats} repeat(s) - {args.requests} RTE seed requests, "
                             f"max_tokens 48, llama.cpp server with {args.threads} thread(s)")
        if "openai-bare" in runs and "openai-s3synth" in runs:
            b, s = median_result(runs["openai-bare"]), median_result(runs["openai-s3synth"])
            paired = statistics.median(1 - x.tok_per_s / y.tok_per_s
                                       for x, y in zip(runs["openai-s3synth"], runs["openai-bare"]))
            print(f"\ns3synth overhead vs the bare client: {100 * (1 - s.tok_per_s / b.tok_per_s):+.1f}% "
                  f"(completion tokens/s), {100 * (1 - s.req_per_s / b.req_per_s):+.1f}% (requests/s); "
                  f"median over back-to-back pairs {100 * paired:+.1f}%; completion tokens "
                  f"{s.completion_tokens} vs {b.completion_tokens} (same bodies, same seeds)")
        if "embedded-single" in runs and "embedded-batched" in runs:
            one, many = median_result(runs["embedded-single"]), median_result(runs["embedded-batched"])
            pairs = [y.seconds / x.seconds for x, y in zip(runs["embedded-batched"], runs["embedded-single"])]
            t = getattr(ctx, "texts", {})
            same = sum(a == b for a, b in zip(t.get("embedded-single", []), t.get("embedded-batched", [])))
            print(f"\nembedded batched vs single-stream ({args.requests} few-shot RTE seed prompts, max_tokens 48, "
                  f"{args.threads} thread(s)): {many.req_per_s / one.req_per_s:.2f}x examples/s, "
                  f"{many.tok_per_s / one.tok_per_s:.2f}x completion tokens/s (medians); per back-to-back pair "
                  f"{statistics.median(pairs):.2f}x; identical answers {same} of {len(t.get('embedded-single', []))}")
        if "embedded-batched" in runs:
            many = median_result(runs["embedded-batched"])
            for base in ("embedded-legacy", "embedded-legacy-q8_0", "embedded-batched-q4_1",
                         "embedded-batched-other-build"):
                if base in runs:
                    old = median_result(runs[base])
                    pairs = [y.seconds / x.seconds for x, y in zip(runs["embedded-batched"], runs[base])]
                    print(f"embedded-batched vs {base}: {many.req_per_s / old.req_per_s:.2f}x examples/s "
                          f"(per back-to-back pair {statistics.median(pairs):.2f}x), "
                          f"{many.tok_per_s / old.tok_per_s:.2f}x completion tokens/s")
        if "embedded-batched-other-build" in runs:
            import llama_cpp
            from s3synth.llm import llama_batch

            t = getattr(ctx, "texts", {})
            same = sum(a == b for a, b in zip(t.get("embedded-batched", []), t.get("embedded-batched-other-build", [])))
            print(f"this process's llama.cpp: {Path(llama_cpp.__file__).parent} "
                  f"(CPU variant: {llama_batch._VARIANT or 'linked in'}); "
                  f"other build: {args.other_build}; identical answers {same} of {len(t.get('embedded-batched', []))}")
        if args.json_out:
            res = {r: [asdict(x) for x in v] for r, v in runs.items()}
            if args.texts:
                res["texts"] = getattr(ctx, "texts", {})
            Path(args.json_out).write_text(json.dumps(res, indent=2))
    finally:
        ctx.close()


if __name__ == "__main__":
    main()
