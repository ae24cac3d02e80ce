"""Atomic file writes and JSON Lines helpers for the run directory.

Every write goes through `atomic_write_bytes`: a temp file in the same folder (named
`.<name>.<8 random characters>.tmp`), fsync, rename; the file gets the mode the user's umask allows
(0o666 & ~umask, like any file a program creates), never the temp file's 0600. A failed write (disk full,
no permission, a folder where the file should be) raises a one-line S3Error naming the file and leaves
whatever was there untouched. Readers raise `DamagedFile` (an S3Error) for a file that is not valid
UTF-8 JSON / JSON Lines, so a damaged file never ends in a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable

from .errors import S3Error

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
DATA_SUFFIXES = (*JSON_SUFFIXES, ".csv", ".parquet")      # the data files `data.load_examples` reads


def json_sha256(rows: Iterable[Any]) -> str:
    """The sha256 of `rows` as canonical JSON (sorted keys, UTF-8; what JSON cannot hold as its text).

    Example: json_sha256([{"b": 1, "a": "x"}]) == json_sha256([{"a": "x", "b": 1}])"""
    import hashlib

    blob = json.dumps(list(rows), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")
"""The names of atomic_write_bytes' temp files: `.seed.jsonl.k3j_x9aq.tmp` for seed.jsonl."""


class DamagedFile(S3Error, json.JSONDecodeError):
    """A file that cannot be read as what it should be (cut short, not JSON, not UTF-8, a folder...).
    Also a json.JSONDecodeError, so code that catches that keeps working."""

    def __init__(self, path, why: str = "damaged",
                 hint: str = "restore it or move it away, then run the command again"):
        self.path, self.why, self.hint = str(path), why, hint
        json.JSONDecodeError.__init__(self, why, "", 0)
        self.args = (f"{self.path}: {why}; {hint}",)

    def __str__(self) -> str:
        return self.args[0]


# ------------------------------------------------------------------ permissions

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of a new file under the current umask: 0o644 under umask 022, 0o664 under 002."""
    return 0o666 & ~current_umask()


def apply_file_mode(path: str | os.PathLike) -> None:
    """Give every regular file at or under `path` the mode of a new file (see file_mode); for folders
    written by libraries that create their files 0600 (safetensors writes through a temp file)."""
    mode = file_mode()
    p = Path(path)
    files = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file() and not q.is_symlink()]
    for f in files:
        try:
            os.chmod(f, mode)
        except OSError:
            pass


# ------------------------------------------------------------------ writes

_hooks: list = []
_hooks_lock = threading.Lock()


def add_write_hook(hook) -> None:
    """Register an object with `before_write(path, data)` and `after_write(path, data)`, called around every
    atomic write (the run directory records what it wrote and keeps a copy of a file changed since)."""
    with _hooks_lock:
        _hooks.append(hook)


def remove_write_hook(hook) -> None:
    with _hooks_lock:
        if hook in _hooks:
            _hooks.remove(hook)


def write_error(path, e: OSError, doing: str = "cannot write") -> S3Error:
    """A one-line S3Error for an OSError met while writing `path`, with the way out."""
    code = getattr(e, "errno", None)
    why = e.strerror or str(e)
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space, then run the same command again (everything written so far is kept)"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "make the folder writable (chmod u+w), or give another output folder"
    elif code == errno.EISDIR or (code is not None and Path(path).is_dir() and not Path(path).is_symlink()):
        why = "a folder is where s3synth writes a file"
        hint = "move that folder away (it is not s3synth's), then run the same command again"
    elif code == errno.ENOTDIR:
        hint = "a file stands where a folder is needed on this path; move it away or give another output folder"
    elif code == errno.EEXIST:
        hint = "something not a folder (a file, a broken symbolic link) is in the way on this path; move it away"
    elif code == errno.ELOOP:
        hint = "a symbolic link on this path loops; remove it or give another output folder"
    else:
        hint = "fix the cause, then run the same command again"
    return S3Error(f"{path}: {doing} ({why}); {hint}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    with _hooks_lock:
        hooks = list(_hooks)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path.parent, e, "cannot create the folder") from None
    if path.is_dir() and not path.is_symlink():
        raise write_error(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    for h in hooks:
        h.before_write(path, data)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise
    try:  # make the rename durable too
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    for h in hooks:
        h.after_write(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ------------------------------------------------------------------ reads

def _read_bytes(path: Path) -> bytes:
    """The bytes of `path`; FileNotFoundError as it is (callers check for it), DamagedFile for the rest."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise DamagedFile(path, "a folder, not a file") from None
    except OSError as e:
        raise DamagedFile(path, f"cannot read it ({e.strerror or e})") from None


def decode_text(path: Path, data: bytes) -> str:
    """`data` (the bytes of `path`) as UTF-8 text; DamagedFile when it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DamagedFile(path, f"not valid UTF-8 at byte {e.start}") from None


def parse_json(path: Path, text: str) -> Any:
    """The JSON value of `text` (the content of `path`); DamagedFile when it is empty or not JSON."""
    if not text.strip():
        raise DamagedFile(path, "empty (cut short?)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DamagedFile(path, f"not valid JSON at line {e.lineno} column {e.colno} (cut short?)") from None


def parse_jsonl(path: Path, text: str, objects: bool = False) -> list:
    """One JSON value per non-blank line of `text` (the content of `path`); DamagedFile naming the first
    line that is not JSON (or, with `objects`, not a JSON object)."""
    out = []
    for i, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DamagedFile(path, f"line {i} is not valid JSON (cut short?)") from None
            if objects and not isinstance(row, dict):
                raise DamagedFile(path, f"line {i} is not a JSON object")
            out.append(row)
    return out


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    return parse_json(path, decode_text(path, _read_bytes(path)))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    return parse_jsonl(path, decode_text(path, _read_bytes(path)))
