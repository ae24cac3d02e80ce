"""Fine-tune a Hugging Face encoder (MiniLM, DistilBERT, any encoder folder or Hub name) on a task.

Classification (single and pair) uses `AutoModelForSequenceClassification`; a pair is fed as
(text, context), i.e. (hypothesis, premise) as in the paper. Extractive QA uses
`AutoModelForQuestionAnswering` over overlapping windows of the context (see `qa_windows`).
Every `fit` starts from the pretrained weights again, seeded by `config.seed`; the best epoch on
`eval` (by the task's selection metric) is kept. Encoder families: BERT, RoBERTa, DeBERTa-v2/v3,
ELECTRA, ModernBERT and others with the same heads: token_type_ids are sent only where the
tokenizer makes them and the model takes them, padding uses the tokenizer's own pad id, and QA's
"no answer" points at each window's first special token (see `qa_windows`). A Hub name is
downloaded once into the Hugging Face cache (`s3synth.hub`).

Several processes or GPUs: data-parallel (torchrun, accelerate launch, Ray Train or the `workers` option;
see `distributed`). Not handled: loading pickled (.bin) weights - safetensors only; gradient accumulation;
max_length beyond the tokenizer's `model_max_length` or the model's positions (it is capped there); QA
questions longer than half the window (cut to half the window); QA answers that no window holds whole
(trained as "no answer at CLS" in every window, as the SQuAD reference scripts do); QA with a slow
(Python) tokenizer, which has no character offsets; custom model code (trust_remote_code).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import random
import time
from pathlib import Path
from typing import Sequence

from ..data import Example
from ..errors import S3Error
from ..progress import bar
from .base import Learner, Prediction, TrainConfig, subsample_weighted
from .qa_windows import answer_tokens, best_answer, context_offsets, null_index
from .weights import encoder_record

META_FILE = "s3synth_learner.json"
MEGA_BATCH_FACTOR = 8   # batches per length-sorted mega-batch: padding savings vs. batch variety


# ---------------------------------------------------------------- pure helpers (unit tested)

def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           mega_factor: int = MEGA_BATCH_FACTOR) -> list[list[int]]:
    """Shuffle, cut into mega-batches of `batch_size * mega_factor`, sort each by length (longest
    first), split into batches and shuffle the batch order. Every index appears exactly once."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * mega_factor
    batches = []
    for k in range(0, len(idx), mega):
        chunk = sorted(idx[k:k + mega], key=lambda i: -lengths[i])
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def best_epoch(rows: Sequence[dict], metric: str) -> int:
    """The epoch number with the highest `metric`; ties go to the earlier epoch.

    Example: [{"epoch": 1, "f1": .5}, {"epoch": 2, "f1": .7}, {"epoch": 3, "f1": .7}] -> 2
    """
    if not rows:
        raise ValueError("no epochs")
    best = rows[0]
    for row in rows[1:]:
        if row[metric] > best[metric]:
            best = row
    return best["epoch"]


def should_stop(rows: Sequence[dict], metric: str, patience: int) -> bool:
    """True when the last `patience` epochs brought no improvement over the best one."""
    return bool(rows) and rows[-1]["epoch"] - best_epoch(rows, metric) >= patience


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_flags() & {"avx512_bf16", "amx_bf16"} != set()
    except (AttributeError, RuntimeError):
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fused_adamw(device: str) -> dict:
    """AdamW's `fused` implementation where torch has it for `device` (one kernel per step instead of a
    dozen passes over every parameter: on a CPU the step of MiniLM-L6 went from a third of the training
    time to a tenth; benchmarks/learner_throughput.py). Same update rule, equal within float rounding."""
    import torch

    if device == "cuda" or (device == "cpu" and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)):
        return {"fused": True}
    return {}


def resolve_precision(precision: str, device: str) -> str:
    """"bf16" or "fp32" for `precision` (auto | bf16 | fp32) on `device` (cpu | cuda).

    Example: resolve_precision("auto", "cpu") -> "bf16" on a CPU with AVX512-BF16, else "fp32"."""
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(precision: str, device: str):
    """bf16 autocast on `device` when `precision` (resolved: bf16 | fp32) is bf16, else a no-op context."""
    import torch

    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise S3Error("learner setting device='cuda' but no CUDA GPU is available; use device=auto or cpu")
    return device


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' load reports and weight-loading bars (restored afterwards)."""
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def check_model_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise S3Error(f"learner model folder {str(p)!r} not found; pass a local folder with config.json "
                      "and model.safetensors (--learner-path DIR)")
    if not (p / "config.json").exists():
        raise S3Error(f"learner model folder {str(p)!r} has no config.json; is it a Hugging Face model folder?")
    if not any(p.glob("*.safetensors")):
        raise S3Error(f"learner model folder {str(p)!r} has no .safetensors weights (pickled .bin weights are "
                      "not loaded); convert them to safetensors first")
    return p


def open_encoder(model_path: str | None, revision: str | None = None, folder_hint: str = "--learner hf:DIR"):
    """(ModelSource, tokenizer) of an encoder: a local folder, or a Hub name downloaded once into the
    Hugging Face cache (at `revision`); None means the packaged all-MiniLM-L6-v2."""
    from ..hub import resolve

    if model_path is None:
        from .weights import minilm_path
        model_path = minilm_path()
    source = resolve(str(model_path), revision=revision, what="learner model", folder_hint=folder_hint)
    check_model_dir(source.path)
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return source, AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    except ImportError as e:     # e.g. a SentencePiece spm.model without the sentencepiece package
        raise S3Error(f"the tokenizer of learner model {source.spec!r} needs a package that is missing "
                      f"({str(e).strip().splitlines()[0]}); pip install 's3synth[learn]'") from None
    except (OSError, ValueError) as e:
        raise S3Error(f"cannot load the tokenizer of learner model {source.spec!r} from {source.path}: "
                      f"{str(e).strip().splitlines()[0]}") from None


# model types whose position ids start after the pad id (positions = max_position_embeddings - 2)
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod")


def position_limit(folder: str | Path) -> int | None:
    """Tokens the model in `folder` can take, from its config.json (None when it does not say).

    Example: a RoBERTa config with max_position_embeddings 514 -> 512."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    n = cfg.get("max_position_embeddings")
    if not isinstance(n, int) or n < 1:
        return None
    return n - 2 if cfg.get("model_type") in OFFSET_POSITIONS else n


_TOKENS: dict[tuple, dict] = {}
TOKEN_CACHE_MAX = 200_000     # texts kept per tokenizer setting; then started afresh


def _token_cache(key: tuple) -> dict:
    """(text, pair text) -> (input_ids, token_type_ids) for one tokenizer setting, shared by every learner
    of the process (each S3 round trains a fresh one on the same gold eval and test texts)."""
    cache = _TOKENS.setdefault(key, {})
    if len(cache) > TOKEN_CACHE_MAX:
        cache.clear()
    return cache


# ---------------------------------------------------------------- the learner

class HFLearner(Learner):
    """Fine-tunes a local Hugging Face encoder; `model_path` defaults to the packaged all-MiniLM-L6-v2."""

    name = "hf"

    folder_hint = "--learner hf:DIR"     # the way out with a local folder, in error messages

    @classmethod
    def resolve_model_path(cls, path: str | None) -> str:
        if not path:
            raise S3Error("the hf learner needs a model: --learner hf:NAME (a Hugging Face Hub name such as "
                          "distilbert-base-uncased) or --learner hf:DIR (a local folder)")
        return path

    def __init__(self, task, config: TrainConfig | None = None, *, model_path: str | None = None):
        super().__init__(task, config, model_path=model_path)
        self.source, self.tokenizer = open_encoder(model_path, self.config.revision, self.folder_hint)
        self.model_path = self.source.path
        cap = getattr(self.tokenizer, "model_max_length", None) or 512
        cap = cap if cap < 100_000 else None
        positions = position_limit(self.model_path)
        want = self.config.max_length or task.max_length
        self.max_length = min([want] + [c for c in (cap, positions) if c])
        self.device = resolve_device(self.config.device)
        self.precision = resolve_precision(self.config.precision, self.device)
        self.model = None
        self.base_model = self.source.repo_id or self.model_path
        self.base_source: dict | None = None     # a loaded model's record of its pretrained weights (see save)
        self.history: dict | None = None
        self._type_ids = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        self._model_takes_types = True     # set from the model's forward() when it is loaded

    @property
    def model_source(self):
        return self.source

    def check(self) -> None:
        """Weights folder and tokenizer are checked on construction; here: torch must import."""
        try:
            import torch  # noqa: F401
        except ImportError:
            raise S3Error("the learner needs torch: pip install 's3synth[learn]'") from None

    # ------------------------------------------------------------ model

    def _auto_class(self):
        from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

        return AutoModelForQuestionAnswering if self.task.kind == "qa" else AutoModelForSequenceClassification

    def _load_model(self, path: str):
        kwargs = dict(use_safetensors=True, local_files_only=True)
        if self.task.kind != "qa":
            names = self.task.label_names
            kwargs.update(num_labels=len(names), id2label=dict(enumerate(names)),
                          label2id={n: i for i, n in enumerate(names)})
        try:
            with quiet_transformers():
                model = self._auto_class().from_pretrained(path, **kwargs)
        except (OSError, ValueError) as e:
            raise S3Error(f"cannot load learner model from {path!r}: {str(e).splitlines()[0]}") from None
        self._model_takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
        return model.to(self.device)

    def _autocast(self):
        return autocast(self.precision, self.device)

    # ------------------------------------------------------------ features

    def _encode_cls(self, examples: Sequence[Example]) -> list[dict]:
        """One feature per example; token ids come from a process-wide cache per tokenizer setting, so the
        gold eval and test texts that every round predicts again are tokenised once."""
        pair = self.task.kind == "pair"
        cache = _token_cache((self.model_path, self.max_length, pair, self._type_ids))
        keys = [(ex.text, (ex.context or "") if pair else None) for ex in examples]
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
        if missing:
            enc = self.tokenizer([k[0] for k in missing], [k[1] for k in missing] if pair else None,
                                 truncation=True, max_length=self.max_length)
            for j, k in enumerate(missing):
                types = enc["token_type_ids"][j] if (self._type_ids and "token_type_ids" in enc) else None
                cache[k] = (enc["input_ids"][j], types)
        feats = []
        for i, k in enumerate(keys):
            ids, types = cache[k]
            f = {"input_ids": ids, "example": i}
            if types is not None:
                f["token_type_ids"] = types
            feats.append(f)
        return feats

    def _encode_qa(self, examples: Sequence[Example], training: bool) -> list[dict]:
        """One feature per window: input_ids, context-only offsets, the example index, and for training
        the answer's token start/end (CLS when the window does not hold it whole)."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise S3Error(f"extractive QA needs a fast (Rust) tokenizer for character offsets, and the tokenizer "
                          f"of {self.base_model!r} is a slow one; give a model folder with a tokenizer.json")
        L = self.max_length
        special = self.tokenizer.num_special_tokens_to_add(pair=True)
        feats = []
        for i, ex in enumerate(examples):
            question = ex.text.strip()
            q = self.tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
            if len(q["input_ids"]) > L // 2:  # keep at least half of each window for the context
                question = question[:q["offset_mapping"][L // 2 - 1][1]]
                q_len = L // 2
            else:
                q_len = len(q["input_ids"])
            room = L - q_len - special
            stride = max(1, min(self.config.doc_stride, room // 2))
            enc = self.tokenizer(question, ex.context or "", truncation="only_second", max_length=L,
                                 stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
            span = _answer_chars(ex) if training else None
            for w in range(len(enc["input_ids"])):
                seq_ids = enc.sequence_ids(w)
                offsets = context_offsets(enc["offset_mapping"][w], seq_ids)
                f = {"input_ids": enc["input_ids"][w], "example": i, "offsets": offsets}
                if self._type_ids and "token_type_ids" in enc:
                    f["token_type_ids"] = enc["token_type_ids"][w]
                if training:
                    f["start_positions"], f["end_positions"] = answer_tokens(offsets, *span, null=null_index(seq_ids))
                feats.append(f)
        return feats

    def _collate(self, feats: Sequence[dict], targets: Sequence[str] = ()) -> dict:
        import torch

        pad = self.pad_id
        width = max(len(f["input_ids"]) for f in feats)
        ids = [f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in feats]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in feats]
        batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if "token_type_ids" in feats[0] and self._model_takes_types:
            tpad = getattr(self.tokenizer, "pad_token_type_id", 0) or 0
            batch["token_type_ids"] = torch.tensor(
                [f["token_type_ids"] + [tpad] * (width - len(f["token_type_ids"])) for f in feats])
        for key in targets:
            batch[key] = torch.tensor([f[key] for f in feats])
        return {k: v.to(self.device) for k, v in batch.items()}

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad id (1 for RoBERTa, 0 for BERT, ...); without one, its end or separator token
        (padding is masked out, but a real token keeps embedding look-ups in range)."""
        tok = self.tokenizer
        for tid in (tok.pad_token_id, tok.eos_token_id, tok.sep_token_id, tok.unk_token_id):
            if tid is not None:
                return int(tid)
        return 0

    def _train_features(self, train: Sequence[Example]) -> tuple[list[dict], tuple[str, ...]]:
        if self.task.kind == "qa":
            for ex in train:
                if not ex.answer or not ex.answer.get("text") or ex.context is None:
                    raise S3Error(f"QA training example {ex.id or ex.text[:40]!r} has no answer or context")
            return self._encode_qa(train, training=True), ("start_positions", "end_positions")
        index = {n: i for i, n in enumerate(self.task.label_names)}
        for ex in train:
            if ex.label not in index:
                raise S3Error(f"training example {ex.id or ex.text[:40]!r} has label {ex.label!r}; "
                              f"task {self.task.name} expects one of {self.task.label_names}")
        feats = self._encode_cls(train)
        for f, ex in zip(feats, train):
            f["labels"] = index[ex.label]
        return feats, ("labels",)

    # ------------------------------------------------------------ training

    def fit(self, train: Sequence[Example], eval: Sequence[Example] | None = None,
            weights: Sequence[float] | None = None) -> dict:
        """Train a fresh model from the pretrained weights; keep the best epoch on `eval`.
        `weights`: a loss weight per training example (QA: every window of the example carries it).
        Data-parallel under torchrun/accelerate launch/Ray Train, or in `workers` processes it starts
        (see `distributed`)."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        from .distributed import DataParallel, launch

        launched = launch(self, train, eval, weights)
        if launched is not None:
            return launched
        cfg, t0 = self.config, time.time()
        train, weights = subsample_weighted(list(train), weights, cfg.max_train_examples, cfg.seed)
        if not train:
            raise S3Error("no training examples for the learner")
        eval = list(eval or [])
        metric = self.selection_metric
        torch.manual_seed(cfg.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(cfg.seed)
        rng = random.Random(cfg.seed)
        dp = DataParallel.current(self.device)
        self.model = self._load_model(self.model_path)
        fwd = torch.compile(self.model) if (cfg.compile and self.device == "cuda") else self.model
        feats, targets = self._train_features(train)
        fw = None if weights is None else [weights[f["example"]] for f in feats]
        w_mean = (sum(fw) / len(fw)) if fw else 1.0
        if fw is not None and w_mean <= 0:
            raise S3Error("learner: every training example has weight 0")
        if dp:
            fwd = dp.wrap(self.model)
            fwd = torch.compile(fwd) if (cfg.compile and self.device == "cuda") else fwd
        lengths = [len(f["input_ids"]) for f in feats]
        steps_per_epoch = math.ceil(len(feats) / cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "bias" in name or "norm" in name.lower() else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, **fused_adamw(self.device))
        sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
        rows: list[dict] = []
        best_state, best = None, None
        trained = 0
        for epoch in range(1, cfg.epochs + 1):
            te = time.time()
            self.model.train()
            loss_sum = 0.0
            with bar(len(feats), f"train epoch {epoch}/{cfg.epochs}", "ex") as b:
                for idx in length_grouped_batches(lengths, cfg.batch_size, rng):
                    mine, weight = dp.split(idx) if dp else (idx, 1.0)   # this rank's share of the batch
                    batch = self._collate([feats[i] for i in mine], targets)
                    with self._autocast():
                        loss = self._loss(fwd, batch, None if fw is None else [fw[i] for i in mine], w_mean)
                    (loss * weight if dp else loss).backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    loss_sum += loss.item() * (len(mine) if weight else 0) if dp else loss.item() * len(idx)
                    b.advance(len(idx))
            trained += len(train)
            loss_sum = dp.sum(loss_sum) if dp else loss_sum
            row = {"epoch": epoch, "train_loss": loss_sum / len(feats), "seconds": round(time.time() - te, 2)}  # before eval
            if eval:
                row.update(dp.evaluate(self, eval) if dp else self.evaluate(eval))
            rows.append(dp.broadcast(row) if dp else row)   # rank 0's row: the same best epoch on every rank
            if eval:
                k = best_epoch(rows, metric)
                if k == epoch:
                    best = k
                    best_state = {n: t.detach().to("cpu", copy=True) for n, t in self.model.state_dict().items()}
                if should_stop(rows, metric, cfg.patience):
                    break
        if best_state is not None and best != rows[-1]["epoch"]:
            self.model.load_state_dict(best_state)
        self.model.eval()
        seconds = time.time() - t0
        self.history = {
            "epochs": rows, "best_epoch": best if eval else rows[-1]["epoch"], "selection_metric": metric,
            "train_examples": len(train), "train_features": len(feats), "seconds": round(seconds, 2),
            "train_examples_per_s": round(trained / max(sum(r["seconds"] for r in rows), 1e-9), 2),
            "stopped_early": len(rows) < cfg.epochs, "precision": self.precision, "device": self.device,
        }
        return self.history

    @staticmethod
    def _loss(fwd, batch: dict, weights: list[float] | None, w_mean: float):
        """The model's own loss, or with `weights` the per-example losses weighted and divided by
        (batch size x the mean weight of the training set), so a batch of light examples moves the model less."""
        if weights is None:
            return fwd(**batch).loss
        import torch
        import torch.nn.functional as F

        targets = {k: batch.pop(k) for k in ("labels", "start_positions", "end_positions") if k in batch}
        out = fwd(**batch)
        if "labels" in targets:
            per = F.cross_entropy(out.logits.float(), targets["labels"], reduction="none")
        else:   # as the models' own QA loss: positions outside the window are ignored
            n = out.start_logits.size(1)
            s, e = targets["start_positions"].clamp(0, n), targets["end_positions"].clamp(0, n)
            per = (F.cross_entropy(out.start_logits.float(), s, ignore_index=n, reduction="none")
                   + F.cross_entropy(out.end_logits.float(), e, ignore_index=n, reduction="none")) / 2
        w = torch.tensor(weights, dtype=per.dtype, device=per.device)
        return (per * w).sum() / (len(weights) * w_mean)

    # ------------------------------------------------------------ prediction

    def _require_model(self):
        if self.model is None:
            raise S3Error("the learner has no trained model yet: call fit() first (or HFLearner.load(dir, task))")

    def _logits(self, feats: list[dict]) -> list:
        """Model outputs per feature (numpy): logits (classification) or (start, end) logits (QA)."""
        import torch

        self.model.eval()
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
        out: list = [None] * len(feats)
        bs = self.config.eval_batch_size
        with torch.inference_mode(), bar(len(feats), "predict", "ex") as b:
            for k in range(0, len(order), bs):
                idx = order[k:k + bs]
                chunk = [feats[i] for i in idx]
                with self._autocast():
                    res = self.model(**self._collate(chunk))
                if self.task.kind == "qa":
                    s, e = res.start_logits.float().cpu().numpy(), res.end_logits.float().cpu().numpy()
                    for j, i in enumerate(idx):
                        n = len(feats[i]["input_ids"])
                        out[i] = (s[j, :n], e[j, :n])
                else:
                    probs = torch.softmax(res.logits.float(), dim=-1).cpu().numpy()
                    for j, i in enumerate(idx):
                        out[i] = probs[j]
                b.advance(len(idx))
        return out

    def predict(self, examples: Sequence[Example]) -> list[Prediction]:
        self._require_model()
        examples = list(examples)
        if not examples:
            return []
        if self.task.kind == "qa":
            feats = self._encode_qa(examples, training=False)
            outs = self._logits(feats)
            windows: list[list] = [[] for _ in examples]
            for f, (s, e) in zip(feats, outs):
                windows[f["example"]].append((s, e, f["offsets"]))
            preds = []
            for ex, ws in zip(examples, windows):
                text, score = best_answer(ws, ex.context or "", self.config.max_answer_tokens)
                preds.append(Prediction(answer=text, score=score))
            return preds
        names = self.task.label_names
        preds = []
        for p in self._logits(self._encode_cls(examples)):
            k = int(p.argmax())
            preds.append(Prediction(label=names[k], probs={n: float(v) for n, v in zip(names, p)},
                                    score=float(p[k])))
        return preds

    # ------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write model.safetensors + config.json, the tokenizer and `s3synth_learner.json`."""
        from ..io import apply_file_mode
        from .distributed import is_main_process

        self._require_model()
        if not is_main_process():   # data-parallel: every rank holds the same model; rank 0 writes it
            return
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with quiet_transformers():
            self.model.save_pretrained(d, safe_serialization=True)
            self.tokenizer.save_pretrained(d)
        # where the pretrained weights came from, by name (and commit or content hash), not by a folder of this machine
        base = self.base_source or encoder_record(self.source)
        meta = {"learner": self.name, "task": self.task.name, "kind": self.task.kind,
                "labels": self.task.label_names, "base_model": base["name"],
                "base_model_source": base, "max_length": self.max_length,
                "config": self.config.to_dict(), "history": self.history}
        (d / META_FILE).write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        apply_file_mode(d)      # safetensors writes 0600; give the files the mode the umask allows

    @classmethod
    def load(cls, directory: str | Path, task) -> "HFLearner":
        """A trained learner written by `save`, ready to predict (a later `fit` starts from these weights)."""
        d = Path(directory)
        meta = _read_meta(d, task)
        # the weights are in `d` now: a Hub revision of the base model does not apply to them
        obj = cls(task, TrainConfig.from_dict({**meta["config"], "revision": None}), model_path=str(d))
        obj.base_model = meta.get("base_model", str(d))
        obj.base_source = meta.get("base_model_source") or {"name": obj.base_model}
        obj.history = meta.get("history")
        obj.model = obj._load_model(str(d))
        obj.model.eval()
        return obj


class MiniLMLearner(HFLearner):
    """`--learner minilm`: fine-tunes the packaged all-MiniLM-L6-v2 (or the folder given as --learner-path)."""

    name = "minilm"

    @classmethod
    def resolve_model_path(cls, path: str | None) -> str:
        from .weights import minilm_path
        return path or minilm_path()


class DistilBERTLearner(HFLearner):
    """`--learner distilbert`: the paper's model, distilbert-base-uncased from the Hub (downloaded once into
    the Hugging Face cache), or the folder given as --learner-path."""

    name = "distilbert"
    folder_hint = "--learner-path DIR (a folder with config.json, model.safetensors and the tokenizer)"

    @classmethod
    def resolve_model_path(cls, path: str | None) -> str:
        from .weights import DISTILBERT_HUB_NAME
        return path or DISTILBERT_HUB_NAME


def _answer_chars(ex: Example) -> tuple[int, int]:
    """[start, end) of the answer in the context, trimmed of surrounding whitespace."""
    ctx, text = ex.context or "", ex.answer["text"]
    start = ex.answer.get("start")
    if start is None or ctx[start:start + len(text)] != text:
        start = ctx.find(text)
        if start < 0:
            raise S3Error(f"QA example {ex.id or ex.text[:40]!r}: answer {text!r} is not in its context")
    end = start + len(text)
    while start < end and ctx[start].isspace():
        start += 1
    while end > start and ctx[end - 1].isspace():
        end -= 1
    return start, end


def _read_meta(d: Path, task) -> dict:
    f = d / META_FILE
    if not f.exists():
        raise S3Error(f"{d} is not a saved s3synth learner (no {META_FILE})")
    meta = json.loads(f.read_text(encoding="utf-8"))
    if meta.get("kind") != task.kind or list(meta.get("labels") or []) != task.label_names:
        raise S3Error(f"{d} was trained for task {meta.get('task')!r} ({meta.get('kind')}, labels "
                      f"{meta.get('labels')}), not for {task.name!r} ({task.kind}, labels {task.label_names})")
    return meta
