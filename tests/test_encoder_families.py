"""Any encoder family: sequence classification (a pair task, rte) and extractive QA train, predict, save
and load back with BERT-, ELECTRA-, RoBERTa-, DeBERTa-v3- and ModernBERT-style models.

Every model is built here from a config (random weights, 2 layers, hidden 32) and saved as a model
folder, as a Hub checkpoint would be; tokenizers are built here with the `tokenizers` library from a
tiny corpus in each family's own style (WordPiece, byte-level BPE with RoBERTa's <s>/<pad>/</s> ids,
a SentencePiece `spm.model` as DeBERTa-v3 ships it - trained here with `sentencepiece`, or a Unigram
with a metaspace built with `tokenizers` where that package is missing -, byte-level BPE with its
special tokens at the end of the vocabulary as ModernBERT has them), or taken from the packaged
MiniLM (BERT). Nothing is downloaded.
What would break on a family: token_type_ids sent to a model that does not take them, padding with
another id than the tokenizer's, "no answer" labels pointing at a non-special token, offsets of
non-WordPiece tokens.
"""

from __future__ import annotations

import os


from pathlib import Path

import pytest

from s3synth.data import Example
from s3synth.learners import TrainConfig, load_learner, make_learner, minilm_path
from s3synth.learners.qa_windows import null_index
from s3synth.metrics import evaluate
from s3synth.tasks import load_task
from test_learners import HYPS, PREMISES

pytestmark = pytest.mark.usefixtures("quiet_single_thread")   # conftest.py

FAMILIES = ("bert", "electra", "roberta", "deberta-v3", "modernbert")
CFG = {"epochs": 1, "lr": 1e-3, "batch_size": 4, "eval_batch_size": 8, "max_length": 48, "doc_stride": 12,
       "patience": 1, "precision": "fp32"}

QA_FACTS = [("The bridge was opened in 1932 by the mayor of the town.", "When was the bridge opened?", "1932"),
            ("Marie Curie was born in Warsaw and later moved to Paris.", "Where was Marie Curie born?", "Warsaw"),
            ("The festival takes place every August in a small harbour town.", "When is the festival?",
             "every August"),
            ("The novel was written by a retired teacher named Paul Weber.", "Who wrote the novel?", "Paul Weber"),
            ("Copper is mined in the hills east of the capital.", "What is mined in the hills?", "Copper"),
            ("The ship carried three hundred passengers on its first voyage.", "How many passengers were there?",
             "three hundred")]
FILLER = " Nothing else of note happened there that year."
CORPUS = ([p for p in PREMISES] + [h for pair in HYPS for h in pair] + [f + FILLER for f, _, _ in QA_FACTS]
          + [q for _, q, _ in QA_FACTS]) * 2


def pairs() -> list[Example]:
    out = []
    for i, (premise, (yes, no)) in enumerate(zip(PREMISES, HYPS)):
        out.append(Example(yes, "entailment", context=premise, id=f"e{i}"))
        out.append(Example(no, "not_entailment", context=premise, id=f"c{i}"))
    return out


def qa_examples() -> list[Example]:
    out = []
    for i, (fact, q, a) in enumerate(QA_FACTS):
        ctx = FILLER.strip() + FILLER + " " + fact + FILLER * 3     # the answer sits in a middle window
        out.append(Example(q, context=ctx, answer={"text": a, "start": ctx.index(a)}, id=f"q{i}"))
    return out


# ---------------------------------------------------------------- tokenizers, built like each family's

def _wrap(tok, folder: Path, *, input_names, **specials):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=128, model_input_names=input_names,
                                   **specials)
    fast.save_pretrained(folder)
    return fast


def wordpiece_tokenizer(folder: Path):
    """ELECTRA-style: WordPiece, lower-cased, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, token types."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials,
                                                              show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    return _wrap(tok, folder, input_names=["input_ids", "token_type_ids", "attention_mask"], pad_token="[PAD]",
                 unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def byte_bpe_tokenizer(folder: Path, style: str):
    """Byte-level BPE. roberta: <s>=0 <pad>=1 </s>=2 (pad is not 0), pairs as <s> A </s></s> B </s>.
    modernbert: [CLS]/[SEP]/[PAD] at the end of the vocabulary (no special id is 0 or 1)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    first = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if style == "roberta" else []
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=first, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    names = ["input_ids", "attention_mask"]          # neither family has token types
    if style == "roberta":
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                          add_prefix_space=False)
        return _wrap(tok, folder, input_names=names, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                     sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return _wrap(tok, folder, input_names=names, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                 unk_token="[UNK]", mask_token="[MASK]")


def sentencepiece_tokenizer(folder: Path):
    """DeBERTa-v3 as microsoft/deberta-v3-* ship it: a SentencePiece unigram `spm.model` and a tokenizer_config
    naming DebertaV2Tokenizer, no tokenizer.json (transformers converts the model; needs `sentencepiece`)."""
    import io
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=200, model_type="unigram", pad_id=0, bos_id=1,
        eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"], hard_vocab_limit=False, minloglevel=2)
    (folder / "spm.model").write_bytes(buf.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer",
                                                              "do_lower_case": False, "model_max_length": 128}))
    return AutoTokenizer.from_pretrained(folder)


def unigram_tokenizer(folder: Path):
    """DeBERTa-v3-style SentencePiece built with `tokenizers` (where the `sentencepiece` package is missing):
    Unigram over metaspace pieces ("▁word"), [PAD]=0 [CLS]=1 [SEP]=2."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                            unk_token="[UNK]", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return _wrap(tok, folder, input_names=["input_ids", "token_type_ids", "attention_mask"], pad_token="[PAD]",
                 cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")


def build_encoder(family: str, folder: Path) -> Path:
    """A model folder (config.json, model.safetensors, tokenizer) of a tiny random `family` encoder."""
    import torch
    import transformers as tf

    folder.mkdir(parents=True)
    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if family == "bert":
        tok = tf.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
        tok.save_pretrained(folder)
        cfg = tf.BertConfig(vocab_size=len(tok), max_position_embeddings=128, **small)
    elif family == "electra":
        tok = wordpiece_tokenizer(folder)
        cfg = tf.ElectraConfig(vocab_size=len(tok), embedding_size=16, max_position_embeddings=128,
                               pad_token_id=tok.pad_token_id, **small)
    elif family == "roberta":
        tok = byte_bpe_tokenizer(folder, "roberta")
        cfg = tf.RobertaConfig(vocab_size=len(tok), max_position_embeddings=130, pad_token_id=1, bos_token_id=0,
                               eos_token_id=2, type_vocab_size=1, **small)
    elif family == "deberta-v3":
        try:
            tok = sentencepiece_tokenizer(folder)
        except ImportError:
            tok = unigram_tokenizer(folder)
        cfg = tf.DebertaV2Config(vocab_size=len(tok), max_position_embeddings=128, relative_attention=True,
                                 position_buckets=16, pos_att_type=["p2c", "c2p"], type_vocab_size=0,
                                 position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
                                 pad_token_id=0, **small)
    elif family == "modernbert":
        tok = byte_bpe_tokenizer(folder, "modernbert")
        cfg = tf.ModernBertConfig(vocab_size=len(tok), max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                  cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                                  bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                  global_attn_every_n_layers=2, local_attention=16, **small)
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    tf.AutoModelForMaskedLM.from_config(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {f: build_encoder(f, root / f) for f in FAMILIES}


def _saved_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("family", FAMILIES)
def test_pair_classification_round_trip(family, encoders, tmp_path):
    rte = load_task("rte")
    data = pairs()
    learner = make_learner(f"hf:{encoders[family]}", rte, TrainConfig(**CFG))
    tok = learner.tokenizer
    feats = learner._encode_cls(data[:2])
    batch = learner._collate(feats)
    # padding is the tokenizer's own pad id; token types only where tokenizer and model have them
    assert learner.pad_id == tok.pad_token_id
    short = min(range(2), key=lambda i: len(feats[i]["input_ids"]))
    if len(feats[0]["input_ids"]) != len(feats[1]["input_ids"]):
        assert batch["input_ids"][short, -1].item() == tok.pad_token_id
    assert ("token_type_ids" in batch) == (family in ("bert", "electra", "deberta-v3"))
    history = learner.fit(data, data[:4])
    assert history["epochs"][0]["train_loss"] > 0
    preds = learner.predict(data)
    assert len(preds) == len(data)
    for p in preds:
        assert p.label in rte.label_names and abs(sum(p.probs.values()) - 1) < 1e-5
    learner.save(tmp_path / "model")
    files = _saved_files(tmp_path / "model")
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    again = load_learner(tmp_path / "model", rte)
    for a, b in zip(preds, again.predict(data)):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-5)
    assert evaluate(rte, data, again.predict(data)) == evaluate(rte, data, preds)


@pytest.mark.parametrize("family", FAMILIES)
def test_extractive_qa_round_trip(family, encoders, tmp_path):
    aqa = load_task("adversarial_qa")
    data = qa_examples()
    learner = make_learner(f"hf:{encoders[family]}", aqa, TrainConfig(**CFG))
    tok = learner.tokenizer
    feats = learner._encode_qa(data, training=True)
    assert len(feats) > len(data)                       # long contexts: several windows per question
    held = 0
    for f in feats:
        ex = data[f["example"]]
        s, e = f["start_positions"], f["end_positions"]
        ids = f["input_ids"]
        if f["offsets"][s] is None:
            # no answer in this window: both point at the window's first special token (the classifier token)
            assert s == e == null_index([None if o is None else 1 for o in f["offsets"]]) == 0
            assert ids[s] == tok.cls_token_id
        else:
            held += 1
            assert ex.context[f["offsets"][s][0]:f["offsets"][e][1]].strip() == ex.answer["text"]
    assert held >= len(data)                              # every answer is labelled in some window
    learner.fit(data, data[:3])
    preds = learner.predict(data)
    for ex, p in zip(data, preds):
        assert p.answer == "" or p.answer in ex.context
    learner.save(tmp_path / "model")
    files = _saved_files(tmp_path / "model")
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    again = load_learner(tmp_path / "model", aqa)
    for a, b in zip(preds, again.predict(data)):
        assert a.answer == b.answer and a.score == pytest.approx(b.score, abs=1e-4)


def test_no_answer_index_pad_fallback_and_position_limit(tmp_path):
    import json
    from types import SimpleNamespace

    from s3synth.learners.hf import HFLearner, position_limit
    from s3synth.learners.qa_windows import answer_tokens

    assert null_index([None, 0, 0, None, 1, None]) == 0
    assert null_index([0, 0, None, 1, 1, None]) == 2           # a family whose classifier token is not first
    assert null_index([0, 1, 1]) == 0
    assert answer_tokens([(0, 3), (4, 7), None, None], 20, 25, null=2) == (2, 2)
    lrn = HFLearner.__new__(HFLearner)
    lrn.tokenizer = SimpleNamespace(pad_token_id=None, eos_token_id=None, sep_token_id=7, unk_token_id=3)
    assert lrn.pad_id == 7                                      # no pad token: a real id, masked out anyway
    lrn.tokenizer = SimpleNamespace(pad_token_id=1, eos_token_id=2, sep_token_id=2, unk_token_id=3)
    assert lrn.pad_id == 1
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta", "max_position_embeddings": 514}))
    assert position_limit(tmp_path) == 512
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "modernbert", "max_position_embeddings": 8192}))
    assert position_limit(tmp_path) == 8192
    assert position_limit(tmp_path / "nowhere") is None


def test_max_length_is_capped_at_the_model_positions(encoders):
    # the tiny RoBERTa has 130 positions (128 usable) and a tokenizer saying 128; asking for 512 gives 128
    lrn = make_learner(f"hf:{encoders['roberta']}", load_task("rte"), TrainConfig(max_length=512))
    assert lrn.max_length == 128
