"""The run directory: config, manifest, stage fingerprints, a lock against two runs at once."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from .errors import S3Error
from .io import read_json, write_json


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("s3synth", "torch", "transformers", "llama_cpp_python", "numpy", "scikit-learn", "httpx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Layout:
    """Where everything lives in a run directory; the writer, the report, export and the CLI read it here.

    Example: LAYOUT.round(2, "added") -> "round-2/added.jsonl"
    """

    config = "config.toml"
    manifest = "manifest.json"
    cache = "llm_cache.sqlite"
    lock = ".lock"
    rationales = "rationales.json"
    seed = "seed.jsonl"
    seed_dropped = "seed_dropped.jsonl"
    final_dir = "final"
    final_metrics = "final/metrics.json"
    final_train = "final/train.jsonl"
    final_model = "final/model"
    reports = ("report.html", "report.md", "dataset_card.md")
    ROUND_FILES = {"errors": "errors.jsonl", "sources": "sources.jsonl", "added": "added.jsonl",
                   "metrics": "metrics.json", "dropped": "dropped.jsonl"}

    @staticmethod
    def round_dir(q: int) -> str:
        return f"round-{q}"

    def round(self, q: int, what: str) -> str:
        return f"{self.round_dir(q)}/{self.ROUND_FILES[what]}"

    def dropped(self, stage: str) -> str:
        """Where screened-out examples of a stage go: "seed" or "round-K"."""
        return self.seed_dropped if stage == "seed" else f"{stage}/{self.ROUND_FILES['dropped']}"

    def rounds_present(self, path: Path) -> list[int]:
        """Round numbers with a folder in `path`, 1, 2, ... up to the first gap."""
        q = 1
        while (path / self.round_dir(q)).is_dir():
            q += 1
        return list(range(1, q))


LAYOUT = Layout()

# Sample indices of LLM requests (part of each cache key): a band per prompt family, an offset per
# attempt, so that every request of a run is distinct. Example: the 2nd attempt at error 7 of a round
# is SAMPLE_BANDS["extrapolate"] + 1 * ATTEMPT_STRIDE + 7.
SAMPLE_BANDS = {"rationale": 0, "seed": 10_000_000, "extrapolate": 20_000_000, "zerogen": 30_000_000}
BAND_WIDTH = 10_000_000
ATTEMPT_STRIDE = 1_000_000


def band_of(sample_index: int) -> str:
    """Example: band_of(20_000_007) -> "extrapolate"."""
    start = (int(sample_index) // BAND_WIDTH) * BAND_WIDTH
    return next((k for k, v in SAMPLE_BANDS.items() if v == start), "other")


class Stage:
    """The guard of one stage: skip it when finished with the same inputs, else time it, count its LLM
    usage and mark it finished when its block ends without an error.

        st = rd.stage("seed", fp, LAYOUT.seed, usage=llm_usage)
        if not st.done:
            with st:
                ...                      # write the outputs
                st.extra["examples"] = n
    """

    def __init__(self, rd: "RunDir", name: str, fp: str, outputs: tuple[str, ...], usage=None):
        self.rd, self.name, self.fp, self.outputs, self._usage = rd, name, fp, outputs, usage
        self.extra: dict = {}
        st = rd.manifest["stages"].get(name)
        self.done = bool(st and st.get("fingerprint") == fp and st.get("finished")
                         and all((rd.path / f).exists() for f in outputs))

    def __enter__(self) -> "Stage":
        self._t = time.time()
        self._u = self._usage() if self._usage else None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            return
        if self._usage:
            now = self._usage()
            self.extra["llm"] = {k: now[k] - self._u.get(k, 0) for k in now}
        self.rd.mark(self.name, self.fp, time.time() - self._t, **self.extra)

    @property
    def seconds(self) -> float:
        return round(time.time() - self._t, 2)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd = None
        self.manifest: dict = {}

    def open(self) -> "RunDir":
        """Create the folder, take the lock, load the manifest of an earlier invocation if any."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LAYOUT.lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise S3Error(f"{self.path} is in use by another s3synth process; wait for it or use another --out") from None
        self._lock_fd = fd
        mf = self.path / LAYOUT.manifest
        self.manifest = read_json(mf) if mf.exists() else {}
        self.manifest.setdefault("stages", {})
        self.manifest.setdefault("invocations", [])
        self.manifest.setdefault("synthesis", {})
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def save_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.path / LAYOUT.manifest, self.manifest)

    def stage(self, name: str, fp: str, *outputs: str, usage=None) -> Stage:
        return Stage(self, name, fp, outputs, usage)

    def mark(self, name: str, fp: str, seconds: float, **extra) -> None:
        prev = self.manifest["stages"].get(name, {})
        total = seconds + (prev.get("seconds", 0.0) if prev.get("fingerprint") == fp else 0.0)
        self.manifest["stages"][name] = {"fingerprint": fp, "finished": True, "seconds": round(total, 2), **extra}
        self.save_manifest()


def command_line() -> str:
    """The command as typed, with credentials in URLs masked."""
    from .config import redact_url

    return redact_url(" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)))
