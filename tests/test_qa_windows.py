"""Hand-worked cases for the QA window logic (no model needed), plus a real-tokenizer round trip."""

import os


from s3synth.learners.qa_windows import (CLS_INDEX, answer_tokens, best_answer, best_window_span,
                                         context_offsets)

#            0         1         2
#            0123456789012345678901234567
CONTEXT = "aaa bbb ccc ddd eee fff"
# Two windows over CONTEXT with a one-token overlap ("ccc"); tokens 0-2 are [CLS] q [SEP], the last is [SEP].
W1 = [None, None, None, (0, 3), (4, 7), (8, 11), None]
W2 = [None, None, None, (8, 11), (12, 15), (16, 19), (20, 23), None]


def test_context_offsets_keeps_only_the_second_sequence():
    offs = [(0, 0), (0, 4), (0, 0), (0, 3), (4, 7), (0, 0)]
    ids = [None, 0, None, 1, 1, None]
    assert context_offsets(offs, ids) == [None, None, None, (0, 3), (4, 7), None]


def test_answer_in_first_window_only():
    # "bbb" = chars 4..7
    assert answer_tokens(W1, 4, 7) == (4, 4)
    assert answer_tokens(W2, 4, 7) == (CLS_INDEX, CLS_INDEX)


def test_answer_in_second_window_only():
    # "ddd eee" = chars 12..19: window 1 ends at char 11
    assert answer_tokens(W1, 12, 19) == (CLS_INDEX, CLS_INDEX)
    assert answer_tokens(W2, 12, 19) == (4, 5)


def test_answer_in_the_overlap_is_labelled_in_both_windows():
    # "ccc" = chars 8..11
    assert answer_tokens(W1, 8, 11) == (5, 5)
    assert answer_tokens(W2, 8, 11) == (3, 3)


def test_answer_spanning_the_window_boundary_points_at_cls_in_both():
    # "bbb ccc ddd" = chars 4..15: window 1 lacks "ddd", window 2 lacks "bbb"
    assert answer_tokens(W1, 4, 15) == (CLS_INDEX, CLS_INDEX)
    assert answer_tokens(W2, 4, 15) == (CLS_INDEX, CLS_INDEX)


def test_answer_ending_inside_a_subword_takes_the_whole_token():
    offs = [None, (0, 5), (5, 8), (9, 12)]   # "token" "ize" "abc"
    assert answer_tokens(offs, 0, 6) == (1, 2)
    assert answer_tokens(offs, 5, 8) == (2, 2)


def test_window_without_context_tokens():
    assert answer_tokens([None, None], 0, 3) == (CLS_INDEX, CLS_INDEX)
    assert best_window_span([1.0, 2.0], [1.0, 2.0], [None, None], 30) is None


def test_best_window_span_ignores_question_tokens_and_reversed_spans():
    # The question token 1 has the highest logits; end before start would score 10 + 9 = 19.
    offs = [None, None, (0, 3), (4, 7), (8, 11)]
    start = [0.0, 99.0, 1.0, 10.0, 0.0]
    end = [0.0, 99.0, 9.0, 2.0, 3.0]
    # valid: (2,2)=10 (2,3)=3 (2,4)=4 (3,3)=12 (3,4)=13 (4,4)=3 -> (3, 4)
    assert best_window_span(start, end, offs, 30) == (13.0, 3, 4)


def test_best_window_span_respects_max_answer_tokens():
    offs = [None, (0, 3), (4, 7), (8, 11)]
    start = [0.0, 5.0, 0.0, 0.0]
    end = [0.0, 0.0, 1.0, 6.0]
    assert best_window_span(start, end, offs, 3)[1:] == (1, 3)   # 3 tokens allowed: 5 + 6
    assert best_window_span(start, end, offs, 2)[1:] == (1, 2)   # (1,3) too long: (1,2), (2,3), (3,3) tie at 6, earliest kept


def test_best_span_across_two_windows_is_taken_from_the_second():
    s1 = [0, 0, 0, 2.0, 1.0, 0.0, 0]
    e1 = [0, 0, 0, 0.0, 2.0, 0.0, 0]           # best in window 1: "aaa bbb", 2 + 2 = 4
    s2 = [0, 0, 0, 0.0, 3.0, 0.0, 0.0, 0]
    e2 = [0, 0, 0, 0.0, 0.0, 2.5, 0.0, 0]      # best in window 2: "ddd eee", 3 + 2.5 = 5.5
    text, score = best_answer([(s1, e1, W1), (s2, e2, W2)], CONTEXT, 30)
    assert (text, score) == ("ddd eee", 5.5)
    # with a stronger first window, the first wins
    text, score = best_answer([([0, 0, 0, 9.0, 0, 0, 0], e1, W1), (s2, e2, W2)], CONTEXT, 30)
    assert (text, score) == ("aaa bbb", 11.0)


def test_equal_scores_keep_the_earlier_window():
    s = [0, 0, 0, 0, 0, 5.0, 0]
    e = [0, 0, 0, 0, 0, 5.0, 0]
    s2 = [0, 0, 0, 5.0, 0, 0, 0, 0]
    e2 = [0, 0, 0, 5.0, 0, 0, 0, 0]
    # both windows pick "ccc" (token 5 of W1, token 3 of W2) with score 10: the first is kept
    assert best_answer([(s, e, W1), (s2, e2, W2)], CONTEXT, 30) == ("ccc", 10.0)


def test_no_valid_span_gives_empty_answer():
    assert best_answer([([1.0, 2.0], [1.0, 2.0], [None, None])], CONTEXT, 30) == ("", None)
    assert best_answer([], CONTEXT, 30) == ("", None)


def test_real_tokenizer_windows_hold_the_answer_where_labelled():
    from transformers import AutoTokenizer

    from s3synth.learners import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    filler = "The weather was mild and the streets were quiet that day. "
    context = filler * 6 + "The treaty was signed in Vienna in 1815. " + filler * 6
    answer = "Vienna in 1815"
    a0 = context.index(answer)
    enc = tok("Where and when was the treaty signed?", context, truncation="only_second", max_length=48,
              stride=12, return_overflowing_tokens=True, return_offsets_mapping=True)
    assert len(enc["input_ids"]) >= 4
    found = []
    for w in range(len(enc["input_ids"])):
        offs = context_offsets(enc["offset_mapping"][w], enc.sequence_ids(w))
        s, e = answer_tokens(offs, a0, a0 + len(answer))
        if (s, e) == (CLS_INDEX, CLS_INDEX):
            ctx = [o for o in offs if o is not None]
            assert not (ctx[0][0] <= a0 and ctx[-1][1] >= a0 + len(answer))
            continue
        found.append(w)
        assert context[offs[s][0]:offs[e][1]] == answer
        assert tok.decode(enc["input_ids"][w][s:e + 1]) == answer.lower()
        # and the span search maps logits peaked on it back to the same text
        start = [0.0] * len(offs)
        end = [0.0] * len(offs)
        start[s], end[e] = 5.0, 5.0
        assert best_answer([(start, end, offs)], context, 30) == (answer, 10.0)
    assert found, "no window holds the answer"
    assert len(found) < len(enc["input_ids"])
