"""A fast learner: frozen MiniLM sentence embeddings + scikit-learn logistic regression.

Embeddings follow sentence-transformers for all-MiniLM-L6-v2: mean pooling over the attention mask,
then L2 normalisation. Features: single task u; pair task [u, v, |u-v|, u*v] with u = text
(hypothesis / question) and v = context. C is chosen from `C_GRID` on `eval` by the selection metric
(class_weight="balanced"); each grid point is reported as one "epoch" of the history.

Not handled: QA (classification only - use the minilm learner); fine-tuning the encoder. The classifier
is saved as safetensors + JSON (no pickle); the encoder is not copied but named (`weights.encoder_record`:
a Hub name and commit, the packaged MiniLM, or the folder as given, with a content hash), never by a folder
of the saving machine; `load` finds it again on the loading machine and checks the hash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data import Example
from ..errors import S3Error
from ..progress import bar
from .base import Learner, Prediction, TrainConfig, subsample_weighted
from .hf import autocast, best_epoch, open_encoder, quiet_transformers, resolve_device
from .weights import encoder_record, locate_encoder

META_FILE = "s3synth_learner.json"
WEIGHTS_FILE = "classifier.safetensors"


def proba(X: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Class probabilities of a fitted logistic regression (sigmoid for one row of coef, else softmax)."""
    z = X @ coef.T + intercept
    if coef.shape[0] == 1:
        p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


_SHARED: dict[tuple, dict[str, np.ndarray]] = {}
SHARED_MAX = 200_000      # texts kept per encoder setting (~300 MB at 384 dimensions); then started afresh


def shared_cache(key: tuple) -> dict[str, np.ndarray]:
    """The process-wide text -> embedding cache of one encoder setting: a bench grid or a run's rounds
    embed the same gold-eval and test texts over and over with a fresh learner each time."""
    cache = _SHARED.setdefault(key, {})
    if len(cache) > SHARED_MAX:
        cache.clear()
    return cache


class FastLearner(Learner):
    """Logistic regression on frozen sentence embeddings; `model_path` is the encoder folder."""

    name = "fast"
    C_GRID = (0.1, 1.0, 10.0)
    DEFAULT_C = 1.0

    @classmethod
    def resolve_model_path(cls, path: str | None) -> str:
        """The encoder: --learner-path (a folder or a Hub name), else the packaged MiniLM."""
        from .weights import minilm_path
        return path or minilm_path()

    def __init__(self, task, config: TrainConfig | None = None, *, model_path: str | None = None):
        if task.kind not in ("single", "pair"):
            raise S3Error(f"the fast learner supports classification tasks only (single and pair); task "
                          f"{task.name!r} is {task.kind} - use --learner minilm")
        super().__init__(task, config, model_path=model_path)
        self.source, self.tokenizer = open_encoder(model_path, self.config.revision, "--learner-path DIR")
        self.model_path = self.source.path
        self.max_length = min(self.config.max_length or task.max_length, 512)
        self.device = resolve_device(self.config.device)
        # The frozen features are this learner's model: `auto` keeps them fp32 so that a classifier trained
        # on one machine sees the same features on another; `bf16` (autocast) is for throwaway embeddings
        # such as the report's (analysis.minilm_embedder), about twice as fast on CPUs with AVX512-BF16.
        self.precision = "bf16" if self.config.precision == "bf16" else "fp32"
        self._encoder = None
        self._cache = shared_cache((str(self.model_path), self.max_length, str(self.device), self.precision))
        self.classes: list[str] | None = None
        self.coef: np.ndarray | None = None
        self.intercept: np.ndarray | None = None
        self.C: float | None = None
        self.history: dict | None = None

    @property
    def model_source(self):
        return self.source

    def check(self) -> None:
        """Encoder folder and tokenizer are checked on construction; here: scikit-learn must import."""
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise S3Error("the fast learner needs scikit-learn: pip install 's3synth[learn]'") from None

    # ------------------------------------------------------------ embeddings

    def _load_encoder(self):
        if self._encoder is None:
            import torch
            from transformers import AutoModel

            torch.manual_seed(self.config.seed)
            with quiet_transformers():
                self._encoder = AutoModel.from_pretrained(self.model_path, use_safetensors=True,
                                                          local_files_only=True).to(self.device).eval()
        return self._encoder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised mean-pooled embeddings, (len(texts), dim) float32; each distinct text once."""
        import torch

        missing = sorted({t for t in texts if t not in self._cache}, key=len, reverse=True)
        if missing:
            enc_model = self._load_encoder()
            bs = self.config.eval_batch_size
            with torch.inference_mode(), autocast(self.precision, self.device), \
                    bar(len(missing), "embed", "text") as b:
                for k in range(0, len(missing), bs):
                    chunk = missing[k:k + bs]
                    enc = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=True,
                                         return_tensors="pt").to(self.device)
                    hidden = enc_model(**enc).last_hidden_state.float()
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                    for t, v in zip(chunk, pooled.cpu().numpy()):
                        self._cache[t] = v.astype(np.float32)
                    b.advance(len(chunk))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def features(self, examples: Sequence[Example]) -> np.ndarray:
        u = self.embed([ex.text for ex in examples])
        if self.task.kind == "single":
            return u
        v = self.embed([ex.context or "" for ex in examples])
        return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)

    # ------------------------------------------------------------ training

    def _probs(self, X: np.ndarray) -> np.ndarray:
        """Probabilities over the task's labels (labels absent from training get 0)."""
        names = self.task.label_names
        out = np.zeros((len(X), len(names)))
        if len(self.classes) == 1:
            out[:, names.index(self.classes[0])] = 1.0
            return out
        p = proba(X, self.coef, self.intercept)
        for j, c in enumerate(self.classes):
            out[:, names.index(c)] = p[:, j]
        return out

    def fit(self, train: Sequence[Example], eval: Sequence[Example] | None = None,
            weights: Sequence[float] | None = None) -> dict:
        """Fit one logistic regression per C in the grid; keep the best on `eval` (C=1 without eval).
        `weights`: a loss weight per training example (sample_weight; all 1 when None)."""
        from sklearn.linear_model import LogisticRegression

        cfg, t0 = self.config, time.time()
        train, weights = subsample_weighted(list(train), weights, cfg.max_train_examples, cfg.seed)
        if not train:
            raise S3Error("no training examples for the learner")
        names = self.task.label_names
        for ex in train:
            if ex.label not in names:
                raise S3Error(f"training example {ex.id or ex.text[:40]!r} has label {ex.label!r}; "
                              f"task {self.task.name} expects one of {names}")
        eval = list(eval or [])
        X, y = self.features(train), np.array([ex.label for ex in train])
        Xe = self.features(eval) if eval else None
        metric = self.selection_metric
        present = sorted(set(y), key=names.index)
        grid = self.C_GRID if eval else (self.DEFAULT_C,)
        rows, fitted = [], []
        for i, C in enumerate(grid, start=1):
            ts = time.time()
            if len(present) == 1:  # a constant predictor: nothing to learn from one label
                classes, coef, icpt = present, np.zeros((1, X.shape[1])), np.zeros(1)
            else:
                lr = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=cfg.seed)
                lr.fit(X, y, sample_weight=None if weights is None else np.asarray(weights, dtype=float))
                classes, coef, icpt = [str(c) for c in lr.classes_], lr.coef_.copy(), lr.intercept_.copy()
            self.classes, self.coef, self.intercept, self.C = classes, coef, icpt, C
            p = self._probs(X)
            loss = -float(np.mean(np.log(np.clip(p[np.arange(len(y)), [names.index(c) for c in y]], 1e-12, 1))))
            row = {"epoch": i, "C": C, "train_loss": loss, "seconds": round(time.time() - ts, 3)}
            if eval:
                row.update(self.evaluate_features(eval, Xe))
            rows.append(row)
            fitted.append((classes, coef, icpt, C))
        k = best_epoch(rows, metric) if eval else 1
        self.classes, self.coef, self.intercept, self.C = fitted[k - 1]
        self.history = {"epochs": rows, "best_epoch": k, "selection_metric": metric, "C": self.C,
                        "train_examples": len(train), "seconds": round(time.time() - t0, 2),
                        "embedded_texts": len(self._cache)}
        return self.history

    # ------------------------------------------------------------ prediction

    def _predict_features(self, X: np.ndarray) -> list[Prediction]:
        names = self.task.label_names
        preds = []
        for p in self._probs(X):
            k = int(p.argmax())
            preds.append(Prediction(label=names[k], probs={n: float(v) for n, v in zip(names, p)},
                                    score=float(p[k])))
        return preds

    def evaluate_features(self, examples: Sequence[Example], X: np.ndarray) -> dict:
        from ..metrics import evaluate

        return evaluate(self.task, examples, self._predict_features(X))

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        if self.classes is None:
            raise S3Error("the learner has no trained model yet: call fit() first (or FastLearner.load(dir, task))")
        examples = list(examples)
        if not examples:
            return []
        return self._predict_features(self.features(examples))

    # ------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write classifier.safetensors (coef, intercept) and s3synth_learner.json."""
        from safetensors.numpy import save_file

        from ..io import apply_file_mode

        if self.classes is None:
            raise S3Error("nothing to save: call fit() first")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"coef": np.ascontiguousarray(self.coef, dtype=np.float64),
                   "intercept": np.ascontiguousarray(self.intercept, dtype=np.float64)}, str(d / WEIGHTS_FILE))
        encoder = encoder_record(self.source)
        meta = {"learner": self.name, "task": self.task.name, "kind": self.task.kind,
                "labels": self.task.label_names, "classes": self.classes, "C": self.C,
                "encoder": encoder["name"], "encoder_source": encoder, "max_length": self.max_length,
                "config": self.config.to_dict(), "history": self.history}
        (d / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        apply_file_mode(d)      # safetensors writes 0600; give the files the mode the umask allows

    @classmethod
    def load(cls, directory: str | Path, task, *, encoder_path: str | None = None) -> "FastLearner":
        """A trained fast learner written by `save`; the encoder comes from `encoder_path`, else from its
        record (`weights.locate_encoder`: the packaged MiniLM, the Hub name at its commit, or the folder
        as recorded), checked against the recorded content hash. A model saved before s3synth recorded
        the encoder so (its `encoder_source` has a `path`): the recorded folder, else the Hub name at its
        commit, else the packaged MiniLM."""
        from safetensors.numpy import load_file

        from .hf import _read_meta

        d = Path(directory)
        meta = _read_meta(d, task)
        src = meta.get("encoder_source") or {}
        if src and "path" not in src:
            enc, revision = locate_encoder(src, model=str(d), folder=encoder_path, folder_hint=(
                f"load it with FastLearner.load({str(d)!r}, task, encoder_path=FOLDER), FOLDER holding that encoder"))
        else:
            enc, revision = encoder_path or meta.get("encoder"), None
            if not enc or not Path(enc).is_dir():
                enc, revision = (src["name"], src.get("sha")) if src.get("source") == "hub" else (None, None)
        obj = cls(task, TrainConfig.from_dict({**meta["config"], "revision": revision}), model_path=enc)
        w = load_file(str(d / WEIGHTS_FILE))
        obj.coef, obj.intercept = w["coef"], w["intercept"]
        obj.classes, obj.C, obj.history = list(meta["classes"]), meta.get("C"), meta.get("history")
        return obj

