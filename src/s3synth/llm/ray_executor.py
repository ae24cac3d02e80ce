"""`--executor ray`: the uncached requests of a stage as a Ray Data job (`pip install 's3synth[ray]'`).

CPU backends (`embedded`, `openai:`, any backend through the seam): `ray.data.from_items` of the requests
(payload, cache key, seed), `map_batches` with a callable class that builds one engine of the backend per
Ray actor (`LLM.shard` says each engine's options, requests per call and engines per actor: the embedded
model gets the actor's share of the cores; an OpenAI-compatible client its share of the concurrency and
of the rate limits, so that they hold over the whole cluster), a fixed pool of `actors` actors, and the
answers streamed back - never a whole stage collected first. The driver commits each answer to the run's
cache as it arrives; actors never touch the cache.

Streamed calls: a backend that hands over each answer as it is ready (`Shard.stream`: embedded, openai)
gets one call per actor with its even share of the wave, and the call is a generator that yields the
answers finished so far while the engine works on (Ray streams each yielded block to the driver before
the call ends). So a stage costs a handful of Ray calls instead of one per request or per small batch,
and the engine's slots never drain between calls. Other backends get calls of `Shard.rows` requests.

`vllm:MODEL` runs on Ray Data LLM instead (`ray.data.llm.build_processor` with a
`vLLMEngineProcessorConfig`: `actors` vLLM replicas, tensor/pipeline parallel sizes from `-o`, sampling
parameters and the per-request seed in every row; needs GPUs and `pip install 'ray[llm]'`).

Failures: a request that fails inside an actor comes back as a reject (Completion(error=...)), as with the
local executor; a configuration error of the backend (bad key, model or URL) stops the run with its one
line. A dead actor fails its job: Ray's own retry would replay the whole call and so ask again for answers
the driver already holds, hence retries are off (`max_task_retries=0`) and the driver submits a new job
with the requests still unanswered (`resubmit`, default 3: the tries in a row that bring no new answer
before the run stops). Answers already streamed back are never asked again; the requests in flight on
the dead actor (and on the others of its job) are. When it gives up, the run stops with every answer so
far saved; the same command resumes.

A first Ctrl-C or SIGTERM at the driver (s3synth.stop): the registry actor records it, the actors (asking
it every STOP_POLL_S during a call) send no new request, and the answers in flight stream back and are
saved before the run stops; a call that starts after that sends nothing.

Ray: `address` (`--ray-address`) `auto` or `HOST:PORT` joins a running cluster (`ray start --head`),
`ray://HOST:PORT` connects through Ray Client; none starts a private local Ray on 127.0.0.1 (no
dashboard) for this run and shuts it down at the end. A Ray already initialised in this process (from
Python) is used as it is. Every node of a cluster needs s3synth and the backend's packages installed.

Token authentication (Ray >= 2.59; see docs/scale.md): a cluster started by `ray start --head` where a
token exists (~/.ray/auth_token, left by `ray get-auth-token --generate` or by any local `ray.init()`,
s3synth's private Ray included) checks every driver's token. Ray's driver sends its token for `auto` but
never for an explicit HOST:PORT unless RAY_AUTH_MODE=token is set, so the address `ray start` printed was
refused on its own machine. Here a HOST:PORT driver sends a token, as `auto` does, when RAY_AUTH_MODE is
not set and the user handed one over (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) or HOST is this machine and
~/.ray/auth_token exists (a local file's token never goes to another machine). Before Ray's own retries
(about 20 s) a HOST:PORT that nothing answers at is a one-line error; a refused token is one too, naming
what was sent and the ways out.

Not handled: autoscaling actor pools, GPUs for CPU backends (`num_gpus`), Ray Client with the vLLM path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import stop
from ..errors import LLMError, S3Error
from .executor import Commit, Executor, Job

if TYPE_CHECKING:
    from .base import LLM

STREAM_BLOCK_BYTES = 1        # Ray Data's target block size while a stage runs: a block per yield (see RayExecutor.run)
STOP_POLL_S = 0.2             # how often an actor asks the registry whether the run is stopping (during a call)
LOCALHOST_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": a local Ray binds and advertises 127.0.0.1 only
AUTH_MODE_ENV = "RAY_AUTH_MODE"     # "token": Ray's driver sends its token (read when Ray is first imported)
HOME_TOKEN = "~/.ray/auth_token"   # the token `ray get-auth-token --generate` or a local ray.init() writes
PROBE_S = 5.0                       # how long a HOST:PORT may take to accept a TCP connection


def _import_ray(local: bool = False):
    """`ray`; for a private local Ray, imported with every address on 127.0.0.1 (Ray reads that setting
    when it is first imported: a process that imported Ray before keeps Ray's choice, the machine's IP)."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault(LOCALHOST_ENV, "0")
    try:
        import ray
        import ray.data
    except ImportError:
        raise LLMError("--executor ray needs Ray Data: pip install 's3synth[ray]' (or bash scripts/setup.sh)") from None
    return ray


def host_port(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a `--ray-address HOST:PORT`; None for none, `auto` and `ray://` (Ray Client); an S3Error
    for anything else.

    Examples:
        >>> host_port("10.0.0.5:6379"), host_port("[::1]:6379"), host_port("auto"), host_port("ray://h:10001")
        (('10.0.0.5', 6379), ('::1', 6379), None, None)
    """
    if address is None or address == "auto" or address.startswith("ray://"):
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise S3Error(f"--ray-address {address!r}: write auto, HOST:PORT or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def on_this_machine(host: str) -> bool:
    """Whether `host` (a name or an IP) is this machine: one of its addresses resolves to an interface here
    (a socket binds to it), loopback included.

    Examples:
        >>> on_this_machine("127.0.0.1"), on_this_machine("localhost")
        (True, True)
        >>> on_this_machine("198.51.100.7")     # TEST-NET-2, nobody's address
        False
    """
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, _, _, sockaddr in infos:
        try:
            with socket.socket(family, kind) as s:
                s.bind((sockaddr[0], 0))
            return True
        except OSError:
            continue
    return False


def token_source() -> str | None:
    """Where Ray's driver would read a token from, in Ray's order (RAY_AUTH_TOKEN, the file named by
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), or None: no token on this machine."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return "RAY_AUTH_TOKEN_PATH"
    f = Path.home() / ".ray" / "auth_token"
    return HOME_TOKEN if f.is_file() and f.stat().st_size else None


def send_token(address: str) -> str:
    """Make a driver joining `--ray-address HOST:PORT` send its token where Ray's `auto` would: RAY_AUTH_MODE
    as the user set it; unset, token mode when the user handed a token over (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH) or HOST is this machine and ~/.ray/auth_token exists. Sets RAY_AUTH_MODE=token in
    this process for that (Ray reads it when it is first imported: a process that imported Ray before keeps
    Ray's reading). `auto`: Ray decides (a token if there is one). Returns what the driver sends, for the
    message when the cluster refuses it."""
    mode, source, hp = os.environ.get(AUTH_MODE_ENV), token_source(), host_port(address)
    why = f"{AUTH_MODE_ENV}={mode}" if mode else "none found here"
    if mode is None and source:
        if address == "auto":
            mode = "token"
        elif source == HOME_TOKEN and not on_this_machine(hp[0]):
            why = f"{source} is not sent to another machine"
        elif "ray" in sys.modules:
            why = f"Ray was imported before {AUTH_MODE_ENV}=token could be set"
        else:
            os.environ[AUTH_MODE_ENV] = mode = "token"
    if (mode or "").lower() != "token":
        return f"this driver sent no token ({why})"
    return f"the token in {source} is not the cluster's" if source else "this driver has no token"


def _refused_token(e: BaseException | None) -> bool:
    """Whether Ray's connection error `e` (or one it came from) is the cluster refusing the driver's token."""
    for _ in range(8):
        if e is None:
            return False
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def probe(address: str) -> None:
    """A one-line error, at once, when nothing accepts a TCP connection at `--ray-address HOST:PORT`
    (Ray itself retries for about 20 s and then says only that it failed)."""
    host, port = host_port(address)
    try:
        socket.create_connection((host, port), timeout=PROBE_S).close()
    except OSError as e:
        raise LLMError(f"--ray-address {address}: nothing answers at {host}:{port} ({e.strerror or e}) - pass the "
                       "address `ray start --head` printed (ray start --address='IP:PORT'), or --ray-address auto "
                       "on the head node") from None


class _Registry:
    """A Ray actor (one per executor) holding the handles of each job's actors: a job that fails leaves
    its other actors running their calls (Ray Data releases them without killing them), and their
    answers would never reach the driver, so the driver kills them before it resubmits. It also says
    when the run is stopping (a first Ctrl-C at the driver): the actors then send no new request."""

    def __init__(self):
        self.actors: dict[int, list] = {}
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def stopping(self) -> bool:
        return self.stopped

    def add(self, job: int, handle) -> None:
        self.actors.setdefault(job, []).append(handle)

    def take(self, job: int) -> list:
        return self.actors.pop(job, [])


class _JobFailed(Exception):
    """A Ray Data job stopped before its last answer (an actor died, the cluster went away)."""


def _result(c) -> str:
    return json.dumps({"text": c.text, "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                       "finish_reason": c.finish_reason, "error": c.error})


class _Worker:
    """The Ray Data callable class: one engine of the backend per thread of the actor, built on first use.
    A call is a generator: the engine answers the call's requests in a thread and every answer it hands
    over (`LLM.emit`) is yielded with the others finished by then, so it reaches the driver before the
    call ends; answers not handed over early come with the call's end."""

    def __init__(self, cls, model: str, options: dict, seed: int, registry=None, job: int = 0):
        self.cls, self.model, self.options, self.seed = cls, model, options, seed
        self.local = threading.local()
        self.pid = os.getpid()
        self.registry, self._asked = registry, 0.0
        if registry is not None:    # so that the driver can stop this actor when its job fails
            import ray
            ray.get(registry.add.remote(job, ray.get_runtime_context().current_actor))

    def _stopping(self) -> bool:
        """True once the driver is stopping (asked of the registry at most every STOP_POLL_S); this
        process's engines then send no new request (`stop.stopping()`)."""
        if not stop.stopping() and self.registry is not None and time.monotonic() - self._asked >= STOP_POLL_S:
            import ray

            self._asked = time.monotonic()
            if ray.get(self.registry.stopping.remote()):
                stop.request()
        return stop.stopping()

    def _out(self, batch: dict, rows: list, fatal: str = "") -> dict:
        import numpy as np

        return {"index": np.asarray([batch["index"][j] for j, _ in rows], dtype=np.int64),
                "result": np.array([_result(c) for _, c in rows], dtype=object),
                "fatal": np.array([fatal] * len(rows), dtype=object),
                "worker": np.full(len(rows), self.pid, dtype=np.int64)}

    def __call__(self, batch: dict):
        from .base import Completion, Request

        n = len(batch["index"])
        if self._stopping():    # a call that starts after the driver began to stop: nothing is sent
            return
        try:
            eng = getattr(self.local, "engine", None)
            if eng is None:
                eng = self.local.engine = self.cls(self.model, seed=self.seed, cache=None, cache_mode="off",
                                                   **self.options)
            reqs = [Request.from_payload(json.loads(p)) for p in batch["payload"]]
        except S3Error as e:        # a configuration error: the driver stops the run with this line
            yield self._out(batch, [(j, Completion(text="", error=str(e))) for j in range(n)], str(e))
            return
        ready: queue.Queue = queue.Queue()
        box: dict = {}

        def work():
            try:
                box["res"] = eng._generate_batch(reqs, [int(s) for s in batch["seed"]])
            except BaseException as e:  # noqa: BLE001 - reported below, in this call's rows
                box["exc"] = e
            finally:
                ready.put(None)

        eng._emit = lambda j, c: ready.put((j, c))
        th = threading.Thread(target=work, name="s3synth-ray-call", daemon=True)
        th.start()
        sent: set[int] = set()
        finished = False
        try:
            while not finished:
                try:
                    got = [ready.get(timeout=STOP_POLL_S)]
                except queue.Empty:     # nothing finished: time to ask whether the driver is stopping
                    got = []
                self._stopping()
                while True:         # everything finished by now goes in one block
                    try:
                        got.append(ready.get_nowait())
                    except queue.Empty:
                        break
                finished = None in got
                rows = [x for x in got if x is not None and x[0] not in sent]
                if rows:
                    sent.update(j for j, _ in rows)
                    yield self._out(batch, rows)
        finally:
            eng._emit = None
        th.join()
        exc, res, fatal = box.get("exc"), box.get("res"), ""
        if exc is not None and stop.stopping():     # the engine stopped sending; what it answered went out above
            return
        if exc is None and len(res) != n:
            exc = RuntimeError(f"backend returned {len(res)} answers for {n} requests")
        if isinstance(exc, S3Error):
            fatal = str(exc)
            res = [Completion(text="", error=fatal)] * n
        elif exc is not None:   # anything else fails the unanswered requests only: rejects, as the local path does
            res = [Completion(text="", error=f"ray worker: {type(exc).__name__}: {exc}")] * n
        rest = [(j, res[j]) for j in range(n) if j not in sent]
        if rest:
            yield self._out(batch, rest, fatal)


def _rows(ds):
    """The rows of `ds` as each block arrives: whole blocks, no prefetching (`iter_rows` prefetches a
    block ahead and so holds a finished call's answers back until the next call finishes)."""
    for batch in ds.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"):
        cols = list(batch)
        for k in range(len(batch[cols[0]]) if cols else 0):
            yield {c: batch[c][k] for c in cols}


def vllm_sampling_params(payload: dict, seed: int) -> dict:
    """vLLM SamplingParams fields for one request, its seed included (what `VLLMBackend` sends locally)."""
    p = payload["params"]
    return {"n": 1, "seed": int(seed), "temperature": p["temperature"], "top_p": p["top_p"],
            "max_tokens": p["max_tokens"], "stop": list(p.get("stop") or ()) or None,
            "repetition_penalty": max(p.get("repeat_penalty", 1.0), 1.0)}


def vllm_preprocess(row: dict) -> dict:
    """A request row -> the columns of Ray Data LLM's vLLM stage (`messages` or `prompt`, `sampling_params`)."""
    payload = json.loads(row["payload"])
    out = {"index": row["index"], "sampling_params": vllm_sampling_params(payload, row["seed"])}
    if payload.get("messages"):
        out["messages"] = [{"role": r, "content": c} for r, c in payload["messages"]]
    else:
        out["prompt"] = payload["prompt"]
    return out


def vllm_processor_config(llm: LLM, replicas: int, batch_size: int, chat: bool,
                          accelerator_type: str | None = None):
    """The `vLLMEngineProcessorConfig` of a `vllm:MODEL` stage: `replicas` engines (`concurrency`; each
    takes tensor x pipeline parallel size GPUs), the backend's engine options (dtype, memory share,
    max_model_len), the run seed, failed rows kept as rows with `__inference_error__`."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine = dict(llm.engine_kwargs)
    engine["seed"] = llm.seed
    return vLLMEngineProcessorConfig(model_source=llm.model, engine_kwargs=engine, concurrency=replicas,
                                     batch_size=batch_size, should_continue_on_error=True,
                                     accelerator_type=accelerator_type, chat_template_stage=chat,
                                     tokenize_stage=True, detokenize_stage=True)


class RayExecutor(Executor):
    """`--executor ray [--ray-address auto|HOST:PORT|ray://HOST:PORT] [--executor-option actors=N ...]`."""

    name = "ray"
    local_engine = False    # engines run on the actors: this process needs no GPU for `vllm:`

    @dataclass
    class Options:
        """Settings of `--executor ray` (`--executor-option KEY=VALUE`; --ray-address is `address`)."""

        address: str | None = None      # auto | HOST:PORT | ray://HOST:PORT; none: a private local Ray
        actors: int | None = None       # engines side by side (vLLM: replicas); default: cluster CPUs / cpus_per_actor
        cpus_per_actor: float = 1.0     # CPUs reserved per actor (the embedded model uses that many threads)
        accelerator_type: str | None = None     # vLLM only: GPU type of the replicas, e.g. H100 (default: any)
        num_cpus: int | None = None     # CPUs of the private local Ray (default: all)
        object_store_mb: int | None = None  # object store of the private local Ray (default: Ray's)
        wave: int = 4096                # requests per Ray Data job (bounds the driver's and object store's memory)
        batch_size: int = 64            # vLLM only: rows per engine call
        resubmit: int = 3               # a failed job's unanswered requests go in a new job; the run stops after
                                        # this many tries in a row that bring no new answer (-1: never)

        def __post_init__(self):
            if self.actors is not None and self.actors < 1:
                raise S3Error(f"--executor-option actors={self.actors}: must be >= 1")
            if self.cpus_per_actor <= 0 or self.wave < 1 or self.batch_size < 1:
                raise S3Error("--executor-option: cpus_per_actor must be > 0, wave and batch_size >= 1")
            if self.num_cpus is not None and self.num_cpus < 1:
                raise S3Error(f"--executor-option num_cpus={self.num_cpus}: must be >= 1")
            if self.resubmit < -1:
                raise S3Error(f"--executor-option resubmit={self.resubmit}: -1 (no limit) or >= 0")
            host_port(self.address)     # a malformed address is refused there

    def __init__(self, **options):
        super().__init__(**options)
        self._started = False       # this executor started the local Ray (and shuts it down)
        self._ray = None
        self.answers_by_worker: Counter = Counter()    # worker pid -> answers received from it (this process)
        self.resubmitted = 0    # requests sent again in a new job after a failed one (this process)
        self._jobs = 0
        self._registry_actor = None

    # -- Ray ---------------------------------------------------------------------------------------
    def ray(self):
        """The connected `ray` module (connecting or starting a local Ray on first use)."""
        if self._ray is not None:
            return self._ray
        hp = host_port(self.options.address)
        # before Ray's import (Ray reads RAY_AUTH_MODE then); Ray Client (ray://) has no token
        sent = send_token(self.options.address) if hp or self.options.address == "auto" else ""
        ray = _import_ray(local=not self.options.address)
        if not ray.is_initialized():
            o = self.options
            kw = {"log_to_driver": False, "logging_level": logging.WARNING}
            if hp:
                probe(o.address)
            try:
                if o.address:
                    ray.init(address=o.address, **kw)
                else:
                    extra = {"object_store_memory": o.object_store_mb * 1024 ** 2} if o.object_store_mb else {}
                    # "local": a new Ray, never the cluster that /tmp/ray/ray_current_cluster (left by a
                    # `ray start` that was not stopped) or RAY_ADDRESS names
                    ray.init(address="local", num_cpus=o.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                             **extra, **kw)
                    self._started = True
                stop.reinstall()    # ray.init sets its own SIGTERM handler (sys.exit): a SIGTERM stops carefully
            except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
                if o.address and _refused_token(e):
                    raise LLMError(
                        f"the Ray cluster at {o.address} refused this driver: it checks a token (Ray >= 2.59 token "
                        f"authentication) and {sent or 'this driver sent a wrong one'} - on the head node pass the "
                        "address `ray start --head` printed or --ray-address auto; elsewhere give this driver the "
                        "head's token: RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<output of `ray get-auth-token` on the "
                        "head>") from None
                where = f"the Ray cluster at {o.address}" if o.address else "a local Ray"
                raise LLMError(f"cannot start or reach {where}: {str(e).splitlines()[0] if str(e) else e} - check "
                               "--ray-address (auto needs `ray start --head` on this machine)") from None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        self._ray = ray
        return ray

    @property
    def _registry(self):
        if self._registry_actor is None:
            self._registry_actor = self.ray().remote(num_cpus=0)(_Registry).remote()
        return self._registry_actor

    def actors(self) -> int:
        o = self.options
        if o.actors:
            return o.actors
        cpus = self.ray().cluster_resources().get("CPU", 1)
        return max(1, int(cpus // o.cpus_per_actor))

    def wave_size(self, llm: LLM) -> int:
        return self.options.wave

    def describe(self) -> dict:
        o = self.options
        return {"name": self.name, "address": o.address or "local", "actors": o.actors,
                "cpus_per_actor": o.cpus_per_actor}

    # -- a wave ------------------------------------------------------------------------------------
    def run(self, llm: LLM, jobs: Sequence[Job], commit: Commit) -> None:
        if not jobs:
            return
        ray = self.ray()
        items = [{"index": j.index, "payload": json.dumps(j.request.payload(), ensure_ascii=False), "seed": j.seed}
                 for j in jobs]
        if llm.backend == "vllm":
            return self._run_vllm(ray, llm, items, commit)
        ctx = ray.data.DataContext.get_current()
        block_bytes = ctx.target_max_block_size
        # Ray Data gathers what a call yields into blocks of this size before it sends one: small blocks
        # make every answer travel to the driver as soon as it is yielded
        ctx.target_max_block_size = STREAM_BLOCK_BYTES
        try:
            self._tries(ray, llm, items, commit)
        finally:
            ctx.target_max_block_size = block_bytes

    def _tries(self, ray, llm: LLM, items: list[dict], commit: Commit) -> None:
        o = self.options
        done: set[int] = set()

        def keep(i: int, c) -> None:
            done.add(i)
            commit(i, c)

        idle = 0
        while True:
            left = [it for it in items if it["index"] not in done]
            if not left:
                return
            before = len(done)
            self._jobs += 1
            finished = False
            try:
                self._stream(self._job(ray, llm, left, self._jobs), keep)
                finished = True
                return
            except _JobFailed as e:
                if len(done) == len(items):
                    return
                idle = 0 if len(done) > before else idle + 1
                stop.raise_if_stopping()    # a stopping run sends nothing again
                if 0 <= o.resubmit < idle:
                    raise LLMError(f"the Ray job failed ({e}); every answer received so far is saved - run the "
                                   "same command again to resume") from None
                self.resubmitted += len(items) - len(done)
            finally:
                # a job that did not finish leaves its actors running their calls (Ray Data releases them
                # without killing them): they would send requests whose answers nobody reads
                try:
                    for actor in ray.get(self._registry.take.remote(self._jobs)):
                        if not finished:
                            ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - Ray itself is gone: so are the actors
                    pass

    def _job(self, ray, llm: LLM, items: list[dict], job: int):
        """The Ray Data job answering `items` on a fresh pool of actors."""
        o = self.options
        n_actors = self.actors()
        shard = llm.shard(n_actors, o.cpus_per_actor)
        even = math.ceil(len(items) / n_actors)            # every actor gets work
        rows = even if shard.stream else max(1, min(shard.rows, even))
        # one block per call; a call streams its answers back as they are ready (see _Worker)
        ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / rows))
        with warnings.catch_warnings():     # Ray 2.60 takes these two only as (deprecated) ray_remote_args
            warnings.simplefilter("ignore", DeprecationWarning)
            return ds.map_batches(
                _Worker, batch_size=rows, batch_format="numpy",
                fn_constructor_kwargs={"cls": type(llm), "model": llm.model, "options": shard.options,
                                       "seed": llm.seed, "registry": self._registry, "job": job},
                # at most `engines` calls at an actor at once (Ray Data would queue 2x that, and run them
                # all): the backend's concurrency and rate limits hold over the whole pool
                compute=ray.data.ActorPoolStrategy(size=n_actors, max_concurrent_calls_per_actor=shard.engines,
                                                   max_tasks_in_flight_per_actor=shard.engines,
                                                   enable_true_multi_threading=shard.engines > 1),
                # no replay of a failed call (it would ask again for answers already streamed back): the
                # driver resubmits what is unanswered
                num_cpus=o.cpus_per_actor, max_restarts=0, max_task_retries=0)

    def _stream(self, ds, commit: Commit) -> None:
        from .base import Completion

        try:
            for row in _rows(ds):
                if row.get("fatal"):
                    raise LLMError(str(row["fatal"]))
                d = json.loads(row["result"])
                self.answers_by_worker[int(row.get("worker", 0))] += 1
                commit(int(row["index"]), Completion(**d))
        except S3Error:
            raise
        except Exception as e:  # noqa: BLE001 - an actor died, Ray gave up or the cluster went away
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise _JobFailed(f"{type(e).__name__}: {first[:300]}") from None

    def _run_vllm(self, ray, llm: LLM, items: list[dict], commit: Commit) -> None:
        """Ray Data LLM: `actors` vLLM replicas; chat and plain prompts in separate processors."""
        try:
            from ray.data.llm import build_processor
        except ImportError as e:
            raise LLMError(f"vllm under --executor ray needs Ray Data LLM: pip install 'ray[llm]' ({e})") from None
        from .base import Completion

        o = self.options
        replicas = o.actors or 1
        for chat in (False, True):
            part = [it for it in items if bool(json.loads(it["payload"]).get("messages")) == chat]
            if not part:
                continue
            max_tokens = {it["index"]: json.loads(it["payload"])["params"]["max_tokens"] for it in part}
            cfg = vllm_processor_config(llm, replicas, o.batch_size, chat, o.accelerator_type)
            processor = build_processor(cfg, preprocess=vllm_preprocess)
            ds = processor(ray.data.from_items(part, override_num_blocks=max(1, math.ceil(len(part) / o.batch_size))))
            try:
                for row in _rows(ds):
                    i = int(row["index"])
                    err = row.get("__inference_error__") or None
                    if err:
                        commit(i, Completion(text="", error=f"vllm: {err}"))
                        continue
                    ct = int(row.get("num_generated_tokens") or 0)
                    commit(i, Completion(text=row.get("generated_text") or "",
                                         prompt_tokens=int(row.get("num_input_tokens") or 0), completion_tokens=ct,
                                         finish_reason="length" if ct >= max_tokens[i] else "stop"))
            except S3Error:
                raise
            except Exception as e:  # noqa: BLE001 - Ray gave up: one line, answers so far saved
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise LLMError(f"the Ray Data LLM job failed ({type(e).__name__}: {first[:300]}); every answer "
                               "received so far is saved - run the same command again to resume") from None

    def stop_sending(self) -> None:
        """A first Ctrl-C: the actors (asking the registry during their calls) send no new request."""
        if self._registry_actor is not None:
            self._registry_actor.stop.remote()

    def close(self) -> None:
        if self._registry_actor is not None and self._ray is not None and self._ray.is_initialized():
            self._ray.kill(self._registry_actor)
        self._registry_actor = None
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started, self._ray = False, None
