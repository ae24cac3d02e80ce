"""Predict with an s3synth model exported to ONNX: ONNX Runtime, the tokenizer and numpy only (no torch).

`s3synth export-model` copies this file into the export folder as `predict.py`, beside `model.onnx`
(`model.int8.onnx` with --quantize int8), `tokenizer.json` and `s3synth_onnx.json` (task kind, label
names, maximum length). Only this file's own folder is read.

    pip install onnxruntime tokenizers numpy
    python predict.py "a review to classify"                       # single-text classification
    python predict.py "the hypothesis" --context "the premise"     # pair classification (RTE, QNLI: text, context)
    python predict.py "the question?" --context "the passage"      # extractive QA (every window of a long passage)
    python predict.py --model fp32 "..."                           # the fp32 model (default: int8 when exported)

One JSON line per text on stdout. From Python, in this folder:

    from predict import OnnxModel
    m = OnnxModel()                       # or OnnxModel("path/to/export", model="fp32", threads=2)
    m.classify(["great film", "dull"])    # [{"label": ..., "score": ..., "probs": {...}}, ...]
    m.answer(["who?"], ["Ann wrote it."]) # [{"answer": ..., "score": ..., "start": ..., "end": ...}]

Inputs are sorted by length and run in padded batches; a QA context longer than the window is split
into overlapping windows and the best span over all of them wins (score = start + end logit), as in
the s3synth learner that trained the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
META_FILE = "s3synth_onnx.json"


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxModel:
    """An exported model: `classify` for classification tasks, `answer` for extractive QA."""

    def __init__(self, folder: str | Path = HERE, model: str = "auto", threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        files = self.meta["files"]
        if model == "auto":
            model = "int8" if "int8" in files else "fp32"
        if model not in files:
            raise ValueError(f"no {model} model in {folder} (exported: {', '.join(files)})")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.model = model
        self.session = ort.InferenceSession(str(folder / files[model]), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()                    # batches are padded here, to their longest input
        self.kind = self.meta["kind"]
        self.labels = self.meta["labels"]
        self.max_length = int(self.meta["max_length"])
        self.pad_id = int(self.meta["pad_token_id"])

    # ------------------------------------------------------------------ model calls

    def _feed(self, encodings: list) -> dict:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
        have = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: have[name] for name in self.inputs}

    def _run(self, encodings: list, batch_size: int) -> list:
        """Model outputs per encoding (longest first in batches of `batch_size`), unpadded, in input order."""
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        out: list = [None] * len(encodings)
        for k in range(0, len(order), batch_size):
            idx = order[k:k + batch_size]
            res = self.session.run(None, self._feed([encodings[i] for i in idx]))
            for j, i in enumerate(idx):
                n = len(encodings[i].ids)
                out[i] = res[0][j] if self.kind != "qa" else (res[0][j, :n], res[1][j, :n])
        return out

    # ------------------------------------------------------------------ tasks

    def classify(self, texts: list[str], contexts: list[str] | None = None, batch_size: int = 64) -> list[dict]:
        """Label, its probability and every label's probability per text (pair tasks: with its context)."""
        if self.kind == "qa":
            raise ValueError("this model answers questions: use answer(questions, contexts)")
        if self.kind == "pair" and contexts is None:
            raise ValueError("this is a pair task: give a context (the premise / passage) for every text")
        self.tokenizer.enable_truncation(self.max_length)
        items = list(zip(texts, contexts)) if self.kind == "pair" else list(texts)
        encodings = self.tokenizer.encode_batch(items) if items else []
        out = []
        for logits in (self._run(encodings, batch_size) if encodings else []):
            p = softmax(np.asarray(logits, dtype=np.float64))
            k = int(p.argmax())
            out.append({"label": self.labels[k], "score": float(p[k]),
                        "probs": {name: float(v) for name, v in zip(self.labels, p)}})
        return out

    def _windows(self, question: str, context: str) -> list:
        """The overlapping windows of one question and its context (the question cut to half a window)."""
        L = self.max_length
        q = self.tokenizer.encode(question, add_special_tokens=False)
        if len(q.ids) > L // 2:
            question = question[:q.offsets[L // 2 - 1][1]]
            q_len = L // 2
        else:
            q_len = len(q.ids)
        room = L - q_len - self.tokenizer.num_special_tokens_to_add(True)
        stride = max(1, min(int(self.meta.get("doc_stride", 128)), room // 2))
        self.tokenizer.enable_truncation(L, stride=stride, strategy="only_second")
        first = self.tokenizer.encode(question, context)
        return [first, *first.overflowing]

    def answer(self, questions: list[str], contexts: list[str], batch_size: int = 64) -> list[dict]:
        """The best answer span per question in its context: text, score, character start and end."""
        if self.kind != "qa":
            raise ValueError("this model classifies: use classify(texts)")
        longest = int(self.meta.get("max_answer_tokens", 30))
        windows = [(i, w) for i, (q, c) in enumerate(zip(questions, contexts)) for w in self._windows(q.strip(), c)]
        logits = self._run([w for _, w in windows], batch_size) if windows else []
        best: list = [None] * len(questions)
        for (i, w), (s, e) in zip(windows, logits):
            ctx = np.array([sid == 1 for sid in w.sequence_ids], dtype=bool)
            n = len(ctx)
            if not ctx.any():
                continue
            scores = s[:n, None].astype(np.float64) + e[None, :n].astype(np.float64)
            a, b = np.indices((n, n))
            scores = np.where(ctx[:, None] & ctx[None, :] & (b >= a) & (b - a < longest), scores, -np.inf)
            flat = int(np.argmax(scores))
            score = float(scores.flat[flat])
            if np.isfinite(score) and (best[i] is None or score > best[i][0]):
                best[i] = (score, w.offsets[flat // n][0], w.offsets[flat % n][1])
        out = []
        for found, context in zip(best, contexts):
            if found is None:
                out.append({"answer": "", "score": None, "start": None, "end": None})
            else:
                score, start, end = found
                out.append({"answer": context[start:end], "score": score, "start": start, "end": end})
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='example: python predict.py "a wonderful, moving film"')
    parser.add_argument("texts", nargs="+", help="text(s) to classify, or question(s) for a QA model")
    parser.add_argument("--context", help="the context of every text (pair tasks: the premise; QA: the passage)")
    parser.add_argument("--model", choices=("auto", "int8", "fp32"), default="auto",
                        help="which exported model (default: int8 when exported, else fp32)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    try:
        m = OnnxModel(HERE, model=args.model, threads=args.threads)
    except ValueError as e:
        print(f"predict.py: {e}", file=sys.stderr)
        return 2
    if m.kind in ("pair", "qa") and args.context is None:
        print(f"predict.py: a {'QA' if m.kind == 'qa' else 'pair'} model needs --context", file=sys.stderr)
        return 2
    contexts = [args.context] * len(args.texts) if args.context is not None else None
    rows = m.answer(args.texts, contexts) if m.kind == "qa" else m.classify(args.texts, contexts)
    for text, row in zip(args.texts, rows):
        print(json.dumps({"text": text, **row}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
