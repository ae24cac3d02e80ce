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


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd = None
        self.manifest: dict = {}

    def open(self) -> "RunDir":
        """Create the folder, take the lock, load the manifest of an earlier invocation if any."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise S3Error(f"{self.path} is in use by another s3synth process; wait for it or use another --out") from None
        self._lock_fd = fd
        mf = self.path / "manifest.json"
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
        write_json(self.path / "manifest.json", self.manifest)

    def stage_done(self, name: str, fp: str, *files: str) -> bool:
        st = self.manifest["stages"].get(name)
        return bool(st and st.get("fingerprint") == fp and st.get("finished")
                    and all((self.path / f).exists() for f in files))

    def mark(self, name: str, fp: str, seconds: float, **extra) -> None:
        prev = self.manifest["stages"].get(name, {})
        total = seconds + (prev.get("seconds", 0.0) if prev.get("fingerprint") == fp else 0.0)
        self.manifest["stages"][name] = {"fingerprint": fp, "finished": True, "seconds": round(total, 2), **extra}
        self.save_manifest()

    def mark_started(self, name: str, fp: str, seconds_so_far: float = 0.0) -> None:
        prev = self.manifest["stages"].get(name, {})
        if prev.get("fingerprint") != fp:
            self.manifest["stages"][name] = {"fingerprint": fp, "finished": False, "seconds": 0.0}
        else:
            prev["finished"] = False
        self.save_manifest()


def command_line() -> str:
    """The command as typed, with credentials in URLs masked."""
    from .config import redact_url

    return redact_url(" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)))
