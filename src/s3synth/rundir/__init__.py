"""The run directory: config, manifest, stage fingerprints, a lock against two runs at once.

Opening one meets what a disk, a copy, an editor, a second process or another s3synth version can
leave behind (`RunDir.open`): a bad --out gives a one-line S3Error naming the path and the way out; a
damaged manifest.json is kept as manifest.json.damaged-<time> and started afresh (stages are redone,
LLM answers come from the cache); a stage output that is cut short or changed since s3synth wrote it
(the manifest's "files" records its size and sha256) is kept as <name>.damaged-<time> or
<name>.changed-<time> and its stage redone. Nothing a user put in the folder is deleted or overwritten:
a file s3synth did not write is moved aside (and said so) before s3synth writes one of that name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

from ..errors import S3Error
from ..io import TEMP_RE, DamagedFile, add_write_hook, file_mode, read_json, remove_write_hook, write_error, write_json
from .checks import (MANIFEST_FORMAT, MANIFEST_TYPES, _file_problem, _is_layout_name, _record, _say,  # noqa: F401
                     _stamp, in_use, manifest_problem, recorded_problem)
from .layout import (ATTEMPT_STRIDE, BAND_WIDTH, LAYOUT, MAX_PER_REQUEST, SAMPLE_BANDS, Layout, band_of,  # noqa: F401
                     fingerprint, list_sample_index)


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("s3synth", "torch", "transformers", "huggingface_hub", "llama_cpp_python", "numpy", "scikit-learn",
                 "httpx"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Stage:
    """The guard of one stage: skip it when finished with the same inputs, else time it, count its LLM
    usage and mark it finished when its block ends without an error.

        st = rd.stage("seed", fp, LAYOUT.seed, usage=llm_usage)
        if not st.done:
            with st:
                ...                      # write the outputs
                st.extra["examples"] = n

    A finished stage is redone when one of its files (`outputs`, and every file it wrote, recorded as
    "wrote") is missing, cut short or changed since it was written (such a file is first kept aside: see
    RunDir.output_ok); so are the stages finished after it, which were built on it.
    """

    def __init__(self, rd: "RunDir", name: str, fp: str, outputs: tuple[str, ...], usage=None):
        self.rd, self.name, self.fp, self.outputs, self._usage = rd, name, fp, outputs, usage
        self.extra: dict = {}
        st = rd.manifest["stages"].get(name)
        self.done = bool(st and st.get("fingerprint") == fp and st.get("finished"))
        if self.done:
            wrote = st.get("wrote") if isinstance(st.get("wrote"), list) else []
            files = list(dict.fromkeys([*outputs, *(f for f in wrote if isinstance(f, str))]))
            self.done = all([rd.output_ok(f, name) for f in files])
            if not self.done:
                rd.redo_after(name)

    def __enter__(self) -> "Stage":
        self._t = time.time()
        self._u = self._usage() if self._usage else None
        self.rd._stage_writes = set()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        wrote, self.rd._stage_writes = sorted(self.rd._stage_writes or ()), None
        if exc_type is not None:
            return
        if self._usage:
            now = self._usage()
            self.extra["llm"] = {k: now[k] - self._u.get(k, 0) for k in now}
        self.extra["wrote"] = wrote
        self.rd.mark(self.name, self.fp, time.time() - self._t, **self.extra)

    @property
    def seconds(self) -> float:
        return round(time.time() - self._t, 2)


class RunDir:
    """One run directory, opened for writing by one process at a time:

        rd = RunDir("runs/x").open()     # S3Error (one line, with the way out) for what it cannot use
        try: ... finally: rd.close()
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_fd = None
        self.manifest: dict = {}
        self.files: dict = {}            # rel path -> {"bytes", "sha256"} of what s3synth last wrote there
        self._recording = False          # whether `files` covers everything s3synth wrote here
        self._saved: str | None = None   # _snapshot() of the manifest as last read or written
        self._stage_writes: set | None = None    # files written by the stage running now
        self._files_lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    def open(self) -> "RunDir":
        """Check and create the folder, take the lock, load the manifest of an earlier invocation if any."""
        fresh = self._check_folder()
        self._take_lock()
        try:
            self._remove_temp_files()
            self.manifest = self._load_manifest()
        except BaseException:
            self.close()
            raise
        self._recording = fresh or "files" in self.manifest
        self.files = self.manifest.setdefault("files", {})
        self.manifest.setdefault("stages", {})
        self.manifest.setdefault("invocations", [])
        self.manifest.setdefault("synthesis", {})
        self._saved = self._snapshot() if (self.path / LAYOUT.manifest).is_file() else None
        add_write_hook(self)
        return self

    def _snapshot(self) -> str:
        """The manifest as saved, but for its time stamp: a save that would change nothing else is skipped."""
        return json.dumps({k: v for k, v in self.manifest.items() if k not in ("updated", "format")},
                          sort_keys=True, default=str)

    def _check_folder(self) -> bool:
        """Refuse a --out that cannot be a run directory; create it if new. Returns True when the folder
        holds nothing of s3synth's (new, empty, or only other files, which are left alone)."""
        p = self.path
        if os.path.islink(p) and not p.exists():
            try:
                os.stat(p)
            except OSError as e:
                target = os.readlink(p)
                if e.errno == errno.ELOOP:
                    raise S3Error(f"{p}: a symbolic link that loops (-> {target}); remove the link or give "
                                  "another --out") from None
                raise S3Error(f"{p}: a symbolic link to {target}, which does not exist; create that folder "
                              "or give another --out") from None
        if os.path.lexists(p) and not p.is_dir():
            raise S3Error(f"{p}: a file, not a folder; give a new folder as --out (e.g. {p}.run) or move the "
                          "file away")
        if not p.exists():
            anc = p.parent
            while not os.path.lexists(anc) and anc != anc.parent:
                anc = anc.parent
            if os.path.lexists(anc) and not anc.is_dir():
                raise S3Error(f"{p}: {anc} is a file, not a folder; give another --out")
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise S3Error(f"{p}: cannot create the folder ({e.strerror or e}); give a folder you can write "
                              "to as --out") from None
            return True
        try:
            names = os.listdir(p)
        except OSError as e:
            raise S3Error(f"{p}: cannot read the folder ({e.strerror or e}); fix its permissions "
                          f"(chmod u+rwx {p}) or give another --out") from None
        if LAYOUT.lock in names or self._manifest_is_ours(names):
            return False
        clash = sorted(n for n in names if _is_layout_name(n))
        if clash:
            shown = ", ".join(clash[:3]) + (", ..." if len(clash) > 3 else "")
            raise S3Error(f"{p}: not an s3synth run directory, and a run would write over what is there "
                          f"({shown}); give a new or empty folder as --out, or move those away")
        if names:
            _say(f"note: {p} already holds {len(names)} other file(s); s3synth adds its own beside them and "
                 "leaves those as they are")
        return True

    def _manifest_is_ours(self, names: list[str]) -> bool:
        """A manifest.json of s3synth's (also a damaged one beside other s3synth files), not a stranger's."""
        if LAYOUT.manifest not in names:
            return False
        try:
            m = read_json(self.path / LAYOUT.manifest)
        except (DamagedFile, OSError):
            return LAYOUT.config in names        # cut short, but written by s3synth beside its config
        return isinstance(m, dict) and ("stages" in m or "invocations" in m)

    def _take_lock(self) -> None:
        lock = self.path / LAYOUT.lock
        if lock.is_dir() and not lock.is_symlink():
            raise S3Error(f"{lock}: a folder where s3synth keeps its lock file; move it away, then run the "
                          "same command again")
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise S3Error(f"{self.path}: not writable ({e.strerror}); make it writable "
                              f"(chmod -R u+w {self.path}), or copy it (cp -r) and give the copy as --out") from None
            raise write_error(lock, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                pid = ""
            os.close(fd)
            who = f" (pid {pid})" if pid.isdigit() else ""
            raise S3Error(f"{self.path} is in use by another s3synth process{who}; wait for it or use another "
                          "--out") from None
        except OSError as e:
            os.close(fd)
            raise S3Error(f"{lock}: cannot lock it ({e.strerror or e}); give a folder on a local disk as "
                          "--out") from None
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError:
            pass
        if not os.access(self.path, os.W_OK):
            self.close()
            raise S3Error(f"{self.path}: not writable (permission denied); make it writable "
                          f"(chmod -R u+w {self.path}), or copy it (cp -r) and give the copy as --out")

    def _remove_temp_files(self) -> None:
        """Delete the temp files of writes killed half-way (`.seed.jsonl.k3j_x9aq.tmp`): s3synth's own,
        never complete, and harmless to remove under the lock. Other files are not looked at."""
        own = LAYOUT.file_names()
        folders = [self.path, self.path / LAYOUT.final_dir, *(self.path / LAYOUT.round_dir(q)
                                                               for q in LAYOUT.rounds_present(self.path))]
        n = 0
        for d in folders:
            try:
                names = os.listdir(d)
            except OSError:
                continue
            for name in names:
                m = TEMP_RE.match(name)
                if m and m.group("name") in own and (d / name).is_file() and not (d / name).is_symlink():
                    try:
                        os.unlink(d / name)
                        n += 1
                    except OSError:
                        pass
        if n:
            _say(f"note: removed {n} temp file(s) left by an interrupted write in {self.path}")

    def _load_manifest(self) -> dict:
        mf = self.path / LAYOUT.manifest
        if not os.path.lexists(mf):
            return {}
        if mf.is_dir() and not mf.is_symlink():
            raise S3Error(f"{mf}: a folder where s3synth keeps a file; move it away, then run the same command "
                          "again")
        try:
            m = read_json(mf)
            problem = manifest_problem(m)
        except DamagedFile as e:
            m, problem = None, e.why
        except FileNotFoundError:        # a dangling symbolic link
            m, problem = None, "a symbolic link to a missing file"
        if problem is None:
            fmt = m.get("format", 1)
            if fmt > MANIFEST_FORMAT:
                made = (m.get("versions") or {}).get("s3synth", "?")
                raise S3Error(f"{mf}: written by a newer s3synth ({made}, manifest format {fmt}); this is "
                              f"s3synth {_own_version()}: upgrade it (pip install -U s3synth) or give another --out")
            return m
        kept = self._keep_aside(mf, "damaged")
        _say(f"warning: {mf} is damaged ({problem}); kept it as {kept.name} and started a new one: the stages are "
             "redone, with the LLM answers already paid for taken from the cache")
        return {}

    def open_cache(self, path: str | Path | None = None):
        """The LLM answer cache (default: the run directory's llm_cache.sqlite), created with the file mode
        of the umask; S3Error (one line, with the way out) when it cannot be used."""
        import sqlite3

        from ..llm.cache import LLMCache

        p = Path(path) if path else self.path / LAYOUT.cache
        if p.is_dir():
            raise S3Error(f"{p}: a folder where s3synth keeps its LLM answer cache; move it away, then run the "
                          "same command again")
        if not os.path.lexists(p):
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY, file_mode() | 0o600))
            except OSError as e:
                raise write_error(p, e) from None
        try:
            cache = LLMCache(p)
            cache.spent()
        except sqlite3.OperationalError as e:
            raise S3Error(f"{p}: cannot open the LLM answer cache ({e}); check that it is writable and not on a "
                          "network disk, then run the same command again") from None
        except sqlite3.DatabaseError as e:
            raise S3Error(f"{p}: not a usable SQLite database ({e}); it holds the LLM answers paid for so far: "
                          f"restore it from a copy, or move it away (e.g. to {p.name}.bad) to start an empty cache "
                          "(answers not in it are asked and paid again)") from None
        return cache

    # ------------------------------------------------------------------ what s3synth wrote
    def _rel(self, path) -> str | None:
        p = Path(path)
        for root, q in ((self.path, p), (self.path.resolve(), p.resolve())):
            try:
                return q.relative_to(root).as_posix()
            except ValueError:
                continue
        return None

    def _keep_aside(self, p: Path, tag: str) -> Path:
        """Rename `p` to `<name>.<tag>-<time>` (a free name) and return the new path; nothing is deleted."""
        base = p.with_name(f"{p.name}.{tag}-{_stamp()}")
        dest, i = base, 2
        while os.path.lexists(dest):
            dest, i = base.with_name(f"{base.name}-{i}"), i + 1
        try:
            os.rename(p, dest)
        except OSError as e:
            raise write_error(p, e, "cannot keep a copy of it") from None
        with self._files_lock:
            self.files.pop(self._rel(p) or "", None)
        return dest

    def output_ok(self, rel: str, stage: str) -> bool:
        """Whether output `rel` of a finished stage can be trusted: present, and what s3synth wrote (its
        size and sha256 as recorded; for a run directory of an older s3synth, valid JSON / JSON Lines).
        A damaged or changed output is kept aside (said so on stderr) and False returned: the stage is redone."""
        p = self.path / rel
        if not os.path.lexists(p):
            return False
        if p.is_dir() and not p.is_symlink():
            raise S3Error(f"{p}: a folder where s3synth keeps a file; move it away, then run the same command "
                          "again")
        found = _file_problem(p, self.files.get(rel))
        if found is None:
            return True
        tag, why = found
        kept = self._keep_aside(p, tag)
        what = f"is damaged ({why})" if tag == "damaged" else f"was {why}"
        _say(f"warning: {p} {what}; kept it as {kept.name} and redoing stage {stage} (LLM answers already paid "
             "for come from the cache)")
        return False

    def before_write(self, path, data: bytes) -> None:
        """Called before s3synth writes `data` to `path`: a file there that s3synth did not write (none is
        recorded), or that changed since, is kept aside first, unless it holds `data` already (a user's
        file is never overwritten)."""
        rel = self._rel(path)
        p = Path(path)
        if rel is None or rel == LAYOUT.manifest or not os.path.lexists(p) or p.is_dir():
            return
        rec = self.files.get(rel)
        if rec is None and not self._recording:
            return                      # written by an older s3synth, which recorded nothing
        try:
            now = p.read_bytes()
        except OSError:
            now = None
        if now is not None and (now == data or (rec is not None and _record(now) == {
                k: rec.get(k) for k in ("bytes", "sha256")})):
            return
        kept = self._keep_aside(p, "changed" if rec else "kept")
        why = "was changed since s3synth wrote it" if rec else "is not a file s3synth recorded writing"
        _say(f"note: {path} {why}; kept it as {kept.name} before writing a new one")

    def after_write(self, path, data: bytes) -> None:
        rel = self._rel(path)
        if rel is not None and rel != LAYOUT.manifest:
            with self._files_lock:
                self.files[rel] = _record(data)
                if self._stage_writes is not None:
                    self._stage_writes.add(rel)

    def redo_after(self, name: str) -> None:
        """Mark the stages finished after stage `name` (in the manifest's order) as unfinished: they were
        built on what `name` is about to redo."""
        names = list(self.manifest["stages"])
        if name in names:
            for later in names[names.index(name) + 1:]:
                self.manifest["stages"][later]["finished"] = False

    # ------------------------------------------------------------------ the rest
    def close(self) -> None:
        remove_write_hook(self)
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def save_manifest(self) -> None:
        with self._files_lock:
            self.manifest["files"] = dict(sorted(self.files.items()))
            self.files = self.manifest["files"]
        snap = self._snapshot()
        if snap == self._saved:
            return
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.manifest["format"] = MANIFEST_FORMAT
        write_json(self.path / LAYOUT.manifest, self.manifest)
        self._saved = snap

    def stage(self, name: str, fp: str, *outputs: str, usage=None) -> Stage:
        return Stage(self, name, fp, outputs, usage)

    def mark(self, name: str, fp: str, seconds: float, **extra) -> None:
        prev = self.manifest["stages"].get(name, {})
        total = seconds + (prev.get("seconds", 0.0) if prev.get("fingerprint") == fp else 0.0)
        self.manifest["stages"][name] = {"fingerprint": fp, "finished": True, "seconds": round(total, 2), **extra}
        self.save_manifest()


def _own_version() -> str:
    try:
        return metadata.version("s3synth")
    except metadata.PackageNotFoundError:
        return "?"


def command_line() -> str:
    """The command as typed, with credentials in URLs masked."""
    from ..config import redact_url

    return redact_url(" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)))


def shell_path(path: str | Path) -> str:
    """A folder as a user types it in a suggested command: relative to the current folder when it lies
    under it, else absolute; quoted for a POSIX shell where needed.

    Examples (in /home/ann): shell_path("/home/ann/runs/urg") -> "runs/urg"; shell_path("/data/r") -> "/data/r";
    shell_path("/home/ann/my runs/a") -> "'my runs/a'"; shell_path("/home/ann") -> ".".
    """
    import shlex

    full, here = Path(os.path.abspath(path)), Path(os.path.abspath(os.getcwd()))
    return shlex.quote(str(full.relative_to(here)) if full.is_relative_to(here) else str(full))
