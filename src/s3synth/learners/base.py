"""The learner seam: a small model trained from scratch on synthetic data, selected on gold eval.

`Learner(task, config, model_path=None)` -> `fit(train, eval)` -> `predict(examples)` -> `save(dir)`.
Backends register under the entry-point group `s3synth.learners`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from ..data import Example, Prediction, subsample  # noqa: F401 (Prediction: re-exported)
from ..errors import S3Error
from ..metrics import evaluate, selection_metric
from ..tasks import Task


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Hyper-parameters of a learner. Every field is checked on construction; a bad value is an error
    that shows it. Defaults suit MiniLM-L6 on a CPU; `PRESETS` holds the paper's per-task values."""

    epochs: int = 6                 # passes over the training set; the best epoch is kept
    lr: float = 5e-5                # peak learning rate (AdamW), linear warm-up then linear decay
    batch_size: int = 8             # small synthetic sets need enough optimizer steps
    eval_batch_size: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1       # share of the steps spent warming up
    grad_clip: float = 1.0          # max gradient norm
    patience: int = 3               # stop after this many epochs without a better selection metric
    max_length: int | None = None   # tokens per input; None = the task's default
    doc_stride: int = 128           # QA: overlap between windows of a long context
    max_answer_tokens: int = 30     # QA: longest answer span considered
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda
    precision: str = "auto"         # auto: bf16 autocast where the device does bf16 natively (a GPU, or a CPU
                                    # with AVX512-BF16/AMX), else fp32 | bf16 | fp32 (weights, optimizer: fp32)
    compile: bool = False           # torch.compile the training forward pass (GPU only; slow first steps)
    max_train_examples: int | None = None  # cap on training examples (None = all)
    workers: int = 1                # processes training data-parallel (batch_size stays the global batch); >1:
                                    # the learner starts them itself, see learners/distributed.py
    launcher: str = "auto"          # for workers > 1: auto (Ray Train when Ray runs in this process, else spawn)
                                    # | spawn (torch.multiprocessing, this machine) | ray (Ray Train TorchTrainer)
    revision: str | None = None     # Hub revision (branch, tag or commit sha) of an encoder named by its Hub name
                                    # (--revision); the commit it resolves to is recorded in manifest.json

    def __post_init__(self):
        def bad(name, why):
            raise S3Error(f"learner setting {name}={getattr(self, name)!r}: {why}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "must be a whole number >= 1")
        if not (0 < self.lr < 1):
            bad("lr", "must be between 0 and 1 (typical: 1e-5 to 1e-4)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if not (0 <= self.warmup_ratio < 1):
            bad("warmup_ratio", "must be in [0, 1)")
        if self.grad_clip <= 0:
            bad("grad_clip", "must be > 0")
        if self.patience < 1:
            bad("patience", "must be >= 1")
        if self.max_length is not None and not (16 <= self.max_length <= 4096):
            bad("max_length", "must be between 16 and 4096")
        if self.doc_stride < 1:   # the QA learner caps the overlap at half of each window's context room
            bad("doc_stride", "must be >= 1")
        if self.max_answer_tokens < 1:
            bad("max_answer_tokens", "must be >= 1")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            bad("max_train_examples", "must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "must be auto, cpu or cuda")
        if self.precision not in PRECISIONS:
            bad("precision", f"must be one of {', '.join(PRECISIONS)}")
        from .distributed import check_options
        check_options(self.workers, self.launcher)
        if self.revision is not None and not str(self.revision).strip():
            bad("revision", "must name a branch, tag or commit sha (or be left out)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise S3Error(f"unknown learner setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# The paper's released training values (digest section 3.2), for DistilBERT.
PRESETS = {
    "paper-imdb": dict(max_length=512, batch_size=8, lr=5e-6, weight_decay=2e-8, epochs=6, patience=10),
    "paper-qnli": dict(max_length=512, batch_size=32, lr=5e-6, weight_decay=2e-8, epochs=10, patience=20),
    "paper-rte": dict(max_length=512, batch_size=16, lr=1e-5, weight_decay=1e-2, epochs=20, patience=60),
    "paper-adversarial_qa": dict(max_length=512, doc_stride=170, batch_size=8, lr=1e-5, weight_decay=1e-2,
                                 epochs=10, patience=20),
}


class Learner(ABC):
    """Base class: subclasses implement `fit`, `predict` and `save`; `Options` declares their settings."""

    name = "base"
    Options = TrainConfig

    def __init__(self, task: Task, config=None, *, model_path: str | None = None):
        self.task = task
        self.config = config if config is not None else self.Options()
        self.model_path = model_path

    @classmethod
    def resolve_model_path(cls, path: str | None) -> str | None:
        """The weights this learner starts from: `path` as given, a folder or a Hub name (a learner with
        defaults overrides this). Downloading, if any, happens when the learner is built."""
        return path

    @property
    def model_source(self):
        """The `s3synth.hub.ModelSource` of the pretrained weights (folder, or Hub name and commit sha), or
        None for a learner without any; the run records it in manifest.json."""
        return None

    @abstractmethod
    def fit(self, train: Sequence[Example], eval: Sequence[Example] | None = None) -> dict:
        """Train a fresh model; choose the best epoch on `eval` by the class-balanced selection metric.
        Returns a history: {"epochs": [{"epoch", "train_loss", <eval metrics>}...], "best_epoch": int}.
        A learner that can weigh examples takes `weights=` (one loss weight per training example; the
        built-ins do): `--clean-labels weight` and `--gold-weight` need it."""

    @abstractmethod
    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        ...

    @abstractmethod
    def save(self, directory: str | Path) -> None:
        """Write the model (safetensors only), its config and tokenizer to `directory`."""

    def check(self) -> None:
        """Raise S3Error now if this learner cannot run (missing weights or packages); cheap, loads nothing big."""

    def evaluate(self, examples: Sequence[Example]) -> dict:
        return evaluate(self.task, examples, self.predict(examples))

    @property
    def selection_metric(self) -> str:
        return selection_metric(self.task)


def subsample_weighted(train: list, weights, n: int | None, seed: int) -> tuple[list, list | None]:
    """`data.subsample` of a training set that keeps each example's loss weight beside it (weights None: None)."""
    if weights is None:
        return subsample(train, n, seed), None
    if len(weights) != len(train):
        raise S3Error(f"learner: {len(weights)} weights for {len(train)} training examples")
    if any(not (w >= 0) for w in weights):
        raise S3Error("learner: example weights must be >= 0")
    pairs = subsample(list(zip(train, weights)), n, seed)
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]
