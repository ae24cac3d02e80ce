"""A careful stop on Ctrl-C or SIGTERM: the answers already paid for are kept, then the run stops.

The command line runs every command inside `handling_signals()` (main thread only; the handlers it
replaces are put back afterwards). While LLM requests are in flight (`LLM.generate` marks that time
with `waiting_for_in_flight`), the first SIGINT or SIGTERM does not stop the process at once:

1. nothing new is sent (backends that send requests one by one check `stopping()` before each; an
   executor whose engines run elsewhere is told through its `on_stop` callback, run in a thread);
2. one line on stderr says so and how to stop at once;
3. the requests in flight finish (at most `wait` seconds: the backend's request timeout, capped at
   `MAX_WAIT_S`) and their answers are committed to the cache as usual;
4. the run then stops as an immediate Ctrl-C would (KeyboardInterrupt: exit 130; `Terminated`: 143).

A second signal, the wait running out, or a signal while no request is in flight (training, writing)
stops at once, as Python's own Ctrl-C does. Example:

    with handling_signals():            # the CLI, around a command
        with waiting_for_in_flight(30.0):
            executor.run(...)           # on a first Ctrl-C: finishes what is in flight, then raises

Not handled: threads other than the main one receive no signals (Python delivers them to the main
thread only); `LLM.generate` called from another thread is stopped only by the main thread's stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

MAX_WAIT_S = 30.0       # the longest a first signal waits for the requests in flight


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler, `kill`, a container stopping): unwinds like Ctrl-C."""


_requested = threading.Event()     # set: this process is stopping (sends nothing new)
_signum: int | None = None          # the signal that asked for the stop (None: asked by a driver, see request)
_sections: list[tuple[float, Callable[[], None] | None]] = []   # the waiting_for_in_flight blocks now open
_installed: dict[int, object] = {}  # signal -> the handler it had before handling_signals()
_timer: threading.Timer | None = None
_expired: float | None = None       # the wait (seconds) that ran out: the timer sent the signal again


def stopping() -> bool:
    """True once this process is stopping: a backend sends no new request (those in flight finish)."""
    return _requested.is_set()


def request(signum: int = signal.SIGINT) -> None:
    """Stop sending new requests in this process, as the first `signum` would; what a worker of a
    distributed executor calls when its driver says the run is stopping."""
    global _signum
    if _signum is None:
        _signum = signum
    _requested.set()


def raise_if_stopping() -> None:
    """Raise what the signal that asked for the stop raises at once: KeyboardInterrupt (SIGINT) or
    Terminated (SIGTERM). Nothing when the process is not stopping."""
    if _requested.is_set():
        _raise(_signum or signal.SIGINT)


def _raise(signum: int):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _say(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)    # through a progress bar's proxy, when one is shown
    except RuntimeError:    # the main thread was writing to stderr itself when the signal came
        os.write(2, (line + "\n").encode())


def _expire(signum: int, wait: float) -> None:
    global _expired
    _expired = wait
    os.kill(os.getpid(), signum)


def _handler(signum, frame) -> None:
    global _timer
    if _requested.is_set() or not _sections:     # a second signal, or nothing in flight to wait for
        if _expired is not None:
            _say(f"s3synth: the LLM requests in flight did not finish within {_expired:g} s; stopping without them")
        _raise(_signum or signum)
    request(signum)
    wait, on_stop = _sections[-1]
    what, how = (("terminated (SIGTERM)", "send SIGTERM again or press Ctrl-C") if signum == signal.SIGTERM
                 else ("interrupted", "press Ctrl-C again"))
    _say(f"s3synth: {what}: sending no new LLM requests, waiting up to {wait:g} s for those in flight so that "
         f"their answers are saved ({how} to stop at once)")
    if on_stop is not None:     # never call into a library from a signal handler: it may hold a lock we need
        threading.Thread(target=on_stop, name="s3synth-stop", daemon=True).start()
    # the wait runs out: the same signal again, i.e. a stop at once
    _timer = threading.Timer(wait, _expire, (signum, wait))
    _timer.daemon = True
    _timer.start()


def _cancel_timer() -> None:
    global _timer
    if _timer is not None:
        _timer.cancel()
    _timer = None


def _reset() -> None:
    global _signum, _expired
    _cancel_timer()
    _signum, _expired = None, None
    _requested.clear()


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """SIGINT and SIGTERM handled as the module doc says while the block runs; outside the main thread
    (where Python cannot set signal handlers) the block runs with the handlers as they are."""
    if threading.current_thread() is not threading.main_thread() or _installed:
        yield
        return
    _reset()
    for s in (signal.SIGINT, signal.SIGTERM):
        _installed[s] = signal.signal(s, _handler)
    try:
        yield
    finally:
        _reset()
        for s, previous in _installed.items():
            if previous is not None:    # None: a handler not set from Python, which Python cannot put back
                signal.signal(s, previous)
        _installed.clear()


def reinstall() -> None:
    """Put this module's handlers back after a library replaced them (`ray.init` sets its own SIGTERM
    handler); nothing outside `handling_signals()` or the main thread."""
    if _installed and threading.current_thread() is threading.main_thread():
        for s in _installed:
            signal.signal(s, _handler)


@contextlib.contextmanager
def waiting_for_in_flight(wait: float, on_stop: Callable[[], None] | None = None) -> Iterator[None]:
    """Requests sent inside the block are waited for on the first signal (up to `wait` seconds, at most
    MAX_WAIT_S); `on_stop` is called in a thread at that signal (to tell workers elsewhere to send no
    more). Once the block is done, a stop asked for meanwhile raises (`raise_if_stopping`)."""
    _sections.append((min(wait, MAX_WAIT_S), on_stop))
    try:
        yield
    finally:
        _sections.pop()
        if not _sections:
            _cancel_timer()     # the wait is over: while the run unwinds, only a new signal stops it at once
    raise_if_stopping()
