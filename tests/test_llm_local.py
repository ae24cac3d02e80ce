"""Local backends: the numpy sampler, the batched llama.cpp engine (batched answers == one-at-a-time
answers for the same seeds), chat templates, the transformers backend on the embedded SmolLM2
turned into safetensors, and vLLM (skipped without vllm and a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from s3synth.errors import LLMError
from s3synth.llm import backend_class, make_llm
from s3synth.llm.base import GenParams, Request
from s3synth.llm.llama_batch import (SamplerSettings, common_prefix, find_stop, penalize, pick, render_chat, sample,
                                     top_candidates)

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class FixedRng:
    """Stands in for a numpy Generator: `random()` returns the given values in turn."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)


IDS = np.array([10, 11, 12, 13])
VALS = np.array([2.0, 1.0, 0.0, -1.0])   # softmax: .644 .237 .087 .032 (cumulative .644 .881 .968 1)


# ------------------------------------------------------------------------------------------ sampler
def test_top_p_keeps_the_smallest_set_reaching_p():
    s = SamplerSettings(temperature=1.0, top_p=0.95, min_p=0.0)
    assert pick(IDS, VALS, s, FixedRng(0.999)) == 12          # .968 >= .95: three tokens kept, u picks the last
    assert pick(IDS, VALS, SamplerSettings(temperature=1.0, top_p=0.85, min_p=0.0), FixedRng(0.999)) == 11
    assert pick(IDS, VALS, s, FixedRng(0.0)) == 10
    assert pick(IDS, VALS, s, FixedRng(0.70)) == 11           # u*sum(q)=1.052 > 1 (q of token 10)


def test_min_p_and_temperature():
    # min_p .2: token 12 (p .087 < .2 * .644) goes; u .999 then lands on token 11
    assert pick(IDS, VALS, SamplerSettings(temperature=1.0, top_p=1.0, min_p=0.2), FixedRng(0.999)) == 11
    # three tokens kept (top_p .95); q = exp((v - 2) / T): T=1 -> 1, .368, .135 (u*sum = 1.428 -> token 12)
    assert pick(IDS, VALS, SamplerSettings(temperature=1.0, top_p=0.95, min_p=0.0), FixedRng(0.95)) == 12
    # T=.5 sharpens: 1, .135, .018 (u*sum = 1.095 -> token 11)
    assert pick(IDS, VALS, SamplerSettings(temperature=0.5, top_p=0.95, min_p=0.0), FixedRng(0.95)) == 11
    assert pick(IDS, VALS, SamplerSettings(temperature=0.0), FixedRng()) == 10     # greedy draws nothing


def test_repeat_penalty_over_the_last_64_tokens():
    logits = np.zeros(20, dtype=np.float32)
    logits[5], logits[6], logits[7] = 2.0, 1.9, -1.0
    p = penalize(logits, [5, 7, 5], 1.3)
    assert p[5] == pytest.approx(2.0 / 1.3) and p[7] == pytest.approx(-1.3) and p[6] == pytest.approx(1.9)
    assert logits[5] == 2.0                                    # a copy
    greedy = SamplerSettings(temperature=0.0, repeat_penalty=1.3)
    assert sample(logits, [5], greedy, None) == 6              # 2.0 / 1.3 < 1.9
    assert sample(logits, [5] + [0] * 64, greedy, None) == 5   # token 5 is 65 tokens back: not penalised
    assert sample(logits, [5] + [0] * 63, greedy, None) == 6
    assert sample(logits, [5], SamplerSettings(temperature=0.0, repeat_penalty=1.3, exempt=(5,)), None) == 5


def test_top_k_and_seeded_draws():
    logits = np.array([0.1, 3.0, 0.1, 2.0, -4.0], dtype=np.float32)
    ids, vals = top_candidates(logits, 3)
    assert ids.tolist() == [1, 3, 0] and vals.tolist() == pytest.approx([3.0, 2.0, 0.1])   # tie: lower id first
    assert top_candidates(logits, 0)[0].tolist() == [1, 3, 0, 2, 4]
    s = SamplerSettings(temperature=1.5, top_p=1.0, min_p=0.0, top_k=2, repeat_penalty=1.0)
    draws = lambda seed: [sample(logits, [], s, r) for r in [np.random.default_rng(seed)] for _ in range(40)]  # noqa
    assert draws(7) == draws(7) and set(draws(7)) == {1, 3}    # top-k 2: never token 0
    assert draws(7) != draws(8)


def test_stop_strings_and_common_prefix():
    assert find_stop("abc\ndef", ["\n"]) == 3 and find_stop("abc", ["\n", ""]) == -1
    assert find_stop("a. b\n", ["\n", "."]) == 1
    assert common_prefix([3, 7, 9, 10], [3, 7, 12]) == 2 and common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([4], [3]) == 0


def test_chat_template_rendering():
    text = render_chat(CHATML, [("system", "Be brief."), ("user", "Hi")])
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(LLMError, match="chat template: no system"):
        render_chat("{{ raise_exception('no system') }}", [("user", "x")])


def test_registry_knows_the_local_backends():
    from s3synth.llm.transformers_backend import TransformersLLM
    from s3synth.llm.vllm_backend import VLLMBackend

    assert backend_class("transformers") is TransformersLLM and backend_class("vllm") is VLLMBackend
    assert isinstance(make_llm("transformers:/nowhere"), TransformersLLM)


def test_transformers_row_sampler_is_per_row():
    torch = pytest.importorskip("torch")
    from s3synth.llm.transformers_backend import RowSampler

    scores = torch.tensor([[0.0, 2.0, 1.9, -3.0], [0.0, 2.0, 1.9, -3.0]])
    ids = torch.tensor([[0, 0, 1, 2], [3, 3, 3, 3]])          # row 0: pad, pad, then tokens 1 and 2
    greedy = SamplerSettings(temperature=0.0, repeat_penalty=1.3)
    out = RowSampler([greedy, greedy], [1, 2], [2, 0])(ids, scores)
    assert out.argmax(-1).tolist() == [1, 1]                   # row 0 penalises 1 and 2 alike; row 1 only 3
    assert torch.isinf(out).sum().item() == 6                  # one-hot: every other score is -inf
    ids = torch.tensor([[0, 0, 1, 1], [3, 3, 3, 3]])
    assert RowSampler([greedy, greedy], [1, 2], [2, 0])(ids, scores).argmax(-1).tolist() == [2, 1]
    hot = SamplerSettings(temperature=5.0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)

    def draws(seeds):                 # 30 steps; one row per seed
        rs = RowSampler([hot] * len(seeds), seeds, [0] * len(seeds))
        return [rs(ids[:1].repeat(len(seeds), 1), scores[:1].repeat(len(seeds), 1)).argmax(-1).tolist()
                for _ in range(30)]

    both = draws([4, 4])
    assert all(a == b for a, b in both) and len({a for a, _ in both}) > 1
    mixed = draws([4, 5])
    assert [a for a, _ in mixed] == [a for a, _ in both]       # a row's draws do not depend on its neighbours
    assert [b for _, b in mixed] != [a for a, _ in mixed]


def test_vllm_backend_says_what_is_missing(monkeypatch):
    import importlib.util

    from s3synth.llm.vllm_backend import VLLMBackend

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(LLMError, match="pip install 's3synth\\[vllm\\]'"):
        VLLMBackend("some/model").generate([Request(prompt="hi")])


def test_vllm_generates_on_a_gpu(tmp_path):
    pytest.importorskip("vllm", reason="vllm is not installed (pip install 's3synth[vllm]')")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU and none is visible")
    import os

    model = os.environ.get("S3SYNTH_VLLM_MODEL")
    if not model:
        pytest.skip("set S3SYNTH_VLLM_MODEL to a local model folder to run the vLLM test")
    llm = make_llm(f"vllm:{model}", seed=1, max_model_len=2048)
    reqs = [Request(prompt="The capital of France is", params=GenParams(max_tokens=8), sample_index=i)
            for i in range(3)] + [Request(messages=(("user", "Say hi."),), params=GenParams(max_tokens=8))]
    a = llm.generate(reqs)
    assert all(c.error is None and c.completion_tokens <= 8 for c in a)
    b = llm.generate(reqs)
    assert [c.text for c in a] == [c.text for c in b]          # seeds per request


# ------------------------------------------------------------------------------ embedded (slow)
def rte_requests(shared_data, n: int, max_tokens: int = 12) -> list[Request]:
    """Few-shot RTE seed prompts (4 demonstrations + a query), as the pipeline sends them, sorted."""
    from s3synth.data import load_examples
    from s3synth.method.prompts import PromptBuilder
    from s3synth.tasks import load_task

    task = load_task("rte")
    b = PromptBuilder(task, style="fewshot")
    pool = load_examples(shared_data / "rte" / "train.jsonl", task)
    b.demos["seed"] = [b.fields("seed", text=d.text, context=d.context, label=d.label, shorten=30) for d in pool[:4]]
    reqs = []
    for i in range(n):
        r = b.build("seed", b.fields("seed", context=pool[4 + i // 2 * 2].context,   # premises come in pairs
                                     label=task.label_names[i % 2]), 10_000_000 + i)
        reqs.append(Request(prompt=r.prompt, params=GenParams(max_tokens=max_tokens, stop=("\n",)),
                            sample_index=r.sample_index))
    return sorted(reqs, key=lambda r: r.prompt)


@pytest.mark.slow
def test_embedded_batched_equals_single_stream(shared_data):
    pytest.importorskip("llama_cpp")
    from s3synth.llm.embedded import EmbeddedLLM

    reqs = rte_requests(shared_data, 10)
    reqs.append(Request(prompt=reqs[0].prompt, params=reqs[0].params, sample_index=99))   # same prompt again
    reqs.append(Request(messages=(("user", "Write one short sentence about rain."),),
                        params=GenParams(max_tokens=12)))
    answers, stats = {}, {}
    for npar in (1, 4):
        llm = EmbeddedLLM(n_parallel=npar, seed=3, n_threads=1)   # robust on a busy machine
        answers[npar] = llm.generate(reqs)
        stats[npar] = dict(llm._engine.stats)
        llm.close()
    one, four = answers[1], answers[4]
    assert [c.text for c in one] == [c.text for c in four]
    assert [c.completion_tokens for c in one] == [c.completion_tokens for c in four]
    assert all(c.error is None and "\n" not in c.text and c.completion_tokens <= 12 for c in four)
    assert sum(bool(c.text.strip()) for c in four) >= 10
    assert len({c.text for c in four}) >= 8                    # seeds differ per request
    # the shared demonstrations were evaluated once per slot at most, and reused everywhere else
    assert stats[4]["prompt_reused"] > 2 * stats[4]["prompt_evaluated"]
    assert stats[1]["decode_steps"] > stats[4]["decode_steps"]


@pytest.mark.slow
def test_embedded_logits_do_not_depend_on_chunks_streams_or_batch(shared_data):
    """What the engine's prefix reuse and batching rest on (Q8_0 weights): a token's logits are the same
    bits however its prompt was split into llama_decode calls, in whichever stream, beside whichever
    other sequence. (Measured: Q4_1 and F16 weights are not batch-invariant; see embedded.py.)"""
    pytest.importorskip("llama_cpp")
    from s3synth.llm.embedded import EmbeddedLLM

    reqs = rte_requests(shared_data, 2)
    eng = EmbeddedLLM(n_parallel=3, weights="q8_0", n_threads=1)._load()
    mine, other = eng.tokenize(reqs[0].prompt), eng.tokenize(reqs[1].prompt)

    def last_logits(chunk: int, seq: int = 0, beside: list[int] | None = None) -> np.ndarray:
        eng.L.llama_memory_clear(eng.mem, True)
        if beside is not None:
            for s in range(0, len(beside) - 1, 128):
                eng._decode([(beside[k], k, 1, False) for k in range(s, min(s + 128, len(beside) - 1))])
        n = len(mine) - 1
        for s in range(0, n, chunk):
            eng._decode([(mine[k], k, seq, False) for k in range(s, min(s + chunk, n))])
        last = [(mine[n], n, seq, True)]
        if beside is not None:          # decoded in one batch with the other sequence's last token
            last = [(beside[-1], len(beside) - 1, 1, True)] + last
        eng._decode(last)
        return eng._logits(len(last) - 1)

    ref = last_logits(7)
    assert np.array_equal(ref, last_logits(256))
    assert np.array_equal(ref, last_logits(64, seq=2))
    assert np.array_equal(ref, last_logits(31, beside=other))
    eng.close()


@pytest.mark.slow
def test_embedded_chat_template_and_limits():
    pytest.importorskip("llama_cpp")
    from s3synth.llm.embedded import EmbeddedLLM

    llm = EmbeddedLLM(n_ctx=256, n_parallel=2)
    eng = llm._load()
    text = eng.chat_prompt([("user", "Hi")])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")            # SmolLM2's template adds its system prompt
    toks = eng.tokenize("<|im_start|>user")
    assert len(toks) == 2 and eng.piece(toks[1]) == b"user"    # the special token is one token
    long = Request(prompt="word " * 400, params=GenParams(max_tokens=4))
    ok = Request(prompt="The sky is", params=GenParams(max_tokens=3, temperature=0.0))
    a, b = llm.generate([long, ok])
    assert a.error and "does not fit the context of 256 tokens" in a.error
    assert b.error is None and b.completion_tokens == 3 and b.finish_reason == "length"
    assert llm.identity()["sampler"] == "s3synth-1"
    real = eng._decode

    def broken(items):
        raise LLMError("llama_decode failed with code -3")

    eng._decode = broken                                        # a failed decode mid-run
    with pytest.raises(LLMError, match="code -3"):
        llm.generate([Request(prompt="The sea is", params=GenParams(max_tokens=3, temperature=0.0))])
    eng._decode = real                                          # the engine starts afresh, answers again
    again = llm.generate([Request(prompt="The sky is", params=GenParams(max_tokens=3, temperature=0.0),
                                  sample_index=1)])
    assert again[0].error is None and again[0].completion_tokens == 3
    llm.close()


# --------------------------------------------------------------------------- transformers (slow)
@pytest.fixture(scope="module")
def smollm2_safetensors(tmp_path_factory):
    """The embedded SmolLM2 GGUF dequantised into a transformers folder with safetensors weights."""
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from s3synth.llm.embedded import embedded_model_path

    try:
        gguf_path = embedded_model_path()
    except LLMError as e:
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("smollm2-hf")
    cfg = load_gguf_checkpoint(str(gguf_path))["config"]
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if not k.startswith(("_", "model_type"))}))
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict(tensors, strict=False)                # lm_head is tied to the embeddings
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(out)
    assert any(out.glob("*.safetensors"))
    return out


@pytest.mark.slow
def test_transformers_backend_generates_with_seeds_and_stops(smollm2_safetensors, shared_data):
    reqs = rte_requests(shared_data, 2, max_tokens=10) + [
        Request(messages=(("user", "Name a colour."),), params=GenParams(max_tokens=10)),
        Request(prompt="1, 2, 3, 4,", params=GenParams(max_tokens=10, stop=(",",))),
    ]
    llm = make_llm(f"transformers:{smollm2_safetensors}", seed=5, n_parallel=4)
    a = llm.generate(reqs)
    assert all(c.error is None and 0 < c.completion_tokens <= 10 and c.prompt_tokens > 0 for c in a)
    assert a[2].prompt_tokens > len("Name a colour.".split()) + 5          # the chat template was applied
    assert all("\n" not in c.text for c in a[:2])
    assert "," not in a[3].text and (a[3].finish_reason == "stop" or a[3].completion_tokens == 10)
    again = llm.generate(reqs)                                  # same seeds, same batch: same answers
    assert [c.text for c in again] == [c.text for c in a]
    alone = make_llm(f"transformers:{smollm2_safetensors}", seed=5, n_parallel=1).generate(reqs)
    assert sum(x.text == y.text for x, y in zip(alone, a)) >= 3  # padding may move the last bits of a logit
    other = make_llm(f"transformers:{smollm2_safetensors}", seed=6, n_parallel=4).generate(reqs)
    assert [c.text for c in other] != [c.text for c in a]       # other seeds, other answers
    llm.close()


@pytest.mark.slow
def test_transformers_backend_refuses_non_local_or_missing_models(tmp_path):
    pytest.importorskip("transformers")
    from s3synth.errors import S3Error

    # a path that is no folder: one line naming it and the two ways out (a folder, or a Hub name)
    with pytest.raises(S3Error, match="folder .*nothing.* not found.*Hub name"):
        make_llm(f"transformers:{tmp_path / 'nothing'}").generate([Request(prompt="x")])
    # a folder without a loadable model: refused, naming the folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match="local safetensors"):
        make_llm(f"transformers:{tmp_path / 'empty'}").generate([Request(prompt="x")])



def test_embedded_weights_are_converted_once_and_named_in_the_identity(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from s3synth.llm.embedded import EmbeddedLLM, converted_model

    monkeypatch.setenv("S3SYNTH_MODEL_CACHE", str(tmp_path / "models"))
    llm = EmbeddedLLM()
    assert llm.weights == "q8_0" and llm.identity()["weights"] == "q8_0"
    assert "weights" not in EmbeddedLLM(weights="original").identity()
    assert EmbeddedLLM(weights="original").key(_probe()) != llm.key(_probe())   # other answers, other cache rows
    out = converted_model(llm.path, "q8_0", llm.identity()["file"])
    assert out.parent == tmp_path / "models" and out.name.endswith(".q8_0.gguf")
    with open(out, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert [p.name for p in out.parent.iterdir()] == [out.name]                   # no temporary left behind
    stamp = out.stat().st_mtime_ns
    assert converted_model(llm.path, "q8_0", llm.identity()["file"]) == out and out.stat().st_mtime_ns == stamp
    assert converted_model(llm.path, "original", llm.identity()["file"]) == llm.path
    with pytest.raises(LLMError, match="choose from q8_0, original"):
        EmbeddedLLM(weights="q2")
    monkeypatch.setenv("S3SYNTH_EMBEDDED_WEIGHTS", "original")
    assert EmbeddedLLM().weights == "original"


def _probe() -> Request:
    return Request(prompt="The sky is", params=GenParams(max_tokens=3))
