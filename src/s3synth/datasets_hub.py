"""Data given other than as a file: a Hugging Face Hub dataset by name, or rows from Python.

- `hf:NAME[:CONFIG][:SPLIT]` (e.g. `hf:nyu-mll/glue:qnli:validation`, `hf:stanfordnlp/imdb::test`) is read
  through the `datasets` library (`load_dataset_builder`, then `download_and_prepare` and `as_dataset` of the
  split) into the usual caches: the Hub's files under HF_HUB_CACHE, the prepared Arrow files under
  HF_DATASETS_CACHE (default: both in ~/.cache/huggingface). The commit sha it resolved to (at `--data-revision`,
  default the main branch), the config, the split and the row count are what a run records (`record`).
  Offline (`--offline` or HF_HUB_OFFLINE=1) only the cache is read. A missing dataset, revision, config or
  split is an S3Error naming it (and, where the library says, what there is). A name is read once per process.
- Rows from Python: a `datasets.Dataset`, a pandas `DataFrame` or a list of dicts (`PythonRows`). RunConfig
  keeps them as given; config.toml records them as "<Dataset: 40 rows, sha256 1f2e3d4c5b6a>", from which no
  run can be rebuilt (`refuse_placeholder`).
- `ClassLabel` columns (of a Hub dataset or a `Dataset`) map to the task's labels by name first: when every
  class name is a label of the task (its name or label word), each id becomes that label's name; else by id:
  an id the task has stays the id (read as the task's label id), one it has not becomes its class name, so
  that the error names it. An id of -1 (no label, as in GLUE's test splits) is a missing label.

Either kind of rows becomes Examples in data.py as a file's rows do (`examples_from_rows`: --columns and the
validation apply alike); a row is counted from 1, as a JSON Lines file's lines are (ids `gold-1`, ...).

Not handled: streaming (a split is prepared whole, with the other splits of its config, as
`datasets.load_dataset` does); datasets with a loading script (the `datasets` library runs none).
"""

from __future__ import annotations

import errno
import math
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DataError, S3Error
from .io import json_sha256

if TYPE_CHECKING:
    from .tasks import Task

PREFIX = "hf:"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
PLACEHOLDER = re.compile(r"^<(Dataset|DataFrame|list): \d+ rows?, sha256 [0-9a-f]+>$")
"""How config.toml records rows given from Python: "<DataFrame: 40 rows, sha256 1f2e3d4c5b6a>"."""

FORM = "hf:NAME[:CONFIG][:SPLIT], e.g. hf:nyu-mll/glue:qnli:validation or hf:stanfordnlp/imdb::test"


# ---------------------------------------------------------------- what a source is

def is_hub(source: Any) -> bool:
    """A Hub dataset name: text starting with "hf:" that is not an existing file.

    Example: is_hub("hf:stanfordnlp/imdb::test") -> True; is_hub("gold.jsonl") -> False"""
    return (isinstance(source, (str, os.PathLike)) and str(source).startswith(PREFIX)
            and not Path(source).exists())


def is_other(source: Any) -> bool:
    """Not a data file: a Hub dataset name or rows given from Python (what `read_rows` takes)."""
    return is_hub(source) or isinstance(source, PythonRows) or python_rows(source) is not None


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """(NAME, CONFIG or None, SPLIT or None) of "hf:NAME[:CONFIG][:SPLIT]"; an S3Error naming the form.

    Examples: parse_spec("hf:nyu-mll/glue:qnli:validation") -> ("nyu-mll/glue", "qnli", "validation");
              parse_spec("hf:stanfordnlp/imdb::test") -> ("stanfordnlp/imdb", None, "test")"""
    parts = [p.strip() for p in spec[len(PREFIX):].split(":")]
    if len(parts) > 3 or not _REPO_ID.match(parts[0]):
        raise S3Error(f"{spec!r} is not a Hub dataset name; write {FORM}")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


# ---------------------------------------------------------------- rows from Python

class PythonRows:
    """Rows given from Python: a `datasets.Dataset`, a pandas `DataFrame` or a list of dicts, kept as given.
    Its text (str) is how config.toml and messages name it: "<Dataset: 40 rows, sha256 1f2e3d4c5b6a>"."""

    def __init__(self, obj: Any, kind: str):
        self.obj, self.kind = obj, kind
        self._rows: list[dict] | None = None
        self._sha: str | None = None

    def __len__(self) -> int:
        return len(self.obj)

    def __bool__(self) -> bool:
        return True          # given, even when empty (the run then says it holds no examples)

    def __deepcopy__(self, memo) -> "PythonRows":
        return self          # never changed: RunConfig.to_dict (dataclasses.asdict) need not copy the data

    def rows(self) -> list[dict]:
        """The rows as dicts of plain values (a DataFrame's missing values as None)."""
        if self._rows is None:
            if self.kind == "Dataset":
                self._rows = self.obj.to_list()
            elif self.kind == "DataFrame":
                self._rows = [{str(k): _plain(v) for k, v in row.items()} for row in self.obj.to_dict("records")]
            else:
                self._rows = list(self.obj)
        return self._rows

    @property
    def sha256(self) -> str:
        """The sha256 of the rows as JSON (io.json_sha256: what data.content_sha256 gives for rows)."""
        if self._sha is None:
            self._sha = json_sha256(self.rows())
        return self._sha

    @property
    def where(self) -> str:
        """Its name in errors: "<DataFrame: 40 rows>" (the row comes after it, as a file's line does)."""
        return f"<{self.kind}: {len(self)} row{'s' if len(self) != 1 else ''}>"

    def __str__(self) -> str:
        return f"{self.where[:-1]}, sha256 {self.sha256[:12]}>"

    __repr__ = __str__


def _plain(v: Any) -> Any:
    """A pandas cell as a plain value: NaN/NaT/None -> None, numpy scalars -> Python ones."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    item = getattr(v, "item", None)
    if callable(item) and type(v).__module__ == "numpy":
        v = item()
        return None if isinstance(v, float) and math.isnan(v) else v
    try:
        import pandas

        if v is pandas.NaT or v is pandas.NA:
            return None
    except ImportError:  # pragma: no cover - a DataFrame came from pandas
        pass
    return v


def python_rows(value: Any) -> PythonRows | None:
    """`value` as PythonRows when it is a `datasets.Dataset`, a pandas `DataFrame` or a list (or tuple) of dicts;
    None for anything else (a path, a Hub name). A list holding something other than dicts is an S3Error."""
    if isinstance(value, PythonRows):
        return value
    cls = type(value)
    if cls.__name__ == "Dataset" and cls.__module__.split(".")[0] == "datasets":
        return PythonRows(value, "Dataset")
    if cls.__name__ == "DataFrame" and cls.__module__.split(".")[0] == "pandas":
        return PythonRows(value, "DataFrame")
    if isinstance(value, (list, tuple)):
        for i, row in enumerate(value, start=1):
            if not isinstance(row, dict):
                raise S3Error(f"rows given as a list: row {i} is a {type(row).__name__}, not a dict; give a list of "
                              "dicts (one per example), a datasets.Dataset or a pandas DataFrame")
        return PythonRows(value, "list")
    return None


def refuse_placeholder(option: str, value: Any) -> None:
    """An S3Error when `value` is config.toml's record of rows given from Python, which cannot be read again."""
    if isinstance(value, str) and PLACEHOLDER.match(value.strip()):
        raise S3Error(f"{option} {value!r}: rows given from Python are not kept in config.toml, so this run cannot "
                      "be rebuilt from it; give the same rows again (RunConfig.from_dict({**config, "
                      f"{option.lstrip('-').replace('-', '_')!r}: rows}})), or a data file or hf: name")


# ---------------------------------------------------------------- class labels

def _class_label_map(names: list[str], task: "Task | None"):
    """id -> the value a row holds for a ClassLabel with class `names` (see the module's docstring)."""
    labels = list(getattr(task, "labels", None) or [])
    by_name = {}
    for lab in labels:
        by_name[lab.name.lower()] = lab.name
        by_name[lab.word.lower()] = lab.name
    ids = {lab.id for lab in labels}
    named = bool(labels) and all(str(n).strip().lower() in by_name for n in names)

    def value(i):
        if i is None or i < 0:
            return None
        if named:
            return by_name[str(names[i]).strip().lower()]
        return i if (i in ids or not labels or i >= len(names)) else names[i]
    return value


def labelled_rows(rows: list[dict], features, task: "Task | None") -> list[dict]:
    """`rows` with the ids of their ClassLabel columns (`features`, a datasets.Features) mapped for `task`."""
    maps = {col: _class_label_map(list(feat.names), task) for col, feat in (features or {}).items()
            if type(feat).__name__ == "ClassLabel"}
    if not maps:
        return rows
    return [{k: (maps[k](v) if k in maps else v) for k, v in row.items()} for row in rows]


# ---------------------------------------------------------------- Hub datasets

@dataclass
class HubData:
    """One split of a Hub dataset as loaded: the `spec` as given, the config and split it resolved to, the
    revision asked for (None: the main branch), the commit `sha` it came from, and the `datasets.Dataset`."""

    spec: str
    name: str
    config: str | None
    split: str
    revision: str | None
    sha: str | None
    dataset: Any

    def record(self) -> dict:
        """What manifest.json's `inputs` holds of it.

        Example: {"path": "hf:nyu-mll/glue:qnli:validation", "source": "hub", "dataset": "nyu-mll/glue",
                  "config": "qnli", "split": "validation", "revision": "main", "sha": "bcdcba79...", "rows": 5463}"""
        return {"path": self.spec, "source": "hub", "dataset": self.name, "config": self.config, "split": self.split,
                "revision": self.revision or "main", "sha": self.sha, "rows": len(self.dataset)}


_loaded: dict[tuple, HubData] = {}
_lock = threading.Lock()


def forget() -> None:
    """Drop the datasets read by this process (tests; a long-lived process that wants new commits)."""
    with _lock:
        _loaded.clear()


def load_hub(spec: str, *, revision: str | None = None) -> HubData:
    """The split `spec` names (`hf:NAME[:CONFIG][:SPLIT]`), from the Hub or (offline) the local cache."""
    from .hub import offline

    spec = str(spec)
    name, config, split = parse_spec(spec)
    key = (name, config, split, revision or None)
    with _lock:
        if key not in _loaded:
            _loaded[key] = _load(spec, name, config, split, revision or None, offline())
        return _loaded[key]


@contextmanager
def _library_mode(datasets, local_only: bool):
    """`datasets` and `huggingface_hub` offline within the block when `local_only` (they read HF_HUB_OFFLINE
    once, at import), and quiet (no bars under -q, no warnings); restored afterwards."""
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hub_logging

    from .progress import is_quiet

    was = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE, datasets.logging.get_verbosity(),
           hub_logging.get_verbosity())
    bars_off = is_quiet() and datasets.is_progress_bar_enabled()
    if local_only:
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    datasets.logging.set_verbosity_error()
    hub_logging.set_verbosity_error()     # its retries' warnings ("... thrown while requesting HEAD ...")
    if bars_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = was[0], was[1]
        datasets.logging.set_verbosity(was[2])
        hub_logging.set_verbosity(was[3])
        if bars_off:
            datasets.enable_progress_bars()


def _load(spec: str, name: str, config: str | None, split: str | None, revision: str | None,
          local_only: bool) -> HubData:
    try:
        import datasets
    except ImportError:  # pragma: no cover - depends on the install
        raise S3Error(f"{spec}: a Hub dataset is read with the datasets package: pip install 's3synth[export]' "
                      "(or give a data file)") from None
    at = f" at revision {revision!r}" if revision else ""
    offline_why = "offline mode is on (--offline or HF_HUB_OFFLINE=1)"
    way_out = ("run once where huggingface.co can be reached" + (" without --offline / HF_HUB_OFFLINE=1" if local_only
                                                                  else "") + " (it is kept in the Hugging Face "
               "cache), or give a data file")
    if not local_only and (why := _unreachable(datasets.config.HF_ENDPOINT)):
        # the datasets library would retry a dead endpoint for about 25 s before it reads the cache: read it now
        local_only, offline_why = True, f"the Hub cannot be reached ({why})"
    with _library_mode(datasets, local_only):
        try:
            builder = datasets.load_dataset_builder(name, config, revision=revision)
        except Exception as e:
            raise _builder_error(e, spec, name, config, revision, local_only, offline_why, way_out) from None
        # the commit read: resolved on the Hub, or (offline) the one the cached copy was prepared from
        sha = builder.hash if isinstance(builder.hash, str) and _SHA.match(builder.hash) else None
        if local_only and revision:
            _check_cached_revision(spec, name, revision, sha, way_out)
        files = getattr(builder.config, "data_files", None) or {}
        splits = [str(s) for s in (list(files) or list(builder.info.splits or {}))]
        config = builder.config.name
        if split is None:
            if len(splits) != 1:
                raise S3Error(f"{spec}: dataset {name} (config {config}) has the splits {', '.join(splits) or '?'}; "
                              f"name one, e.g. {PREFIX}{name}:{config}:{splits[0] if splits else 'test'}")
            split = splits[0]
        elif splits and split not in splits:
            raise S3Error(f"{spec}: dataset {name} (config {config}){at} has no split {split!r}; its splits: "
                          f"{', '.join(splits)}")
        try:
            builder.download_and_prepare()
            ds = builder.as_dataset(split=split)
        except Exception as e:
            raise _download_error(e, spec, split, local_only, offline_why, way_out) from None
    from .progress import info

    out = HubData(spec=spec, name=name, config=config, split=split, revision=revision, sha=sha,
                  dataset=ds)
    info(f"dataset {out.spec}{at}: {len(ds)} row{'s' if len(ds) != 1 else ''}, commit {(sha or '?')[:12]}"
         + (" (from the local cache)" if local_only else ""))
    return out


PROBE_S = 5.0       # how long the Hub's endpoint may take to answer before it counts as unreachable


def _unreachable(endpoint: str) -> str | None:
    """Why the Hub at `endpoint` cannot be reached (one HEAD request through huggingface_hub's own client, so
    proxies and its client hook apply; no retries), or None when it answers at all.

    Example: _unreachable("http://127.0.0.1:9") -> "ConnectError" (nothing listens on port 9)"""
    from huggingface_hub import get_session

    try:
        get_session().head(endpoint, timeout=PROBE_S)
    except Exception as e:
        if not (isinstance(e, OSError) or type(e).__module__.startswith(("httpx", "httpcore"))):
            raise
        return type(e).__name__
    return None


def _builder_error(e: Exception, spec, name, config, revision, local_only, offline_why, way_out) -> S3Error:
    """A one-line S3Error for what `load_dataset_builder` raised."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = str(e)
    cause = e.__cause__
    if type(cause).__name__ == "RevisionNotFoundError" or text.startswith("Revision "):
        return S3Error(f"{spec}: no revision {revision!r} of dataset {name} on the Hub; give a branch, tag or "
                       "commit sha of that repository (--data-revision)")
    if type(e).__name__ == "DatasetNotFoundError":
        if "gated" in text:
            return S3Error(f"{spec}: dataset {name} is gated on the Hub: accept its terms on huggingface.co and set "
                           "HF_TOKEN (or run `hf auth login`), or give a data file")
        return S3Error(f"{spec}: no dataset {name!r} on the Hugging Face Hub (or it is private: set HF_TOKEN); "
                       "check the name")
    if "BuilderConfig" in text and "not found" in text:
        have = re.search(r"Available: (\[.*\])", text)
        return S3Error(f"{spec}: dataset {name} has no config {config!r}"
                       + (f"; its configs: {_listed(have.group(1))}" if have else ""))
    if "Config name is missing" in text:
        have = re.search(r"(\[.*\])", text)
        configs = _listed(have.group(1)) if have else "?"
        first = configs.split(", ")[0]
        return S3Error(f"{spec}: dataset {name} has several configs ({configs}); name one, e.g. "
                       f"{PREFIX}{name}:{first}:SPLIT")
    if "Couldn't find cache" in text or "not cached" in text or "Couldn't reach" in text:
        where = f"{name}" + (f" (config {config})" if config else "")
        why = offline_why if local_only else "the Hub cannot be reached"
        return S3Error(f"{spec}: dataset {where} is not in the local Hugging Face cache and {why}: {way_out}")
    return _cache_error(e, spec) or S3Error(f"{spec}: the datasets library could not read it "
                                            f"({type(e).__name__}: {msg})")


def _download_error(e: Exception, spec, split, local_only, offline_why, way_out) -> S3Error:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if local_only or "offline" in str(e).lower() or type(e).__name__ in ("ConnectionError", "ConnectError"):
        why = offline_why if local_only else "the Hub cannot be reached"
        return S3Error(f"{spec}: split {split!r} is not in the local Hugging Face cache and {why}: {way_out}")
    return _cache_error(e, spec) or S3Error(f"{spec}: the download or preparation of split {split!r} failed "
                                            f"({type(e).__name__}: {text}); run the same command again to go on")


def _cache_error(e: Exception, spec: str) -> S3Error | None:
    """The one line for a cache that cannot be written (no permission, read-only, full); None for the rest."""
    full = (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(e, OSError) or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, *full):
        return None
    way = ("free some space, then run the same command again" if e.errno in full else
           "set HF_HOME (or HF_HUB_CACHE and HF_DATASETS_CACHE) to a writable folder")
    return S3Error(f"{spec}: cannot write to the Hugging Face cache ({e.strerror or e}); {way}")


def _listed(text: str) -> str:
    """"['qnli', 'rte']" -> "qnli, rte" (a list as the datasets library prints it)."""
    return ", ".join(re.findall(r"'([^']*)'", text)) or text


def _check_cached_revision(spec: str, name: str, revision: str, cached: str | None, way_out: str) -> None:
    """Offline with --data-revision: the cache holds what it names (a commit sha, or a branch or tag whose
    commit the Hub cache's refs/ recorded when it was downloaded)."""
    want = revision if _SHA.match(revision) else _cached_ref(name, revision)
    if want is None or (cached is not None and want != cached):
        raise S3Error(f"{spec}: revision {revision!r} of dataset {name} is not in the local Hugging Face cache"
                      + (f" (it holds commit {cached[:12]})" if cached else "")
                      + f" and offline mode is on (--offline or HF_HUB_OFFLINE=1): {way_out}")


def _cached_ref(name: str, ref: str) -> str | None:
    """The commit that branch or tag `ref` of dataset `name` pointed at when it was downloaded (the Hub cache's
    datasets--NS--NAME/refs/REF), or None."""
    from huggingface_hub import constants

    p = Path(constants.HF_HUB_CACHE) / ("datasets--" + name.replace("/", "--")) / "refs" / ref
    try:
        sha = p.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return sha if _SHA.match(sha) else None


# ---------------------------------------------------------------- for data.py and the run

def read_rows(source: Any, task: "Task | None" = None, *, revision: str | None = None
              ) -> tuple[str, list[tuple[int, dict]]]:
    """(where, (row number, row) pairs) of a Hub dataset name or rows from Python, ClassLabel ids mapped for
    `task`; `where` names the source in errors ("hf:nyu-mll/glue:qnli:validation", "<DataFrame: 40 rows>")."""
    if is_hub(source):
        data = load_hub(source, revision=revision)
        rows = labelled_rows(data.dataset.to_list(), data.dataset.features, task)
        return data.spec, list(enumerate(rows, start=1))
    rows_obj = python_rows(source)
    if rows_obj is None:
        raise DataError(str(source), "not a data file, Hub dataset name or rows")
    features = getattr(rows_obj.obj, "features", None) if rows_obj.kind == "Dataset" else None
    return rows_obj.where, list(enumerate(labelled_rows(rows_obj.rows(), features, task), start=1))


def check_revision(revision: str | None, sources: dict[str, Any]) -> None:
    """--data-revision applies to hf: inputs only: an S3Error naming the data options (`sources`: option ->
    what it was given) when none of them is a Hub dataset.

    Example: check_revision("v1", {"--train": "a.csv", "--test": None}) -> S3Error("--data-revision 'v1': applies
             to Hub datasets only (--train or --test hf:NAME...); drop it, or name a Hub dataset")"""
    if revision and not any(is_hub(v) for v in sources.values()):
        names = list(sources)
        options = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]
        raise S3Error(f"--data-revision {revision!r}: applies to Hub datasets only ({options} hf:NAME...); drop "
                      "it, or name a Hub dataset")


def record(source: Any, *, revision: str | None = None) -> dict:
    """What manifest.json's `inputs` holds of a Hub dataset (see HubData.record) or of rows from Python:
    {"path": "<DataFrame: 40 rows, sha256 1f2e3d4c5b6a>", "source": "python", "rows": 40, "sha256": ...}."""
    if is_hub(source):
        return load_hub(source, revision=revision).record()
    rows_obj = python_rows(source)
    return {"path": str(rows_obj), "source": "python", "rows": len(rows_obj), "sha256": rows_obj.sha256}
