"""Model weights by Hugging Face Hub name or local folder: one resolver for learners and LLM backends.

`resolve("microsoft/deberta-v3-small", revision="main")` returns the local folder of that model:
a folder given as such is used as it is; a Hub name is downloaded once into the normal Hugging Face
cache (`HF_HUB_CACHE`, default ~/.cache/huggingface/hub) with `huggingface_hub.snapshot_download`,
top-level safetensors weights, config and tokenizer files only (never pickled .bin weights), and
found there afterwards. The commit sha it resolved to is returned with it (the run records it in
manifest.json). Offline (`--offline`, or HF_HUB_OFFLINE=1 in the environment) only the cache is
read. A model that is neither a folder nor cached, and cannot be downloaded, is an S3Error naming
the model and the two ways out. A name is resolved once per process (and revision): every round
of a run trains from the same commit.

Not handled: repositories whose weights are in subfolders, or exist only as pickled .bin files;
custom model code (`trust_remote_code`); GGUF repositories (the `embedded` backend has its own).
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import S3Error

# What a model folder needs, and nothing more: weights as safetensors (one file or shards with their
# index), configs, and every tokenizer format (WordPiece vocab, BPE vocab + merges, SentencePiece
# models, tokenizer.json), plus chat templates for generators. Top level only (IGNORE_PATTERNS).
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                  "tokenizer*", "vocab*", "merges.txt", "*.model", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.jinja", "chat_template.json"]
IGNORE_PATTERNS = ["*/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = ("1", "on", "yes", "true")

_resolved: dict[tuple, ModelSource] = {}
_lock = threading.Lock()
_forced_offline = False


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: `path` (a local folder); for a Hub model also `repo_id`, the
    revision asked for (None: the default branch) and the commit `sha` it resolved to."""

    spec: str
    path: str
    repo_id: str | None = None
    revision: str | None = None
    sha: str | None = None

    @property
    def from_hub(self) -> bool:
        return self.repo_id is not None

    def to_dict(self) -> dict:
        """Example: {"name": "org/tiny", "source": "hub", "revision": "main", "sha": "7c1f...", "path": "..."}."""
        if not self.from_hub:
            return {"name": self.spec, "source": "folder", "path": self.path}
        return {"name": self.repo_id, "source": "hub", "revision": self.revision or "main", "sha": self.sha,
                "path": self.path}


def offline() -> bool:
    """True under `--offline` (see `offline_mode`) or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set true."""
    env = any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return _forced_offline or env


@contextmanager
def offline_mode(on: bool = True):
    """Within the block, Hub names are looked up in the local cache only (`--offline`); `on=False` leaves
    the mode as it is (the environment's HF_HUB_OFFLINE still counts)."""
    global _forced_offline
    was = _forced_offline
    _forced_offline = was or bool(on)
    try:
        yield
    finally:
        _forced_offline = was


def looks_like_folder(spec: str) -> bool:
    """A spec meant as a path, not a Hub name: it exists, or is absolute, starts with ~ or ., or has a
    form no Hub name has (more than one slash, a backslash).

    Example: looks_like_folder("./models/x") -> True; looks_like_folder("microsoft/deberta-v3-small") -> False
    """
    s = str(spec)
    return (os.path.exists(os.path.expanduser(s)) or s.startswith(("/", "~", ".")) or "\\" in s
            or not _REPO_ID.match(s))


def resolve(spec: str, *, revision: str | None = None, what: str = "model", folder_hint: str = "a local folder"
            ) -> ModelSource:
    """The local folder of `spec` (a folder, or a Hub name downloaded or found in the cache).

    `what` names the model in messages ("learner model", "generator"); `folder_hint` is the way out
    with a folder (e.g. "--learner hf:DIR"). Raises S3Error when it cannot be had."""
    spec = str(spec).strip()
    if not spec:
        raise S3Error(f"no {what} given; name a Hub model (e.g. distilbert-base-uncased) or give {folder_hint}")
    if looks_like_folder(spec):
        p = Path(spec).expanduser()
        if not p.is_dir():
            raise S3Error(f"{what} folder {spec!r} not found; give an existing folder ({folder_hint}) or a "
                          "Hugging Face Hub name such as org/model")
        if revision:
            raise S3Error(f"{what} {spec!r} is a local folder: a Hub revision ({revision!r}) does not apply to it; "
                          "drop the revision or name the model by its Hub name")
        return ModelSource(spec=spec, path=str(p))
    key = (spec, revision or None)
    with _lock:
        if key in _resolved:
            return _resolved[key]
        src = _download(spec, revision, what, folder_hint)
        _resolved[key] = src
        return src


def _download(repo_id: str, revision: str | None, what: str, folder_hint: str) -> ModelSource:
    try:
        import huggingface_hub as hh
        # submodules by explicit import: the package's lazy loader exposes `hh.constants` / `hh.utils` only once
        # something else has imported them (a plain `s3synth run --learner hf:NAME` had not)
        from huggingface_hub import constants as hconst
        from huggingface_hub import errors as herr
        from huggingface_hub import utils as hutils
    except ImportError:  # pragma: no cover - comes with transformers
        raise S3Error(f"{what} {repo_id!r} is a Hub name, which needs huggingface_hub: pip install "
                      f"'s3synth[learn]' (or give {folder_hint})") from None
    local_only = offline()
    at = f" at revision {revision!r}" if revision else ""
    ways = (f"give {folder_hint}, or run on a machine with access to huggingface.co"
            + (" without --offline / HF_HUB_OFFLINE=1" if local_only else "")
            + " (it is downloaded once into the Hugging Face cache)")
    cache = os.environ.get("HF_HUB_CACHE") or hconst.HF_HUB_CACHE
    from .progress import info, is_quiet

    bars_off = is_quiet() and not hutils.are_progress_bars_disabled()
    if bars_off:
        hutils.disable_progress_bars()
    try:
        path = hh.snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                    ignore_patterns=IGNORE_PATTERNS, local_files_only=local_only,
                                    cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                    endpoint=os.environ.get("HF_ENDPOINT") or None)
    except herr.RevisionNotFoundError:
        raise S3Error(f"{what} {repo_id!r}: no revision {revision!r} on the Hub; give a branch, tag or commit "
                      "sha of that repository") from None
    except herr.GatedRepoError:
        raise S3Error(f"{what} {repo_id!r} is gated on the Hub: accept its terms on huggingface.co and set "
                      f"HF_TOKEN (or run `hf auth login`), or give {folder_hint}") from None
    except herr.RepositoryNotFoundError:
        raise S3Error(f"{what} {repo_id!r}: no such model on the Hugging Face Hub (or it is private: set "
                      f"HF_TOKEN); check the name, or give {folder_hint}") from None
    except (herr.LocalEntryNotFoundError, herr.OfflineModeIsEnabled, herr.IncompleteSnapshotError) as e:
        if local_only:
            why = "offline mode is on (--offline or HF_HUB_OFFLINE=1)"
        else:
            cause = e.__cause__ or e.__context__
            why = "the Hub cannot be reached" + (f" ({type(cause).__name__})" if cause is not None else "")
        kind = "complete in" if isinstance(e, herr.IncompleteSnapshotError) else "in"
        raise S3Error(f"{what} {repo_id!r}{at} is not {kind} the local Hugging Face cache ({cache}) and {why}: "
                      f"{ways}") from None
    except herr.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise S3Error(f"{what} {repo_id!r}: the Hub answered HTTP {status} and nothing is cached; {ways}") from None
    except OSError as e:
        raise S3Error(f"{what} {repo_id!r}: cannot write to the Hugging Face cache {cache} ({e.strerror or e}); "
                      "set HF_HUB_CACHE to a writable folder") from None
    except Exception as e:
        if not type(e).__module__.startswith("httpx"):
            raise
        # the connection broke during the download (after the Hub answered): what is complete stays cached
        raise S3Error(f"{what} {repo_id!r}: the download from the Hub failed ({type(e).__name__}: {e}); run the same "
                      f"command again to go on, or {ways}") from None
    finally:
        if bars_off:
            hutils.enable_progress_bars()
    folder = Path(path)
    if not any(folder.glob("*.safetensors")):
        raise S3Error(f"{what} {repo_id!r}{at} has no .safetensors weights on the Hub (pickled .bin weights are "
                      f"not loaded); pick a revision with safetensors, or convert it and give {folder_hint}")
    if not (folder / "config.json").is_file():
        raise S3Error(f"{what} {repo_id!r}{at} has no config.json; is it a transformers model?")
    info(f"{what} {repo_id}{at}: commit {folder.name[:12]} in the Hugging Face cache {cache}")
    return ModelSource(spec=repo_id, path=str(folder), repo_id=repo_id, revision=revision, sha=folder.name)


def forget() -> None:
    """Drop the resolved names of this process (tests; a long-lived process that wants new commits)."""
    with _lock:
        _resolved.clear()
