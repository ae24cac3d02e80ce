"""Extractive-QA window logic, free of torch: answer labels per window and best span across windows.

A long context is split into overlapping windows (the tokenizer's `return_overflowing_tokens`). Each
window is described by `offsets`: one entry per token, the token's (start, end) character span in the
context, or None for tokens outside the context (question, special tokens, padding).

Nothing here depends on the tokenizer family (WordPiece, byte-level BPE, SentencePiece): only the
offsets and sequence ids of a fast tokenizer are read, and "no answer" points at a window's first
special token wherever it is.

Not handled: multiple gold answers per question (our data holds one); unanswerable questions
(SQuAD 2.0 style "no answer" scoring) - a question always gets the best valid span, or "" when no
window has one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Offsets = Sequence["tuple[int, int] | None"]

CLS_INDEX = 0    # where "no answer in this window" points when the window's special tokens are not known


def null_index(sequence_ids: Sequence[int | None]) -> int:
    """The position a window's "no answer" label points at: its first special token (None sequence id),
    which is the classifier token of BERT, RoBERTa, DeBERTa, ELECTRA and ModernBERT inputs alike; CLS_INDEX
    when the window has none.

    Example: null_index([None, 0, 0, None, 1, 1, None]) -> 0; null_index([0, 0, None, 1, None]) -> 2
    """
    return next((i for i, s in enumerate(sequence_ids) if s is None), CLS_INDEX)


def context_offsets(offset_mapping: Sequence[Sequence[int]], sequence_ids: Sequence[int | None],
                    context_id: int = 1) -> list[tuple[int, int] | None]:
    """Keep the char spans of the context tokens only (sequence id `context_id`); None elsewhere.

    Example: offsets [(0,0),(0,4),(0,0),(0,3),(4,7),(0,0)], ids [None,0,None,1,1,None]
    -> [None, None, None, (0,3), (4,7), None]
    """
    return [(int(o[0]), int(o[1])) if s == context_id else None for o, s in zip(offset_mapping, sequence_ids)]


def answer_tokens(offsets: Offsets, start_char: int, end_char: int, null: int = CLS_INDEX) -> tuple[int, int]:
    """Token (start, end) of the answer chars [start_char, end_char) in one window, both inclusive.

    Returns (null, null) when the window does not hold the whole answer (`null`: see `null_index`).
    Example: offsets [None, (0,3), (4,7), (8,11)], answer chars 4..11 -> (2, 3).
    """
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx or end_char <= start_char:
        return null, null
    first, last = ctx[0], ctx[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return null, null
    # start: the last context token that begins at or before the answer's first char
    start = first
    for i in ctx:
        if offsets[i][0] <= start_char:
            start = i
        else:
            break
    # end: the first context token (at or after start) that ends at or after the answer's last char
    end = last
    for i in ctx:
        if i >= start and offsets[i][1] >= end_char:
            end = i
            break
    return start, end


def best_window_span(start_logits: Sequence[float], end_logits: Sequence[float], offsets: Offsets,
                     max_answer_tokens: int) -> tuple[float, int, int] | None:
    """The best valid span of one window as (score, start_token, end_token), or None when none is valid.

    Valid: start and end are context tokens, end >= start, end - start + 1 <= max_answer_tokens.
    Score = start_logit + end_logit; ties go to the earliest (start, end).
    """
    n = min(len(offsets), len(start_logits), len(end_logits))
    if n == 0 or max_answer_tokens < 1:
        return None
    valid = np.array([o is not None for o in offsets[:n]], dtype=bool)
    if not valid.any():
        return None
    s = np.asarray(start_logits[:n], dtype=np.float64)
    e = np.asarray(end_logits[:n], dtype=np.float64)
    scores = s[:, None] + e[None, :]
    i, j = np.indices((n, n))
    ok = valid[:, None] & valid[None, :] & (j >= i) & (j - i < max_answer_tokens)
    scores = np.where(ok, scores, -np.inf)
    flat = int(np.argmax(scores))  # first maximum in row-major order = earliest start, then end
    best = scores.flat[flat]
    if not np.isfinite(best):
        return None
    return float(best), flat // n, flat % n


def best_answer(windows: Sequence[tuple[Sequence[float], Sequence[float], Offsets]], context: str,
                max_answer_tokens: int) -> tuple[str, float | None]:
    """The best span over all windows of one question: (answer text, score); ("", None) when none.

    `windows` holds (start_logits, end_logits, offsets) per window; a later window wins only with a
    strictly higher score. The text is the context substring from the start token's first char to the
    end token's last char.
    """
    best: tuple[float, int, int, int] | None = None
    for w, (s, e, offsets) in enumerate(windows):
        found = best_window_span(s, e, offsets, max_answer_tokens)
        if found is not None and (best is None or found[0] > best[0]):
            best = (found[0], w, found[1], found[2])
    if best is None:
        return "", None
    score, w, i, j = best
    offsets = windows[w][2]
    # strip: SentencePiece-style tokens ("▁word") may carry the space before the word in their offsets
    return context[offsets[i][0]:offsets[j][1]].strip(), score
