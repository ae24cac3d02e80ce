"""Prompt building for both styles, and the cleaning of LLM answers."""

import pytest

from s3synth.method.prompts import PromptBuilder, answer_window, clean_answer, numbered, parse_rationales
from s3synth.tasks import load_task

RTE = load_task("rte")


def test_paper_style_is_one_chat_message_with_the_papers_template():
    b = PromptBuilder(RTE, style="paper")
    req = b.build("seed", b.fields("seed", context="Dogs bark.", label="not_entailment"), 7)
    assert req.messages == (("user", "Dogs bark. \nBased on the above description, the following sentence is "
                                     "definitely wrong:"),)
    assert req.sample_index == 7 and req.params.stop == ()


def test_fewshot_completion_puts_demos_before_the_open_query():
    b = PromptBuilder(RTE, style="fewshot")
    b.demos["seed"] = [b.fields("seed", text="H1.", context="P1.", label="entailment")]
    req = b.build("seed", b.fields("seed", context="P2.", label="not_entailment"), 0)
    assert req.prompt == ("Description: P1.\nA sentence that is definitely correct based on the description: H1."
                          "\n\nDescription: P2.\nA sentence that is definitely wrong based on the description:")
    assert req.params.stop == ("\n",) and req.params.max_tokens == 48


def test_chat_form_fewshot_and_shortening():
    imdb = load_task("imdb")
    b = PromptBuilder(imdb, style="fewshot")
    f = b.fields("extrapolate", text="w " * 200, label="positive", shorten=5)
    req = b.build("extrapolate", f, 0)
    assert req.messages[0][0] == "system"
    assert req.messages[1] == ("user", "Write a positive movie review similar to: \n w w w w w ...")


def test_qa_sentence_window():
    ctx = "First one here. The answer is Oslo today. Third sentence. Fourth one."
    start = ctx.index("Oslo")
    assert answer_window(ctx, start, 4, neighbours=0) == "The answer is Oslo today."
    assert answer_window(ctx, start, 4, neighbours=1) == "First one here. The answer is Oslo today. Third sentence."


@pytest.mark.parametrize("raw, kw, expected", [
    (' "The cat sleeps on the mat."\nAnd more chatter', {}, ("The cat sleeps on the mat.", None)),
    ("Hypothesis: The cat is asleep.", {}, ("The cat is asleep.", None)),
    ("Sure! Here is a sentence:\n\"A dog barks loudly.\"", {}, ("A dog barks loudly.", None)),
    ("A sentence that is definitely correct based on the description: Dogs bark at night.", {},
     ("Dogs bark at night.", None)),
    ("That's a great movie review. Here's my take on it: I loved the film.", {}, ("I loved the film.", None)),
    ("   ", {}, (None, "empty")),
    ("Yes.", {}, (None, "too_short")),
    ("The premise is copied here exactly.", {"context": "The premise is copied here exactly."},
     (None, "copy_of_context")),
    ("Same as shown text", {"shown": "same as shown text!"}, (None, "copy_of_source")),
    ("Question: When did it open? It opened in 1932.", {"kind": "question"}, ("When did it open?", None)),
])
def test_clean_answer(raw, kw, expected):
    args = {"kind": "text", "min_words": 3, **kw}
    assert clean_answer(raw, **args) == expected


def test_clean_review_keeps_paragraphs_and_drops_notes():
    raw = "A lovely film with great acting.\nThe music is superb too.\nNote: this review is fictional."
    assert clean_answer(raw, kind="text", min_words=3, single_line=False) == (
        "A lovely film with great acting. The music is superb too.", None)


def test_parse_rationales():
    raw = " the acting is superb\n4. a moving story.\n5) **great music**\n- no\nnot a list line"
    assert parse_rationales(raw, first_is_item=True) == ["the acting is superb", "a moving story", "great music"]
    assert numbered(["a", "b"], open_next=True) == "1. a\n2. b\n3."
