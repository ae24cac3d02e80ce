"""`s3synth export-model RUN --format onnx [--quantize int8]`: the run's final model as ONNX, ready to serve
on a CPU with ONNX Runtime, the tokenizer and numpy (no torch).

The graph comes from `torch.onnx.export` (the torch.export-based exporter, which needs `onnxscript`), with
dynamic batch and sequence axes; `--quantize int8` adds `model.int8.onnx` from ONNX Runtime's
`quantize_dynamic` (int8 weights with one scale per output channel by default, activations quantized on
the fly; per-tensor scales cost 1 accuracy point on benchmarks/onnx_serving.py's imdb model, per-channel
none). The export folder holds:

    model.onnx            fp32 graph: input_ids, attention_mask[, token_type_ids] (int64, [batch, sequence])
                          -> logits [batch, labels] (classification) or start_logits, end_logits [batch, sequence] (QA)
    model.int8.onnx       with --quantize int8
    tokenizer.json ...    the model's tokenizer (Hugging Face tokenizers format)
    config.json           the Hugging Face model config (id2label holds the label names)
    s3synth_onnx.json     task kind, label names, max length, QA window settings, the export check's figures
    predict.py            the stand-alone example (a copy of `s3synth/serve/onnx_predict.py`)
    README.md

Nothing is written unless the export checks out: the fp32 graph's outputs must match PyTorch fp32 within
`TOLERANCE` on probe inputs (built-in ones, plus examples of the run's training set) in a padded batch and
alone, and `predict.py`'s tokenisation must give the same token ids as the learner's. The folder is
written under a temp name beside `out` and renamed into place.

Not handled: the `fast` learner (a frozen encoder + logistic regression, not one graph; use minilm or
hf:DIR); models over ~1.5 GB are written with their weights in an external data file (model.onnx.data).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from ..errors import S3Error
from ..io import apply_file_mode, read_json, read_jsonl
from ..rundir import LAYOUT, in_use

FORMATS = ("onnx",)
QUANTIZE = ("none", "int8")
META_FILE = "s3synth_onnx.json"
LEARNER_META = "s3synth_learner.json"       # written by the learners' save()
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOLERANCE = (1e-4, 1e-3)    # (absolute, relative): |ONNX fp32 - PyTorch fp32| <= abs + rel * |PyTorch| per output
RUN_PROBES = 6              # examples of final/train.jsonl added to the built-in probes
EXTERNAL_DATA_BYTES = 1_500_000_000   # above this the weights go into model.onnx.data (protobuf's 2 GB limit)
INSTALL = "pip install 's3synth[onnx]'"

_LONG = " ".join([("The film follows a family over three summers by the sea, and every scene is shot in"
                  " natural light with long takes and very little music.")] * 40)
PROBES = {
    "single": [("A wonderful film: the cast is superb and the story moved me to tears.", None),
               ("Dull, far too long, and the jokes never land.", None),
               ("It was fine.", None),
               (_LONG, None)],
    "pair": [("A man is playing a guitar.", "A man plays an instrument on a stage in front of a small crowd."),
             ("Nobody came to the meeting.", "The meeting was attended by forty delegates from nine countries."),
             ("Where was the treaty signed?", _LONG)],
    "qa": [("Who wrote the letter?", "The letter was written by Ada Lovelace in 1843 and sent to Babbage."),
           ("When did the bridge open?", "Work began in 1929. The bridge opened to traffic in May 1937."),
           ("What is shot in natural light?", _LONG)],
}


# ------------------------------------------------------------------ inputs

def require_packages() -> None:
    """One-line S3Error when the export's packages are missing."""
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise S3Error(f"export-model --format onnx needs {', '.join(missing)}: {INSTALL}")
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise S3Error("export-model needs torch and transformers to read the model: pip install 's3synth[learn,onnx]'"
                      ) from None


def resolve_source(path: str | Path) -> tuple[Path, Path | None]:
    """(model folder, run directory or None) for RUN (a run directory, whose final/model is exported), the
    --out of `s3synth train` (its model/), or a saved learner folder itself."""
    p = Path(path)
    if not p.exists():
        raise S3Error(f"{p} not found; give a finished run directory (the --out of `s3synth run`)")
    if not p.is_dir():
        raise S3Error(f"{p} is a file; give a finished run directory (the --out of `s3synth run`)")
    if (p / LAYOUT.manifest).exists():
        model = p / LAYOUT.final_model
        if in_use(p):
            raise S3Error(f"{p} is in use by a running s3synth command; export once it has finished")
        if not (model / LEARNER_META).exists():
            raise S3Error(f"{p} has no final model yet ({LAYOUT.final_model}/{LEARNER_META} missing): finish the run "
                          "by re-running its `s3synth run` command (manifest.json lists it), then export")
        return model, p
    for model in (p, p / "model"):
        if (model / LEARNER_META).exists():
            return model, None
    raise S3Error(f"{p} is neither an s3synth run directory (no manifest.json) nor a saved model folder (no "
                  f"{LEARNER_META}); give the --out of `s3synth run` or `s3synth train`")


DEFAULT_OUT = ("RUN_DIR/export/onnx for a run directory or the --out of `s3synth train`; for a model folder "
               "given itself, MODEL_DIR-onnx beside it")


def default_out(source: Path, model_dir: Path) -> Path:
    """Where an export goes without --out (`DEFAULT_OUT`, which --help shows): inside the folder given when it
    holds the model (a run directory: DIR/final/model; a `train` output: DIR/model), else beside the model
    folder, not in it (it is what `push` uploads).

    Examples: default_out(Path("runs/rte"), Path("runs/rte/final/model")) -> runs/rte/export/onnx;
    default_out(Path("gold"), Path("gold/model")) -> gold/export/onnx; default_out(Path("m"), Path("m")) -> m-onnx
    """
    if Path(source).resolve() != model_dir.resolve():
        return Path(source) / LAYOUT.export_dir / "onnx"
    return model_dir.parent / f"{model_dir.name}-onnx"


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing --out unless --force; even then only a previous export or an empty folder is replaced."""
    if not os.path.lexists(out):
        return
    if not out.is_dir() or out.is_symlink():
        raise S3Error(f"--out {out}: exists and is not a folder; give another --out")
    if not force:
        raise S3Error(f"--out {out}: exists; add --force to replace it, or give another --out")
    if not (out / META_FILE).exists() and any(out.iterdir()):
        raise S3Error(f"--out {out}: exists and is not an s3synth ONNX export (no {META_FILE}); --force replaces "
                      "only an earlier export or an empty folder: give another --out")


NOT_CONVERTED = {"fast": "frozen MiniLM embeddings + logistic regression"}   # learners export-model refuses
TO_EXPORT = "train with --learner minilm (or hf:DIR) to export to ONNX"


def export_note(learner: str | None) -> str | None:
    """What a run with `--learner learner` is told at its start when `export-model` will refuse its model;
    None when it converts it.

    Example: export_note("fast") -> "note: the fast learner (frozen MiniLM ...) cannot be exported to ONNX ..."
    """
    kind = (learner or "").partition(":")[0]
    if kind not in NOT_CONVERTED:
        return None
    return (f"note: the {kind} learner ({NOT_CONVERTED[kind]}) cannot be exported to ONNX by `s3synth "
            f"export-model`; {TO_EXPORT}")


def learner_meta(model_dir: Path) -> dict:
    meta = read_json(model_dir / LEARNER_META)
    if not isinstance(meta, dict):
        raise S3Error(f"{model_dir / LEARNER_META}: not a JSON object; re-run the command that saved the model")
    if meta.get("learner") in NOT_CONVERTED or (model_dir / "classifier.safetensors").exists():
        kind = meta.get("learner") if meta.get("learner") in NOT_CONVERTED else "fast"
        raise S3Error(f"{model_dir} holds a `{kind}` learner ({NOT_CONVERTED[kind]}), which "
                      f"export-model does not convert; {TO_EXPORT}")
    if meta.get("kind") not in ("single", "pair", "qa"):
        raise S3Error(f"{model_dir / LEARNER_META}: unknown task kind {meta.get('kind')!r}")
    if meta["kind"] != "qa" and not meta.get("labels"):
        raise S3Error(f"{model_dir / LEARNER_META}: no label names; re-run the command that saved the model")
    return meta


def probe_pairs(kind: str, run_dir: Path | None) -> list[tuple[str, str | None]]:
    """(text, context) inputs for the export check: built-in ones of the task kind, then a few of the run's
    training examples (longest first, so truncation is exercised)."""
    from ..data import example_from_row
    from ..report.runview import run_task

    pairs = list(PROBES[kind])
    train = run_dir / LAYOUT.final_train if run_dir is not None else None
    if train is not None and train.exists():
        try:        # its rows hold the task's names for text and context (data.example_row)
            task = run_task(read_json(run_dir / LAYOUT.manifest))
        except (S3Error, AttributeError):      # not loadable: rows under the fields' own names are still read
            task = None
        rows = []
        for d in read_jsonl(train):
            try:
                rows.append(example_from_row(d, task).to_dict())
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        rows = [r for r in rows if isinstance(r.get("text"), str)]
        if kind != "single":
            rows = [r for r in rows if isinstance(r.get("context"), str)]
        rows.sort(key=lambda r: -len(r["text"]) - len(r.get("context") or ""))
        pairs += [(r["text"], r.get("context") if kind != "single" else None) for r in rows[:RUN_PROBES]]
    return pairs


# ------------------------------------------------------------------ the model

def load_model(model_dir: Path, kind: str):
    """(tokenizer, fp32 model in eval mode on the CPU) of a saved hf learner folder."""
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from ..learners.hf import quiet_transformers

    auto = AutoModelForQuestionAnswering if kind == "qa" else AutoModelForSequenceClassification
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            # eager attention: the exported graph then has the plain attention pattern that ONNX Runtime's
            # int8 kernels handle well (measured: int8 2.2x PyTorch fp32, against 1.3x for the SDPA graph)
            model = auto.from_pretrained(str(model_dir), local_files_only=True, use_safetensors=True,
                                         attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise S3Error(f"cannot load the model in {model_dir}: {str(e).splitlines()[0]}") from None
    return tokenizer, model.float().eval().to("cpu")


def input_names(model, tokenizer) -> list[str]:
    """The graph's inputs: input_ids, attention_mask, and token_type_ids when both model and tokenizer use them."""
    import inspect

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        names.append("token_type_ids")
    return names


def encode(tokenizer, pairs, kind: str, max_length: int, names: list[str]) -> dict:
    """The learner's encoding of probe pairs as one padded numpy batch (QA: the first window of each)."""
    texts = [t for t, _ in pairs]
    contexts = [c for _, c in pairs] if kind != "single" else None
    trunc = "only_second" if kind == "qa" else True
    enc = tokenizer(texts, contexts, truncation=trunc, max_length=max_length, padding=True, return_tensors="np")
    feed = {n: enc[n].astype("int64") for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in feed:
        feed["token_type_ids"] = (enc["input_ids"] * 0).astype("int64")
    return feed


class _Graph:
    """Builds the torch module whose forward takes the input tensors by name and returns plain tensors."""

    @staticmethod
    def make(model, names: list[str], kind: str):
        import torch

        class Outputs(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kw = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kw["token_type_ids"] = token_type_ids
                out = self.model(**kw)
                return (out.start_logits, out.end_logits) if kind == "qa" else out.logits

        return Outputs().eval()


def torch_outputs(model, feed: dict, kind: str) -> list:
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    return [out.start_logits.numpy(), out.end_logits.numpy()] if kind == "qa" else [out.logits.numpy()]


def export_graph(model, names: list[str], kind: str, example: dict, path: Path) -> None:
    """torch.onnx.export with dynamic batch and sequence axes: the TorchScript-based exporter (opset 17), or
    where it cannot trace the model (or the model is over 2 GB), the torch.export-based one."""
    import torch

    graph = _Graph.make(model, names, kind)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    args = tuple(torch.from_numpy(example[n]) for n in names)
    outputs = ["start_logits", "end_logits"] if kind == "qa" else ["logits"]
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)         # e.g. "torchvision is not installed. Skipping torchvision::nms"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:    # the TorchScript-based exporter first: its graph runs faster in ONNX Runtime, int8 above all
                if external:
                    raise ValueError("large model: the torch.export-based exporter writes external data")
                axes = {n: {0: "batch", 1: "sequence"} for n in names} | {o: {0: "batch"} for o in outputs}
                torch.onnx.export(graph, args, str(path), dynamo=False, input_names=names, output_names=outputs,
                                  dynamic_axes=axes, opset_version=17)
            except Exception:   # not traceable that way: the torch.export-based exporter
                program = torch.onnx.export(graph, args, dynamo=True, input_names=names, output_names=outputs,
                                            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names))
                program.save(str(path), external_data=external)
    except S3Error:
        raise
    except Exception as e:  # the exporter raises many types; the message names the unsupported part
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise S3Error(f"torch.onnx.export could not convert this model ({type(e).__name__}: {first}); "
                      "-v shows the traceback") from e
    finally:
        log.setLevel(level)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> None:
    """ONNX Runtime dynamic quantization: int8 weights (QInt8) for MatMul/Gemm, activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)        # quantize_dynamic logs advice on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=(src.parent / (src.name + ".data")).exists())
    finally:
        root.setLevel(level)


def max_diff(a: list, b: list) -> float:
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64))))
               for x, y in zip(a, b))


# ------------------------------------------------------------------ the check

def check_parity(model, sess, tokenizer, pairs, kind: str, max_length: int, names: list[str]) -> dict:
    """ONNX fp32 against PyTorch fp32 on the probes in one padded batch and each alone; S3Error beyond TOLERANCE."""
    import numpy as np

    atol, rtol = TOLERANCE
    worst, ok = 0.0, True
    batches = [pairs] + [[p] for p in pairs]
    for batch in batches:
        feed = encode(tokenizer, batch, kind, max_length, names)
        ref = torch_outputs(model, feed, kind)
        got = sess.run(None, feed)
        if len(ref) != len(got) or any(np.shape(r) != np.shape(g) for r, g in zip(ref, got)):
            raise S3Error(f"the ONNX fp32 model's outputs have shapes {[np.shape(g) for g in got]}, PyTorch's "
                          f"{[np.shape(r) for r in ref]}; nothing was written")
        worst = max(worst, max_diff(ref, got))
        ok = ok and all(np.allclose(g, r, atol=atol, rtol=rtol) for r, g in zip(ref, got))
    if not ok:
        raise S3Error(f"the ONNX fp32 model's outputs differ from PyTorch's by up to {worst:.3g} (tolerance "
                      f"{atol} + {rtol} x |PyTorch's|) on {len(pairs)} probe inputs; nothing was written")
    return {"probes": len(pairs), "batches": len(batches), "max_abs_diff": worst,
            "tolerance": {"abs": atol, "rel": rtol}}


def check_predict_py(folder: Path, tokenizer, pairs, kind: str, max_length: int) -> None:
    """predict.py's tokenisation (tokenizers alone) gives the learner's token ids; S3Error when not."""
    from .onnx_predict import OnnxModel

    m = OnnxModel(folder, model="fp32", threads=1)
    for text, context in pairs:
        if kind == "qa":
            ours = m._windows(text.strip(), context)[0].ids
            theirs = tokenizer(text.strip(), context, truncation="only_second", max_length=max_length)["input_ids"]
        else:
            m.tokenizer.enable_truncation(max_length)
            ours = m.tokenizer.encode(*((text, context) if kind == "pair" else (text,))).ids
            theirs = tokenizer(text, context if kind == "pair" else None, truncation=True,
                               max_length=max_length)["input_ids"]
        if list(ours) != list(theirs):
            raise S3Error("predict.py's tokenizer (tokenizer.json) does not reproduce the model's tokenisation on "
                          f"{text[:40]!r}; this tokenizer cannot be served without transformers; nothing was written")


def int8_agreement(fp32, int8, tokenizer, pairs, kind: str, max_length: int, names: list[str]) -> dict:
    """How often the int8 model's argmax (label; QA: start and end token) matches the fp32 model's on the probes."""
    import numpy as np

    feed = encode(tokenizer, pairs, kind, max_length, names)
    a, b = fp32.run(None, feed), int8.run(None, feed)
    same = np.ones(len(pairs), dtype=bool)
    for x, y in zip(a, b):
        mask = feed["attention_mask"].astype(bool) if kind == "qa" else None
        x = np.where(mask, x, -np.inf) if mask is not None else x
        y = np.where(mask, y, -np.inf) if mask is not None else y
        same &= x.argmax(-1) == y.argmax(-1)
    return {"probes": len(pairs), "same_prediction": int(same.sum()), "max_abs_diff": max_diff(a, b)}


# ------------------------------------------------------------------ the folder

def readme(info: dict) -> str:
    kind = info["kind"]
    what = {"single": "text classification", "pair": "text-pair classification", "qa": "extractive question answering"}
    files = info["files"]
    sizes = info["sizes_mb"]
    lines = [f"# {info['task']}: {what[kind]} (ONNX)", "",
             (f"Exported by s3synth {info['s3synth_version']} from `{info['source']}` (learner `{info['learner']}`, "
             f"base model `{info['base_model']}`) on {info['exported']}."), ""]
    if kind != "qa":
        lines += ["Labels (output index: name): " + ", ".join(f"{i}: {n}" for i, n in enumerate(info["labels"])), ""]
    lines += ["| file | what |", "| --- | --- |",
              f"| `{files['fp32']}` | fp32 graph ({sizes['fp32']} MB) |"]
    if "int8" in files:
        scales = "per-channel" if info.get("per_channel") else "per-tensor"
        lines.append(f"| `{files['int8']}` | int8 weights ({scales} scales), ONNX Runtime dynamic quantization "
                     f"({sizes['int8']} MB) |")
    outs = ("`start_logits`, `end_logits` [batch, sequence]" if kind == "qa" else "`logits` [batch, labels]")
    lines += ["| `tokenizer.json` | the tokenizer (Hugging Face `tokenizers`) |",
              "| `config.json` | the Hugging Face model config (`id2label`) |",
              f"| `{META_FILE}` | task kind, labels, max length, QA window settings, the export check |",
              "| `predict.py` | the example below |", "",
              "Inputs: " + ", ".join(f"`{n}`" for n in info["inputs"]) + " (int64, [batch, sequence], padded to the"
              f" longest input of the batch, at most {info['max_length']} tokens); outputs: {outs}.", "",
              "## Use it", "", "    pip install onnxruntime tokenizers numpy"]
    if kind == "single":
        lines.append('    python predict.py "some text to classify"')
    elif kind == "pair":
        lines.append('    python predict.py "the hypothesis or question" --context "the premise or sentence"')
    else:
        lines.append('    python predict.py "the question?" --context "the passage holding the answer"')
    lines += ["", ("One JSON line per text. `--model fp32` picks the fp32 graph (default: int8 when present); "
              "`--threads N` sets ONNX Runtime's threads. From Python, in this folder:"), "",
              "```python", "from predict import OnnxModel", "m = OnnxModel()"]
    lines.append('m.answer(["the question?"], ["the passage"])' if kind == "qa" else
                 ('m.classify(["the hypothesis"], ["the premise"])' if kind == "pair" else 'm.classify(["some text"])'))
    chk = info["check"]
    lines += ["```", "", "## Checked at export", "",
              (f"- fp32 outputs against PyTorch fp32 on {chk['fp32']['probes']} probe inputs (one padded batch and each "
              f"alone): largest difference {chk['fp32']['max_abs_diff']:.2e} (tolerance {chk['fp32']['tolerance']['abs']}"
              f" + {chk['fp32']['tolerance']['rel']} x |PyTorch's output|)."),
              "- `predict.py`'s tokenisation gives the model's token ids on every probe."]
    if "int8" in chk:
        c = chk["int8"]
        lines.append(f"- int8 against fp32: the same prediction on {c['same_prediction']} of {c['probes']} probes "
                     f"(largest output difference {c['max_abs_diff']:.3f}). Measure the int8 model's accuracy on your "
                     "own test data before serving it.")
    return "\n".join(lines) + "\n"


def export_onnx(source: str | Path, out: str | Path | None = None, quantize: str = "none", force: bool = False,
                per_channel: bool = True) -> dict:
    """Export the model of `source` (a run directory, a `train` output, or a saved learner folder) to ONNX;
    returns the written metadata (also in OUT/s3synth_onnx.json) with `out`."""
    if quantize not in QUANTIZE:
        raise S3Error(f"--quantize {quantize!r}: must be one of {', '.join(QUANTIZE)}")
    model_dir, run_dir = resolve_source(source)
    meta = learner_meta(model_dir)
    out = Path(out) if out else default_out(Path(source), model_dir)
    check_out(out, force)
    require_packages()
    kind = meta["kind"]
    tokenizer, model = load_model(model_dir, kind)
    max_length = int(meta.get("max_length") or getattr(tokenizer, "model_max_length", 512))
    names = input_names(model, tokenizer)
    pairs = probe_pairs(kind, run_dir)
    labels = list(meta.get("labels") or [])
    if kind != "qa" and model.config.num_labels != len(labels):
        raise S3Error(f"{model_dir}: the model has {model.config.num_labels} outputs but {LEARNER_META} names "
                      f"{len(labels)} labels; re-run the command that saved the model")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        from ..io import write_error
        raise write_error(out, e, "cannot create the folder") from None
    try:
        export_graph(model, names, kind, encode(tokenizer, pairs[:2], kind, max_length, names), tmp / FILES["fp32"])
        fp32 = session(tmp / FILES["fp32"])
        check = {"fp32": check_parity(model, fp32, tokenizer, pairs, kind, max_length, names)}
        with contextlib.redirect_stdout(io.StringIO()):
            tokenizer.save_pretrained(str(tmp))
        if not (tmp / "tokenizer.json").exists():
            raise S3Error(f"the tokenizer of {model_dir} has no tokenizer.json form (a fast tokenizer); predict.py "
                          "needs one; nothing was written")
        model.config.to_json_file(str(tmp / "config.json"))
        files = {"fp32": FILES["fp32"]}
        if quantize == "int8":
            quantize_int8(tmp / FILES["fp32"], tmp / FILES["int8"], per_channel)
            files["int8"] = FILES["int8"]
            check["int8"] = int8_agreement(fp32, session(tmp / FILES["int8"]), tokenizer, pairs, kind, max_length, names)
        cfg = meta.get("config") or {}
        info = {"format": 1, "task": meta.get("task"), "kind": kind, "labels": labels, "max_length": max_length,
                "doc_stride": int(cfg.get("doc_stride", 128)), "max_answer_tokens": int(cfg.get("max_answer_tokens", 30)),
                "pad_token_id": int(tokenizer.pad_token_id or 0), "inputs": names,
                "outputs": ["start_logits", "end_logits"] if kind == "qa" else ["logits"], "files": files,
                "sizes_mb": {k: round(sum(f.stat().st_size for f in tmp.glob(v + "*")) / 1e6, 1)
                             for k, v in files.items()},
                "learner": meta.get("learner"), "base_model": meta.get("base_model"), "source": str(model_dir),
                "exported": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "s3synth_version": _version(),
                "per_channel": per_channel if quantize == "int8" else None, "check": check}
        (tmp / META_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        shutil.copyfile(Path(__file__).with_name("onnx_predict.py"), tmp / "predict.py")
        (tmp / "README.md").write_text(readme(info), encoding="utf-8")
        check_predict_py(tmp, tokenizer, pairs, kind, max_length)
        apply_file_mode(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**info, "out": str(out)}


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`; an earlier export there is removed only once the new one is in place."""
    old = None
    if os.path.lexists(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", suffix=".tmp", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    try:
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _umask() -> int:
    from ..io import current_umask
    return current_umask()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("s3synth")
    except metadata.PackageNotFoundError:
        return "unknown"
