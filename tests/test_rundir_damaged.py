"""Odd and damaged run directories, met as a user meets them: through the CLI.

Each kind of damage (what a disk, a copy, an editor, a second process or another s3synth version can
leave behind) ends either in a one-line error (exit 2) that names the file and the way out, with nothing
in the folder changed, or in a recovery that keeps a copy of what it replaces, finishes the run and asks
the LLM nothing it has answered before. Files a user put in the folder are never changed.

One finished run directory is built per module (LLM `echo`, learner `fake`: see conftest.py); each case
works on a copy of it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import cache_rows, plugin_env
from openai_stub import OpenAIStub

import s3synth.cli
from s3synth.cli import cli
from s3synth.io import atomic_write_bytes, read_json, read_jsonl

UMASK = 0o002           # the base run is written under this umask: every file should be 0o664
ROWS = [{"premise": f"The town of Place{i} has {i + 3} bridges and a river.",
         "hypothesis": f"Place{i} has bridges." if i % 2 == 0 else f"Place{i} has no river.",
         "label": "entailment" if i % 2 == 0 else "not_entailment"} for i in range(24)]
# files a user put into the run directory (an editor's backups, notes): never touched
USER_FILES = {"notes.txt": b"my notes\n", "manifest.json~": b'{"an editor": "backup"}', "seed.jsonl~": b"old\n",
              ".manifest.json.swp": b"\x00vim swap", "round-1/why.md": b"# my analysis\n", ".notes.tmp": b"mine",
              ".mydata.jsonl.ab12cd34.tmp": b"looks like a temp file of ours, but is not"}


def run_args(gold: Path, out: Path) -> list[str]:
    return ["run", "--task", "rte", "--gold-eval", str(gold), "--llm", "echo:m", "--learner", "fake",
            "--seed-size", "12", "--rounds", "1", "--out", str(out), "-q"]


def invoke(args):
    """The CLI in this process; returns (exit code, stderr lines, LLM requests answered by a new call)."""
    from fake_plugins import ECHO_INSTANCES

    before = len(ECHO_INSTANCES)
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in r.stderr, r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    calls = sum(len(e.seen) for e in ECHO_INSTANCES[before:])
    return r.exit_code, r.stderr.strip().splitlines(), calls


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """`run` writes no report here (the report of a damaged directory is tested through `s3synth report`),
    and writes are not flushed to the disk (durability is not what these tests are about)."""
    monkeypatch.setattr(s3synth.cli, "_write_report", lambda *a, **k: None)
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(gold file, finished run directory) written under UMASK; its answer cache checkpointed, so a copy
    holds every answer in llm_cache.sqlite itself."""
    tmp = tmp_path_factory.mktemp("damaged")
    gold = tmp / "gold.jsonl"
    gold.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp / "base"
    old = os.umask(UMASK)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(s3synth.cli, "_write_report", lambda *a, **k: None)
            code, err, calls = invoke(run_args(gold, out))
    finally:
        os.umask(old)
    assert code == 0 and calls > 0, err
    with sqlite3.connect(out / "llm_cache.sqlite") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert read_jsonl(out / "round-1/added.jsonl"), "the base run should extrapolate in round 1"
    return gold, out


VOLATILE = {".lock", "llm_cache.sqlite-shm", "llm_cache.sqlite-wal"}   # the lock's pid, SQLite's own index


def files_of(d: Path) -> dict[str, bytes]:
    """Every regular file under `d` (relative path -> bytes) but VOLATILE ones, symbolic links not followed."""
    out = {}
    for root, dirs, names in os.walk(d):
        for n in names:
            p = Path(root) / n
            rel = p.relative_to(d).as_posix()
            if p.is_file() and not p.is_symlink() and rel not in VOLATILE:
                out[rel] = p.read_bytes()
    return out


def copy_run(base_dir: Path, dest: Path) -> Path:
    shutil.copytree(base_dir, dest, symlinks=True)
    for rel, data in USER_FILES.items():
        (dest / rel).write_bytes(data)
    return dest


def one_line_error(code, err, *words):
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("s3synth: error: "), err
    for w in words:
        assert w in err[0], (w, err[0])


# ------------------------------------------------------------------ kinds that end in a one-line error

def _write(rel, data):
    def damage(d: Path):
        (d / rel).write_bytes(data)
    return damage


def _hold_lock(d: Path, holders: list):
    """A second s3synth process holding the run directory (flock, pid written as s3synth does)."""
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.ftruncate(fd, 0); os.write(fd, f'{os.getpid()}\\n'.encode()); print('held', flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(d / ".lock")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    holders.append(p)
    return p.pid


def _newer_manifest(d: Path):
    m = read_json(d / "manifest.json")
    m["format"] = 2
    m["versions"]["s3synth"] = "9.0"
    (d / "manifest.json").write_text(json.dumps(m))


def _metrics_folder(d: Path):
    (d / "final/metrics.json").unlink()
    (d / "final/metrics.json").mkdir()
    (d / "final/metrics.json/mine.txt").write_text("a user's file")


def _manifest_folder(d: Path):
    (d / "manifest.json").unlink()
    (d / "manifest.json").mkdir()


def _final_loops(d: Path):
    shutil.rmtree(d / "final")
    (d / "final").symlink_to("final")


def _round_is_a_file(d: Path):
    shutil.rmtree(d / "round-1")
    (d / "round-1").write_text("a user's file named round-1")


MID_RUN = {"output-is-a-folder", "symlink-loop-inside", "round-folder-is-a-file"}
ERRORS = {
    # kind: (damage, words the one line must hold: the file, the way out); met when the directory is opened,
    # but for MID_RUN ones, met when the run reaches that stage (the manifest records the invocation)
    "cache-not-a-database": (_write("llm_cache.sqlite", b"this is not SQLite " * 300),
                             ["llm_cache.sqlite", "not a usable SQLite database", "restore it from a copy",
                              "move it away"]),
    "cache-cut-short": (lambda d: os.truncate(d / "llm_cache.sqlite", 5000),
                        ["llm_cache.sqlite", "restore it from a copy"]),
    "cache-is-a-folder": (lambda d: ((d / "llm_cache.sqlite").unlink(), (d / "llm_cache.sqlite").mkdir()),
                          ["llm_cache.sqlite", "a folder", "move it away"]),
    "manifest-from-newer-s3synth": (_newer_manifest, ["manifest.json", "newer s3synth (9.0", "upgrade it"]),
    "output-is-a-folder": (_metrics_folder, ["final/metrics.json", "a folder", "move it away"]),
    "manifest-is-a-folder": (_manifest_folder, ["manifest.json", "a folder", "move it away"]),
    "lock-is-a-folder": (lambda d: ((d / ".lock").unlink(), (d / ".lock").mkdir()),
                         [".lock", "a folder", "move it away"]),
    "symlink-loop-inside": (_final_loops, ["final/model", "a symbolic link on this path loops", "remove it"]),
    "round-folder-is-a-file": (_round_is_a_file, ["round-1: cannot create the folder", "move it away"]),
}


def damaged_copy(base, tmp_path, damage) -> tuple:
    """(gold file, a copy of the finished base run with `damage(dir)` done to it)."""
    gold, base_dir = base
    d = copy_run(base_dir, tmp_path / "run")
    damage(d)
    return gold, d


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_damage_that_needs_the_user_is_one_line_and_changes_nothing(base, tmp_path, kind):
    damage, words = ERRORS[kind]
    gold, d = damaged_copy(base, tmp_path, damage)
    before = files_of(d)
    code, err, calls = invoke(run_args(gold, d))
    one_line_error(code, err, str(d), *words)
    after = files_of(d)
    if kind in MID_RUN:
        m = json.loads(after.pop("manifest.json"))
        assert m["invocations"][-1]["interrupted"] is True and before.pop("manifest.json")
    assert after == before and calls == 0


def test_run_in_use_by_another_process(base, tmp_path):
    gold, base_dir = base
    d = copy_run(base_dir, tmp_path / "run")
    holders = []
    try:
        pid = _hold_lock(d, holders)
        before = files_of(d)
        code, err, _ = invoke(run_args(gold, d))
        one_line_error(code, err, str(d), "in use by another s3synth process", f"(pid {pid})", "wait for it")
        assert files_of(d) == before
    finally:
        for p in holders:
            p.kill()
            p.wait()
    code, err, calls = invoke(run_args(gold, d))       # the holder gone (its lock with it): the run goes on
    assert code == 0 and calls == 0, err


@pytest.mark.parametrize("kind", ["regular-file", "inside-a-file", "symlink-loop", "dangling-symlink",
                                  "foreign-seed", "foreign-manifest"])
def test_out_that_cannot_be_a_run_directory(base, tmp_path, kind):
    gold, _ = base
    f = tmp_path / "data.txt"
    f.write_bytes(b"a user's file\n")
    out, words = {
        "regular-file": (f, [f"{f}: a file, not a folder", "give a new folder as --out"]),
        "inside-a-file": (f / "sub" / "run", [f"{f} is a file, not a folder", "give another --out"]),
        "symlink-loop": (tmp_path / "loop", ["a symbolic link that loops", "remove the link"]),
        "dangling-symlink": (tmp_path / "link", ["which does not exist", "create that folder"]),
        "foreign-seed": (tmp_path / "mine", ["not an s3synth run directory", "seed.jsonl", "new or empty folder"]),
        "foreign-manifest": (tmp_path / "app", ["not an s3synth run directory", "manifest.json", "move those away"]),
    }[kind]
    if kind == "symlink-loop":
        out.symlink_to("loop")
    elif kind == "dangling-symlink":
        out.symlink_to(tmp_path / "missing" / "run")
    elif kind == "foreign-seed":       # a user's own seed.jsonl (and notes) without a manifest
        out.mkdir()
        (out / "seed.jsonl").write_text('{"text": "my own seed", "label": "entailment"}\n')
        (out / "notes.txt").write_text("mine")
    elif kind == "foreign-manifest":    # a web app's manifest.json
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my app", "icons": []}')
    before = files_of(tmp_path)
    code, err, calls = invoke(run_args(gold, out))
    one_line_error(code, err, str(out), *words)
    assert files_of(tmp_path) == before and calls == 0
    assert not (tmp_path / "missing").exists()
    if out.is_dir() and not out.is_symlink():
        assert not (out / ".lock").exists()        # nothing created in a folder that is not ours


def test_read_only_run_directory(base, tmp_path, monkeypatch):
    """A run directory the user cannot write to (simulated for root, who may write anywhere)."""
    gold, base_dir = base
    d = copy_run(base_dir, tmp_path / "run")
    before = files_of(d)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access",
                            lambda p, m, **k: False if (Path(p) == d and m & os.W_OK) else real(p, m, **k))
    else:
        d.chmod(0o555)
    try:
        code, err, calls = invoke(run_args(gold, d))
    finally:
        d.chmod(0o755)
    one_line_error(code, err, str(d), "not writable", f"chmod -R u+w {d}", "give the copy as --out")
    assert files_of(d) == before and calls == 0


def test_disk_full_is_one_line_keeps_everything_and_resumes(base, tmp_path, monkeypatch):
    gold, base_dir = base
    d = copy_run(base_dir, tmp_path / "run")
    (d / "round-1/added.jsonl").write_bytes(b"")       # so that the run has to write
    before = files_of(d)
    real = os.fsync         # the no-op of `quick`

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, err, calls = invoke(run_args(gold, d))
    monkeypatch.setattr(os, "fsync", real)
    one_line_error(code, err, f"{d / 'config.toml'}: cannot write (No space left on device)",
                   "free some space, then run the same command again")
    assert files_of(d) == before        # the first write failed: nothing changed, no half-written temp file
    code, err, calls = invoke(run_args(gold, d))        # space again: the same command finishes
    assert code == 0 and calls == 0, err
    assert len(err) == 1 and "round-1/added.jsonl was cut short since s3synth wrote it (0 of" in err[0], err
    assert (d / "round-1/added.jsonl").read_bytes() == (base_dir / "round-1/added.jsonl").read_bytes()


# ------------------------------------------------------------------ kinds that recover, keeping a copy

def _cut(rel, n):
    def damage(d: Path):
        data = (d / rel).read_bytes()
        (d / rel).write_bytes(data[:n])
    return damage


def _older_manifest(d: Path):
    """A manifest of an s3synth before manifest format 1: no "format", no "files"; an unknown key."""
    m = read_json(d / "manifest.json")
    m.pop("format"), m.pop("files")
    m["from_the_future"] = {"kept": True}
    (d / "manifest.json").write_text(json.dumps(m, indent=1))


def _older_and_seed_cut(d: Path):
    _older_manifest(d)
    _cut("seed.jsonl", 300)(d)


def _killed_before_manifest(d: Path):
    """The first invocation killed after the cache got answers but before the manifest was written."""
    for p in sorted(d.iterdir()):
        if p.name not in (".lock", "llm_cache.sqlite", "config.toml", *USER_FILES) and p.name != "round-1":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for p in (d / "round-1").iterdir():
        if p.name not in USER_FILES and f"round-1/{p.name}" not in USER_FILES:
            p.unlink()


RECOVERIES = {
    # kind: (damage, file kept aside (None: nothing to keep), words of the one stderr line about it)
    "manifest-cut-short": (_cut("manifest.json", 100), "manifest.json", ["is damaged", "not valid JSON"]),
    "manifest-empty": (_write("manifest.json", b""), "manifest.json", ["is damaged", "empty"]),
    "manifest-not-an-object": (_write("manifest.json", b"[1, 2]\n"), "manifest.json", ["not a JSON object"]),
    "manifest-stages-a-list": (_write("manifest.json", b'{"stages": [], "invocations": []}'), "manifest.json",
                               ["'stages' is list"]),
    "manifest-not-utf8": (_write("manifest.json", b'{"stages": {}, "note": "\xff"}'), "manifest.json",
                          ["not valid UTF-8"]),
    "seed-zero-bytes": (_write("seed.jsonl", b""), "seed.jsonl", ["cut short since s3synth wrote it (0 of"]),
    "added-cut-mid-line": (_cut("round-1/added.jsonl", 150), "round-1/added.jsonl", ["is damaged", "cut short"]),
    "sources-cut-at-a-line": (lambda d: (d / "round-1/sources.jsonl").write_text(
        (d / "round-1/sources.jsonl").read_text().split("\n", 1)[0] + "\n"), "round-1/sources.jsonl",
        ["cut short since s3synth wrote it"]),
    "final-metrics-cut": (_cut("final/metrics.json", 40), "final/metrics.json", ["is damaged", "not valid JSON"]),
    "train-edited": (lambda d: (d / "final/train.jsonl").write_text(
        (d / "final/train.jsonl").read_text().replace("entailment", "ENTAILMENT")), "final/train.jsonl",
        ["was changed since s3synth wrote it (edited?)"]),
    "config-edited-invalid": (_write("config.toml", b"task = [oops\n"), "config.toml", ["changed since s3synth"]),
    "older-manifest-seed-cut": (_older_and_seed_cut, "seed.jsonl", ["is damaged", "cut short"]),
}


@pytest.mark.parametrize("kind", sorted(RECOVERIES))
def test_damage_is_repaired_keeping_a_copy(base, tmp_path, kind):
    damage, rel, words = RECOVERIES[kind]
    gold, d = damaged_copy(base, tmp_path, damage)
    base_dir = base[1]
    damaged = (d / rel).read_bytes()
    code, err, calls = invoke(run_args(gold, d))
    assert code == 0 and calls == 0, err           # every answer from the cache
    about = [ln for ln in err if str(d / rel) in ln]
    assert len(about) == 1 and "kept it as" in about[0], err
    for w in words:
        assert w in about[0], (w, about[0])
    kept = re.search(r"kept it as (\S+?)(?: and|;| before)", about[0]).group(1)
    assert re.fullmatch(re.escape(Path(rel).name) + r"\.(damaged|changed)-\d{8}-\d{6}(-\d+)?", kept), kept
    assert (d / rel).with_name(kept).read_bytes() == damaged
    for f in ("seed.jsonl", "round-1/added.jsonl", "final/train.jsonl"):    # redone as before, from the cache
        assert (d / f).read_bytes() == (base_dir / f).read_bytes(), f
    assert read_json(d / "final/metrics.json")["train_size"] == read_json(base_dir / "final/metrics.json")["train_size"]
    assert {k: v for k, v in files_of(d).items() if k in USER_FILES} == USER_FILES
    assert invoke(run_args(gold, d))[:2] == (0, [])     # and the next invocation finds nothing to say


def _killed_after_a_write(d: Path):
    """SIGKILL after the seed stage wrote seed.jsonl, before the manifest recorded it (and the stage)."""
    m = read_json(d / "manifest.json")
    del m["files"]["seed.jsonl"]
    m["stages"]["seed"]["finished"] = False
    (d / "manifest.json").write_text(json.dumps(m))


HARMLESS = {
    # kind: (damage, check after the run)
    "leftover-temp-file": (_write(".seed.jsonl.ab12cd_9.tmp", b'{"text": "half a li'),
                           lambda d, err: not (d / ".seed.jsonl.ab12cd_9.tmp").exists()
                           and any("removed 1 temp file" in ln for ln in err)),
    "stale-wal-and-shm": (lambda d: ((d / "llm_cache.sqlite-wal").write_bytes(os.urandom(4096)),
                                     (d / "llm_cache.sqlite-shm").write_bytes(os.urandom(32768))),
                          lambda d, err: err == []),
    "stale-lock-of-a-dead-process": (_write(".lock", b"999999999\n"), lambda d, err: err == []),
    "older-manifest": (_older_manifest,
                       lambda d, err: err == [] and read_json(d / "manifest.json")["from_the_future"] == {"kept": True}
                       and read_json(d / "manifest.json")["format"] == 1),
    "killed-before-the-manifest": (_killed_before_manifest, lambda d, err: err == []),
    "killed-after-a-write": (_killed_after_a_write, lambda d, err: err == []),    # same bytes: nothing to keep
}


@pytest.mark.parametrize("kind", sorted(HARMLESS))
def test_harmless_leftovers_finish_without_new_llm_calls(base, tmp_path, kind):
    damage, check = HARMLESS[kind]
    gold, d = damaged_copy(base, tmp_path, damage)
    base_dir = base[1]
    code, err, calls = invoke(run_args(gold, d))
    assert code == 0 and calls == 0, err
    assert check(d, err), err
    assert (d / "final/train.jsonl").read_bytes() == (base_dir / "final/train.jsonl").read_bytes()
    assert {k: v for k, v in files_of(d).items() if k in USER_FILES} == USER_FILES


def test_folder_with_other_files_is_used_and_they_are_left_alone(base, tmp_path):
    gold, _ = base
    out = tmp_path / "runs"
    out.mkdir()
    (out / "notes.txt").write_bytes(b"mine\n")
    (out / ".gitignore").write_bytes(b"*\n")
    code, err, calls = invoke(run_args(gold, out))
    assert code == 0 and calls > 0, err
    assert err == [f"s3synth: note: {out} already holds 2 other file(s); s3synth adds its own beside them and "
                   "leaves those as they are"]
    assert (out / "notes.txt").read_bytes() == b"mine\n" and (out / ".gitignore").read_bytes() == b"*\n"


def test_a_file_the_user_put_under_our_name_is_kept(base, tmp_path):
    """More rounds than before: the final stage is redone and round 2 written. A file with one of the names
    s3synth writes is moved aside first when s3synth did not write it, or it changed since."""
    gold, base_dir = base
    d = copy_run(base_dir, tmp_path / "run")
    (d / "round-2").mkdir()
    (d / "round-2/errors.jsonl").write_bytes(b'{"text": "my own errors"}\n')
    (d / "final/train.jsonl").write_bytes(b'{"text": "my own edit"}\n')
    code, err, _ = invoke([a if a != "1" else "2" for a in run_args(gold, d)])     # --rounds 2
    assert code == 0, err
    for rel, why, data in (
            ("round-2/errors.jsonl", "is not a file s3synth recorded writing", b'{"text": "my own errors"}\n'),
            ("final/train.jsonl", "was changed since s3synth wrote it", b'{"text": "my own edit"}\n')):
        said = [ln for ln in err if f"{d / rel} {why}; kept it as" in ln]
        assert len(said) == 1, err
        name = said[0].split("kept it as ")[1].split()[0]
        assert (d / rel).with_name(name).read_bytes() == data
    assert read_json(d / "round-2/metrics.json")["round"] == 2


# ------------------------------------------------------------------ report and export of damaged directories

REPORT_CASES = {
    "report-round-metrics-cut": ("report", _cut("round-1/metrics.json", 30), "round-1/metrics.json"),
    "report-manifest-not-an-object": ("report", _write("manifest.json", b"[]"), "manifest.json"),
    "report-config-invalid": ("report", _write("config.toml", b"task = [oops\n"), "config.toml"),
    "report-seed-edited": ("report", _write("seed.jsonl", b'{"text": "x"}\n'), "seed.jsonl"),
    "export-train-cut": ("export", _cut("final/train.jsonl", 100), "final/train.jsonl"),
    "export-final-metrics-folder": ("export", _metrics_folder, "final/metrics.json"),
    "export-manifest-empty": ("export", _write("manifest.json", b""), "manifest.json"),
}


@pytest.mark.parametrize("kind", sorted(REPORT_CASES))
def test_report_and_export_of_a_damaged_run_are_one_line(base, tmp_path, kind):
    _, base_dir = base
    d = copy_run(base_dir, tmp_path / "run")
    cmd, damage, rel = REPORT_CASES[kind]
    damage(d)
    before = files_of(d)
    code, err, _ = invoke([cmd, d])
    one_line_error(code, err, str(d / rel), "re-run the `s3synth run` command" if rel != "config.toml"
                   else "undo the edit")
    assert files_of(d) == before


@pytest.mark.parametrize("cmd", ["report", "export"])
def test_report_and_export_of_a_file(tmp_path, cmd):
    f = tmp_path / "data.txt"
    f.write_text("x")
    code, err, _ = invoke([cmd, f])
    one_line_error(code, err, str(f), "not an s3synth run directory", "give the --out of `s3synth run`")


# ------------------------------------------------------------------ file modes

def test_run_files_get_the_umask_mode(base):
    """Everything the run wrote (cache, lock, outputs, the model) is 0o666 & ~umask, none 0o600."""
    _, base_dir = base
    modes = {p.relative_to(base_dir).as_posix(): p.stat().st_mode & 0o777
             for p in base_dir.rglob("*") if p.is_file() and not p.is_symlink()}
    assert "llm_cache.sqlite" in modes and "final/metrics.json" in modes and ".lock" in modes
    assert any(k.startswith("final/model/") for k in modes)
    assert {k: m for k, m in modes.items() if m != 0o666 & ~UMASK} == {}


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def saved_modes(learner, where, umask: int) -> dict:
    """File name -> permission bits of what `learner.save(where)` writes under `umask`."""
    old = os.umask(umask)
    try:
        learner.save(where)
    finally:
        os.umask(old)
    return {p.name: p.stat().st_mode & 0o777 for p in where.iterdir()}


def test_fast_learner_weights_follow_the_umask(tmp_path):
    """safetensors writes 0o600 through its temp file; the saved classifier is 0o666 & ~umask."""
    import numpy as np

    from s3synth.learners.fast import FastLearner
    from s3synth.tasks import load_task

    task = load_task("rte")
    lrn = FastLearner(task)
    lrn.classes, lrn.coef, lrn.intercept, lrn.C = task.label_names, np.zeros((1, 4)), np.zeros(1), 1.0
    modes = saved_modes(lrn, tmp_path / "model", 0o002)
    assert modes == {"classifier.safetensors": 0o664, "s3synth_learner.json": 0o664}


@pytest.mark.slow
def test_hf_learner_weights_follow_the_umask(tmp_path):
    """save_pretrained writes model.safetensors 0o600; the saved folder is 0o666 & ~umask throughout."""
    from s3synth.learners.hf import MiniLMLearner
    from s3synth.tasks import load_task

    lrn = MiniLMLearner(load_task("rte"))
    lrn.model = lrn._load_model(lrn.model_path)
    modes = saved_modes(lrn, tmp_path / "model", 0o027)
    assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes


# ------------------------------------------------------------------ SIGTERM


def test_sigterm_says_so_in_one_line_and_the_run_resumes(base, tmp_path):
    """A real `s3synth run` (talking to a local OpenAI-compatible server) gets SIGTERM mid-seed, 6 answers
    saved and 2 requests held in flight at the server: a line says it waits for them, they are answered and
    saved, a line says it stopped, exit 143; the same command then finishes without sending an answered
    prompt again."""
    gold, _ = base
    out = tmp_path / "run"
    main = "import s3synth.cli as c; c._write_report = lambda *a, **k: None; c.main()"
    env = plugin_env(OPENAI_BASE_URL="", OPENAI_API_KEY="sk-test")
    with OpenAIStub() as stub:
        cmd = [sys.executable, "-c", main, "run", "--task", "rte", "--gold-eval", str(gold), "--llm", "openai:stub",
               "--learner", "fake", "--seed-size", "12", "--rounds", "1", "--concurrency", "2", "--out", str(out),
               "-q", "--base-url", stub.url]
        stub.hold_after = 6
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and not (stub.count >= 8 and cache_rows(out / "llm_cache.sqlite") >= 6):
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        first = p.stderr.readline()     # it waits for the 2 in flight (--concurrency 2): let them be answered
        stub.hold_after = None
        stub.release.set()
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            pytest.fail(f"no exit within 60 s of SIGTERM; stderr: {p.communicate()[1]}")
        assert p.returncode == 143, err
        assert (first + err).strip().splitlines() == [
            "s3synth: terminated (SIGTERM): sending no new LLM requests, waiting up to 30 s for those in flight so "
            "that their answers are saved (send SIGTERM again or press Ctrl-C to stop at once)",
            "s3synth: terminated (SIGTERM); everything so far is saved: run the same command again to resume"]
        answered = {json.dumps([b["messages"], b["seed"]]) for b in stub.answered}
        assert len(answered) == 8 == cache_rows(out / "llm_cache.sqlite")
        assert read_json(out / "manifest.json")["invocations"][-1]["interrupted"] is True
        n = stub.count
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        sent = [json.dumps([b["messages"], b["seed"]]) for b in stub.bodies[n:]]
        assert sent and answered.isdisjoint(sent)
    assert read_json(out / "final/metrics.json")["train_size"] > 0
