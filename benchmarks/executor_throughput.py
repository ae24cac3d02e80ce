"""Generation throughput through `--executor local` against `--executor ray` with 1 and 2 actors, in one run.

    .venv/bin/python benchmarks/executor_throughput.py [--requests 32] [--repeats 2] [--backends embedded,openai]

Each row is one `LLM.generate()` call (one stage) with the cache off, timed from the call to its last
answer: for Ray that includes building the Ray Data job, starting the actors and loading one engine per
actor (what every stage pays), but not starting Ray itself (once per run; printed apart).
- embedded: the few-shot RTE seed prompts of benchmarks/llm_throughput.py (max_tokens 48, Q8_0):
  local = one engine with `--threads` threads; ray-1 = one actor with all of them; ray-2 = two actors
  with `--threads / 2` each. On 2 cores no gain is expected: the figure is Ray's overhead.
- openai: the paper-style RTE seed requests against the OpenAI stub of tests/ answering after a
  fixed `--stub-delay` (I/O-bound; concurrency `--concurrency`, split over the actors).
Rows run `--repeats` times in A B C, C B A, ... order (the machine is shared); the summary takes
medians and prints Ray's overhead = ray seconds / local seconds - 1, and whether the answers are
identical to the local ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks"), str(ROOT / "tests")]
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")     # a private Ray on 127.0.0.1

from llm_throughput import Result, fewshot_seed_requests, print_table, seed_requests

VARIANTS = {"local": ("local", {}), "ray-1": ("ray", {"actors": 1}), "ray-2": ("ray", {"actors": 2})}


def make(backend: str, args, stub_url: str | None):
    from s3synth.llm import make_llm

    if backend == "embedded":
        return make_llm("embedded", n_threads=args.threads, cache_mode="off")
    return make_llm("openai:stub-model", base_url=stub_url, api_key_env=None, concurrency=args.concurrency,
                    cache_mode="off")


def run_row(backend: str, variant: str, requests, args, stub_url) -> tuple[Result, list[str]]:
    from s3synth.llm.executor import make_executor

    name, opts = VARIANTS[variant]
    if name == "ray":
        opts = {**opts, "cpus_per_actor": max(1, args.threads // opts["actors"])}
    llm = make(backend, args, stub_url)
    if backend == "embedded" and name == "local":
        llm._load()          # the local engine loads once per process; Ray actors load theirs per stage (timed)
    llm.executor = make_executor(name, **opts)
    try:
        t = time.perf_counter()
        out = llm.generate(requests, desc=f"{backend}-{variant}")
        dt = time.perf_counter() - t
    finally:
        llm.close()
        llm.executor.close()
    conc = args.concurrency if backend == "openai" else opts.get("actors", 1)
    return (Result(f"{backend}-{variant}", len(out), conc, dt, sum(c.prompt_tokens for c in out),
                   sum(c.completion_tokens for c in out), sum(c.error is not None for c in out)),
            [c.text for c in out])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for the embedded model (split over actors)")
    ap.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight (split over actors)")
    ap.add_argument("--stub-delay", type=float, default=0.2, help="openai: seconds the stub takes per answer")
    ap.add_argument("--backends", default="embedded,openai")
    args = ap.parse_args()

    import ray
    from openai_stub import OpenAIStub

    from s3synth.progress import set_quiet

    set_quiet(True)
    t = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t
    stub = OpenAIStub(delay=args.stub_delay).start()
    try:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        reqs = {"embedded": fewshot_seed_requests(args.requests), "openai": seed_requests(args.requests)}
        runs: dict[str, list[Result]] = {}
        texts: dict[str, list[str]] = {}
        order: list[Result] = []
        variants = list(VARIANTS)
        for backend in backends:
            run_row(backend, "ray-1", reqs[backend][:2], args, stub.url)   # warm-up: model conversion, imports
            for k in range(args.repeats):
                for v in (variants if k % 2 == 0 else variants[::-1]):
                    r, tx = run_row(backend, v, reqs[backend], args, stub.url)
                    print(f"{r.row}: {r.seconds:.2f} s, {r.req_per_s:.2f} req/s, {r.failed} failed", flush=True)
                    order.append(r)
                    runs.setdefault(r.row, []).append(r)
                    texts.setdefault(r.row, tx)
        print_table(order, "every run, in order (A B C, C B A, ...)")
        med = {k: sorted(v, key=lambda r: r.seconds)[(len(v) - 1) // 2] for k, v in runs.items()}
        print_table(list(med.values()), f"median of {args.repeats} - {args.requests} requests per stage, "
                                        f"{args.threads} CPU thread(s); Ray start-up {ray_start:.1f} s (once per run)")
        print()
        for backend in backends:
            local = med[f"{backend}-local"]
            for v in ("ray-1", "ray-2"):
                r = med[f"{backend}-{v}"]
                pairs = [y.seconds / x.seconds - 1 for x, y in zip(runs[f"{backend}-local"], runs[f"{backend}-{v}"])]
                same = sum(a == b for a, b in zip(texts[f"{backend}-local"], texts[f"{backend}-{v}"]))
                print(f"{backend} {v} vs local: Ray overhead {100 * (r.seconds / local.seconds - 1):+.1f}% in seconds "
                      f"(median over repeats {100 * statistics.median(pairs):+.1f}%), "
                      f"{r.req_per_s / local.req_per_s:.2f}x requests/s; identical answers {same} of {len(texts[f'{backend}-local'])}")
    finally:
        stub.stop()
        ray.shutdown()


if __name__ == "__main__":
    main()
