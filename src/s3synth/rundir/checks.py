"""What makes a run directory's files untrustworthy: a damaged manifest, an output cut short or changed
since s3synth wrote it (its size and sha256 are recorded in the manifest), a lock held by another process.
Read-only helpers, shared by the run directory and by the report and export."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from ..io import DamagedFile, decode_text, parse_json, parse_jsonl
from .layout import LAYOUT


MANIFEST_FORMAT = 1
"""Version of manifest.json's layout; a run directory of a higher one is refused (written by a newer s3synth)."""

# Known manifest keys and their JSON types; a manifest with one of another type is treated as damaged.
MANIFEST_TYPES = {"stages": dict, "invocations": list, "synthesis": dict, "llm": dict, "leakage": dict,
                  "dedup": dict, "files": dict, "split": dict, "inputs": dict, "versions": dict,
                  "seed_label_counts": dict, "result": dict, "format": int, "models": dict}
_ROUND_RE = re.compile(r"^round-\d+$")


def manifest_problem(m) -> str | None:
    """What makes `m` (a parsed manifest.json) unusable, or None. Unknown keys (a newer s3synth) are fine."""
    if not isinstance(m, dict):
        return f"not a JSON object but {type(m).__name__}"
    for key, tp in MANIFEST_TYPES.items():
        if key in m and not (isinstance(m[key], tp) and not (tp is int and isinstance(m[key], bool))):
            return f"'{key}' is {type(m[key]).__name__}, not {'object' if tp is dict else tp.__name__}"
    for name, st in m.get("stages", {}).items():
        if not isinstance(st, dict):
            return f"stage '{name}' is {type(st).__name__}, not object"
    if not all(isinstance(v, dict) for v in m.get("invocations", [])):
        return "an entry of 'invocations' is not an object"
    if not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in m.get("files", {}).values()):
        return "an entry of 'files' is not a {bytes, sha256} record"
    return None


def _is_layout_name(name: str) -> bool:
    """Whether s3synth writes a file or folder of this name at the top of a run directory."""
    return name in LAYOUT.top_names() or name.startswith(LAYOUT.cache + "-") or bool(_ROUND_RE.match(name))


def in_use(path: str | Path) -> bool:
    """Whether an s3synth process holds the lock of run directory `path` now (asked without waiting)."""
    try:
        fd = os.open(Path(path) / LAYOUT.lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _say(msg: str) -> None:
    """A one-line notice on stderr that shows even with --quiet: s3synth moved or refused something."""
    print(f"s3synth: {msg}", file=sys.stderr, flush=True)


def _check_content(p: Path, data: bytes) -> str | None:
    """Why `data` (the bytes of output `p`) cannot be what s3synth wrote there, or None."""
    try:
        text = decode_text(p, data)
        if p.name.endswith(".jsonl"):
            if text and not text.endswith("\n"):
                return "cut short: no newline at its end"
            parse_jsonl(p, text, objects=True)
        elif p.name.endswith(".json"):
            parse_json(p, text)
    except DamagedFile as e:
        return e.why
    return None


def _record(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _file_problem(p: Path, rec: dict | None) -> tuple[str, str] | None:
    """(tag, why) when the file at `p` cannot be trusted as the s3synth output recorded as `rec` (size and
    sha256; None for a run directory of an older s3synth: then it must be valid JSON / JSON Lines);
    tag "damaged" (unreadable, cut short) or "changed" (valid, but not what s3synth wrote). None: fine."""
    if p.is_dir():
        return "damaged", "a folder, not a file"
    try:
        data = p.read_bytes()
    except OSError as e:
        return "damaged", f"cannot read it ({e.strerror or e})"
    if rec is not None and _record(data) == {k: rec.get(k) for k in ("bytes", "sha256")}:
        return None
    problem = _check_content(p, data)
    if problem:
        return "damaged", problem
    if rec is None:
        return None
    size = rec.get("bytes")
    if isinstance(size, int) and len(data) < size:
        return "changed", f"cut short since s3synth wrote it ({len(data)} of {size} bytes)"
    return "changed", "changed since s3synth wrote it (edited?)"


def recorded_problem(root: str | Path, manifest: dict, rel: str) -> str | None:
    """Why file `rel` of run directory `root` cannot be trusted (see _file_problem), or None when it can or
    is absent. Read-only: for the report and export."""
    p = Path(root) / rel
    if not os.path.lexists(p):
        return None
    found = _file_problem(p, (manifest.get("files") or {}).get(rel))
    return found and (found[1] if found[0] == "changed" else f"damaged: {found[1]}")
