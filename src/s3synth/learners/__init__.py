"""Learners by name: `minilm` (default), `distilbert`, `hf:NAME` / `hf:DIR`, `fast`, and any registered under the
entry-point group `s3synth.learners` (the built-ins are registered there too, like any plugin).

A learner class takes `(task, options, model_path=...)`; its `Options` dataclass (default: TrainConfig)
declares what `--learner-option KEY=VALUE` may set, and `resolve_model_path` finds its weights.
A Hugging Face Hub name is downloaded once into the Hugging Face cache (safetensors only; `s3synth.hub`),
at the learner option `revision` (`--revision`); offline, only the cache is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import S3Error
from ..plugins import load_plugin, option_names, parse_options, plugin_names
from .base import PRESETS, Learner, Prediction, TrainConfig  # noqa: F401
from .weights import distilbert_path, minilm_path  # noqa: F401

DEFAULT_LEARNER = "minilm"


def available_learners() -> list[str]:
    return plugin_names("learners")


def learner_class(kind: str) -> type[Learner]:
    return load_plugin("learners", kind, hint=" (hf takes a Hub name or a folder: hf:NAME, hf:DIR)")


def learner_options(cls: type[Learner], options, seed: int | None = None, where: str | None = None):
    """The learner's Options from a dict (strings from the command line are converted); `seed` fills
    the options' seed field when it has one and none is given."""
    if isinstance(options, cls.Options):
        return options
    opts = dict(options or {})
    if seed is not None and "seed" in option_names(cls.Options):
        opts.setdefault("seed", seed)
    return parse_options(cls.Options, opts, where or f"learner '{cls.name}'")


def make_learner(name: str, task, options=None, model_path: str | None = None, seed: int | None = None) -> Learner:
    """Example: make_learner("minilm", load_task("rte"), {"epochs": 2}) -> a MiniLM learner.
    `options`: a dict (or the class's Options); `name` may carry the weights: "hf:DIR" or "hf:org/model"."""
    kind, _, arg = (name or DEFAULT_LEARNER).partition(":")
    cls = learner_class(kind)
    config = learner_options(cls, options, seed, f"learner '{kind}'")
    return cls(task, config, model_path=cls.resolve_model_path(arg or model_path))


def load_learner(directory: str | Path, task) -> Learner:
    """A trained learner written by `Learner.save`, of the class recorded in its s3synth_learner.json."""
    meta_file = Path(directory) / "s3synth_learner.json"
    if not meta_file.exists():
        raise S3Error(f"{directory} is not a saved s3synth learner (no s3synth_learner.json)")
    kind = json.loads(meta_file.read_text(encoding="utf-8")).get("learner", "hf")
    cls = learner_class(kind)
    if not hasattr(cls, "load"):
        raise S3Error(f"learner '{kind}' cannot be reloaded (its class has no load method)")
    return cls.load(directory, task)
