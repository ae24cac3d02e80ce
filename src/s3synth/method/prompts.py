"""Prompt building (the paper's templates or few-shot forms) and the cleaning of LLM answers.

Not handled: prompts longer than the model's context window are not shortened here; the embedded
backend reports them as failed requests (counted as rejects).
"""

from __future__ import annotations

import difflib
import json
import random
import re
from dataclasses import dataclass, field, replace
from typing import Sequence

from ..analysis import normalize_words
from ..llm.base import GenParams, Request
from ..tasks import StagePrompts, Task

STYLES = ("paper", "fewshot")


def cut_words(text: str, n: int | None) -> str:
    """Example: cut_words("a b c d", 2) -> "a b ..." (newlines become spaces)."""
    words = text.split()
    if n is None or len(words) <= n:
        return " ".join(words)
    return " ".join(words[:n]) + " ..."


_SENT_END = re.compile(r"(?<=[.!?])\s+")


def answer_window(context: str, start: int, length: int, neighbours: int = 1) -> str:
    """The sentence holding the answer plus `neighbours` sentences on each side.

    Example: ("A x. B y. C z. D w.", start of "C", 1) -> "B y. C z. D w."
    """
    spans, pos = [], 0
    for m in _SENT_END.finditer(context):
        spans.append((pos, m.start()))
        pos = m.end()
    spans.append((pos, len(context)))
    hit = [i for i, (a, b) in enumerate(spans) if a <= start + max(length - 1, 0) and b >= start]
    if not hit:
        return context
    lo, hi = max(min(hit) - neighbours, 0), min(max(hit) + neighbours, len(spans) - 1)
    return context[spans[lo][0]:spans[hi][1]]


def numbered(items: Sequence[str], open_next: bool = False) -> str:
    """Example: numbered(["a", "b"], open_next=True) -> "1. a\\n2. b\\n3." """
    lines = [f"{i}. {s}" for i, s in enumerate(items, start=1)]
    if open_next:
        lines.append(f"{len(items) + 1}.")
    return "\n".join(lines)


class _Blank(dict):
    def __missing__(self, key):
        return ""


@dataclass
class PromptBuilder:
    """Turns a stage's template and an example's fields into a `Request`.

    `demos[stage]` holds the demonstrations of few-shot completion prompts, fixed for the run.
    """

    task: Task
    style: str = "fewshot"
    temperature: float = 0.8
    top_p: float = 0.95
    demos: dict = field(default_factory=dict)   # stage -> list of field dicts

    def __post_init__(self):
        if self.style not in STYLES:
            raise ValueError(f"prompt style must be one of {STYLES}, not {self.style!r}")

    def stage_style(self, stage: str) -> str:
        sp = self.task.stage(stage)
        if sp is None:
            raise KeyError(stage)
        if self.style == "fewshot" and sp.fewshot is None:
            return "paper"
        if self.style == "paper" and sp.paper is None:
            return "fewshot"
        return self.style

    def describe(self, stage: str, demos: int | None = None) -> str:
        """What `stage`'s requests are, for status lines: the style actually sent, and for few-shot completion
        prompts how many demonstrations they show (`demos`, default: the task's hand-written ones).

        Example: "paper prompts"; "fewshot prompts: chat"; "fewshot prompts: completion with 4 demonstrations"
        """
        if stage == "zerogen":
            return "zerogen completion prompts"
        if self.stage_style(stage) == "paper":
            return "paper prompts"
        fs = self.task.stage(stage).fewshot
        if fs.is_chat:
            return "fewshot prompts: chat"
        if stage == "rationale":
            return "fewshot prompts: list completion"
        n = len(fs.demos) if demos is None else demos
        return f"fewshot prompts: completion with {n} demonstration{'' if n == 1 else 's'}"

    def fallback(self, stage: str) -> str | None:
        """One line when `stage` is not sent in the asked style because the task has no prompt of that style
        for it (None when it is sent as asked).

        Example (a task with paper prompts only, style fewshot): "stage seed: task t has no fewshot prompt for
        it (prompts.seed.fewshot), so it sends its paper prompt: one chat message, no demonstrations"
        """
        used = self.stage_style(stage)
        if stage == "zerogen" or used == self.style:
            return None
        what = ("one chat message, no demonstrations" if used == "paper"
                else "the few-shot form instead of the paper's template")
        return (f"stage {stage}: task {self.task.name} has no {self.style} prompt for it "
                f"(prompts.{stage}.{self.style}), so it sends its {used} prompt: {what}")

    def example_fields(self, stage: str, ex, rationales: dict | None, seed: int) -> dict:
        """The fields of a real example shown as a seed demonstration: its text (cut to the stage's
        `demo_max_words`), context, answer and label, with up to `rationale_k` of its label's rationales drawn
        by (seed, example id)."""
        sp = self.task.stage(stage)
        rs = []
        if rationales and rationales.get(ex.label):
            rs = random.Random(f"{seed}:demo:{ex.id}").sample(
                rationales[ex.label], min(self.task.rationale_k, len(rationales[ex.label])))
        return self.fields(stage, text=ex.text, context=ex.context or "", answer=ex.answer, label=ex.label,
                           rationales=rs, shorten=sp.fewshot.demo_max_words if sp.fewshot else None)

    def handwritten_fields(self, stage: str, d: dict) -> dict:
        """The fields of a demonstration written in the task file (`fewshot.demos`); an answer's position is
        found in its context.

        Example: {"context": "A b c.", "answer": "b", "text": "Q?", "new_text": "R?"}
                 -> answer {"text": "b", "start": 2}
        """
        ctx = d.get("context", "")
        ans = {"text": d["answer"], "start": max(ctx.find(d["answer"]), 0)} if d.get("answer") else None
        return self.fields(stage, text=d.get("text", ""), context=ctx, answer=ans, label=d.get("label"),
                           new_text=d.get("new_text", ""))

    def fields(self, stage: str, *, text="", context="", answer=None, label=None, rationales=(), n=None,
               new_text="", shorten: int | None = None) -> dict:
        sp = self.task.stage(stage)
        if answer is not None and context and sp.context_window == "sentence":
            context = answer_window(context, answer["start"], len(answer["text"]))
        word = self.task.label(label).word if label is not None else ""
        return _Blank(
            text=cut_words(text, shorten) if shorten else text, context=context,
            answer=answer["text"] if answer else "", label=label or "", label_word=word,
            rationales=rationales if isinstance(rationales, str) else "; ".join(rationales),
            n=n if n is not None else "", new_text=new_text,
        )

    def params(self, sp: StagePrompts, chat: bool) -> GenParams:
        return GenParams(max_tokens=sp.max_tokens, temperature=self.temperature, top_p=self.top_p,
                         stop=() if chat else tuple(sp.stop))

    def build(self, stage: str, fields: dict, sample_index: int) -> Request:
        sp = self.task.stage(stage)
        if stage == "zerogen":   # ZeroGen's prompts are plain completions that open a quote
            return Request(prompt=sp.paper.format_map(fields), params=self.params(sp, False),
                           sample_index=sample_index)
        style = self.stage_style(stage)
        if style == "paper":
            return Request(messages=(("user", sp.paper.format_map(fields)),), params=self.params(sp, True),
                           sample_index=sample_index)
        fs = sp.fewshot
        if fs.is_chat:
            msgs = ((("system", fs.system.format_map(fields)),) if fs.system else ()) + \
                   (("user", fs.user.format_map(fields)),)
            return Request(messages=msgs, params=self.params(sp, True), sample_index=sample_index)
        parts = [fs.demo.format_map(d) for d in self.demos.get(stage, [])]
        parts.append(fs.query.format_map(fields))
        return Request(prompt=fs.separator.join(parts), params=self.params(sp, False), sample_index=sample_index)


    # ---------------------------------------------------------------- several examples per request
    def completes(self, stage: str) -> bool:
        """True when the stage's prompts are plain completions (ZeroGen, few-shot completion forms)."""
        if stage == "zerogen":
            return True
        return self.stage_style(stage) == "fewshot" and not self.task.stage(stage).fewshot.is_chat

    def build_list(self, stage: str, targets: Sequence[dict], sample_index: int, *, schema: bool = False) -> Request:
        """One request for len(targets) examples (`--per-call`, `--per-context`): `targets` are the field
        dicts of each example, sharing everything but the label word or answer.

        Chat prompts (the paper's templates, few-shot chat forms) are the one-example prompt of the first
        target plus an instruction to answer with a numbered list (or, with `schema`, JSON under
        `list_schema()`); for targets that differ (one per label), the instruction names the label word
        or answer of each in turn, so the context is shown once. Completion prompts (ZeroGen, few-shot
        completions) end with an open "1." to continue as a list, after demonstrations grouped into
        lists by label (single-text tasks); they take targets of one label only.
        Example (imdb, paper, 3 targets): "Now imagine ... write a negative review about this movie.\n\n
        Write 3 different ones, ... as a numbered list (1. to 3.), one per line, and nothing else."
        """
        sp = self.task.stage(stage)
        n = len(targets)
        first = targets[0]
        per_target = [t for t in ("label_word", "answer") if len({str(x.get(t, "")) for x in targets}) > 1]
        if self.completes(stage):
            if per_target:
                raise ValueError("completion prompts take targets of one label; send one request per target")
            base = self.build(stage, first, sample_index)
            head = base.prompt.rstrip().rstrip("\"“'").rstrip()
            if stage != "zerogen" and self.demos.get(stage) and self.task.kind == "single":
                head = self._list_demos(stage, first)
            params = replace(base.params, max_tokens=sp.max_tokens * n, stop=("\n\n",))
            return Request(prompt=head + "\n1.", params=params, sample_index=sample_index)
        base = self.build(stage, first, sample_index)
        role, text = base.messages[-1]
        fmt = (f"as JSON: {{\"{LIST_KEY}\": [...]}} with {n} strings, and nothing else" if schema else
               f"as a numbered list (1. to {n}.), one per line, and nothing else")
        if per_target:
            what = "answer" if "answer" in per_target else "label_word"
            shown = first.get(what, "")
            text += (f"\n\nDo this {n} times, once for each of the following in place of \"{shown}\", in this "
                     f"order, and answer {fmt}:\n" + numbered([str(t.get(what, "")) for t in targets]))
        else:
            text += f"\n\nWrite {n} different ones, each unlike the others, and answer {fmt}."
        params = replace(base.params, max_tokens=sp.max_tokens * n,
                         response_schema=list_schema() if schema else None)
        return Request(messages=base.messages[:-1] + ((role, text),), params=params, sample_index=sample_index)

    def _list_demos(self, stage: str, query_fields: dict) -> str:
        """A few-shot completion prompt whose demonstrations of one label are shown as one numbered list,
        ending with the query (its open "1." is added by the caller)."""
        fs = self.task.stage(stage).fewshot
        by_label: dict = {}
        for d in self.demos.get(stage, []):
            by_label.setdefault(d.get("label"), []).append(d)
        parts = []
        for group in by_label.values():
            d = _Blank(group[0])
            d["text"] = "\n" + numbered([g.get("text", "") for g in group])
            parts.append(re.sub(r"[ \t]+\n", "\n", fs.demo.format_map(d)))
        parts.append(fs.query.format_map(query_fields).rstrip())
        return fs.separator.join(parts)


LIST_KEY = "answers"


def list_schema() -> str:
    """The JSON schema (as JSON text) of a list answer: {"answers": [string, ...]} (OpenAI strict mode wants
    an object at the top, every property required and no others)."""
    return json.dumps({"type": "object", "properties": {LIST_KEY: {"type": "array", "items": {"type": "string"}}},
                       "required": [LIST_KEY], "additionalProperties": False}, sort_keys=True)


_NUM_ITEM = re.compile(r"^\s*(?:\*\*)?(\d{1,2})[.):](?:\*\*)?\s*(.*?)\s*$")


def _salvage_json_strings(text: str) -> list[str]:
    """The complete strings of a JSON array cut short: '{"answers": ["a", "b", "c' -> ["a", "b"]."""
    start = text.find("[")
    if start < 0:
        return []
    dec, pos, out = json.JSONDecoder(), start + 1, []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            val, pos = dec.raw_decode(text, pos)
        except ValueError:
            return out
        if isinstance(val, str):
            out.append(val)


def parse_list(raw: str, n: int, first_is_item: bool = False) -> tuple[list[str], str | None]:
    """Up to n items of a list answer, and what was wrong with it (None when it held n items).

    JSON ({"answers": [...]} or a bare array, also inside a ``` fence) is read first; a JSON answer cut
    short keeps its complete strings ("truncated_json"); otherwise a numbered list, whose first line is an
    item when the prompt ended with an open "1." (`first_is_item`). Returns (items, problem), problem one
    of None, "truncated_json", "fewer_items", "no_list".
    Example: ('{"answers": ["a b", "c d"', 3) -> (["a b"], "truncated_json")
    """
    text = raw.replace("\r", "").strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)(?:```\s*)?$", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    if text[:1] in "{[":
        try:
            val = json.loads(text)
        except ValueError:
            items = _salvage_json_strings(text)
            return items[:n], "truncated_json"
        if isinstance(val, dict):
            val = val.get(LIST_KEY, next((v for v in val.values() if isinstance(v, list)), None))
        if isinstance(val, list):
            items = [str(v) for v in val if isinstance(v, (str, int, float)) and str(v).strip()]
            return items[:n], None if len(items) >= n else "fewer_items"
        return [], "no_list"
    items: list[str] = []
    for i, line in enumerate(text.split("\n")):
        m = _NUM_ITEM.match(line)
        if m:
            items.append(m.group(2))
        elif i == 0 and first_is_item and line.strip():
            items.append(line.strip())
    items = [it for it in items if it.strip()]
    if not items:
        return [], "no_list"
    return items[:n], None if len(items) >= n else "fewer_items"


# ------------------------------------------------------------------ cleaning

_PREFIX = re.compile(
    r"^\s*(?:\*\*)?(?:hypothesis|sentence|question|new question|similar question|another question|review|"
    r"movie review|answer|output|example|new sentence|similar sentence|a similar sentence|text)"
    r"(?:\s*\d+)?\s*(?:\*\*)?\s*[:\-]\s*"
    # an echo of the instruction: "A sentence that is definitely correct based on the description:"
    r"|^\s*(?:a|an|another|the)\s+(?:new\s+|similar\s+)?(?:sentence|question|review|hypothesis)\b[^:\n]{0,90}:\s*",
    re.I)
_PREAMBLE = re.compile(r"^\s*(?:sure|certainly|of course|here(?:'s| is| are)|okay|ok)\b[^\n]*?[:!.]\s*(?:\n|$)", re.I)
# leading chatter sentences about the task itself, e.g. "That's a great movie review. Here's my take on it:"
_CHATTER = re.compile(r"^\s*(?:(?:that'?s|this is|what) (?:a |an )?(?:great|good|nice|interesting|wonderful)[^.!:\n]{0,40}"
                      r"(?:review|sentence|question|example|prompt)[^.!:\n]{0,20}[.!]|"
                      r"here(?:'s| is) (?:my|a|the|an)[^.!:\n]{0,40}[:.])\s*", re.I)
_QUOTES = "\"'“”‘’`«»"


def _strip_quotes(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    if s.count('"') == 1:
        s = s.replace('"', "").strip()
    return s


def similarity(a: str, b: str) -> float:
    """Word-level similarity ratio in [0, 1] (1 = same words in the same order)."""
    wa, wb = normalize_words(a), normalize_words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def clean_answer(raw: str, *, kind: str, min_words: int, context: str | None = None,
                 shown: str | None = None, answer: str | None = None, single_line: bool = True,
                 copy_threshold: float = 0.9) -> tuple[str | None, str | None]:
    """Clean one LLM answer into an example text. Returns (text, None) or (None, reject_reason).

    Example: ' "Hypothesis: The cat sleeps." ' -> ("The cat sleeps.", None)
    """
    s = raw.replace("\r", "")
    s = _PREAMBLE.sub("", s, count=1)
    for _ in range(3):
        s, n = _CHATTER.subn("", s, count=1)
        if not n:
            break
    if single_line:
        lines = [ln for ln in s.split("\n") if ln.strip()]
        s = lines[0] if lines else ""
    else:
        s = re.split(r"\n\s*(?:note|word count|\(word count|---)\b", s, maxsplit=1, flags=re.I)[0]
        s = " ".join(s.split())
    s = _PREFIX.sub("", s, count=1)
    s = _strip_quotes(s)
    s = _PREFIX.sub("", s, count=1)
    s = _strip_quotes(s)
    if kind == "question" and "?" in s:
        s = s[: s.index("?") + 1]
    s = s.strip()
    if not s:
        return None, "empty"
    if len(normalize_words(s)) < min_words:
        return None, "too_short"
    if context and similarity(s, context) >= copy_threshold:
        return None, "copy_of_context"
    if shown and similarity(s, shown) >= 0.999:
        return None, "copy_of_source"
    if answer and " ".join(normalize_words(s)) == " ".join(normalize_words(answer)):
        return None, "same_as_answer"
    return s, None


_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*(.+?)\s*$")


def parse_rationales(raw: str, first_is_item: bool) -> list[str]:
    """Reasons from a numbered or bulleted list; `first_is_item` when the prompt ended with an open "3.".

    Example: (" good acting\\n4. nice music", True) -> ["good acting", "nice music"]
    """
    out = []
    for i, line in enumerate(raw.replace("\r", "").split("\n")):
        m = _ITEM.match(line)
        if m:
            item = m.group(1)
        elif i == 0 and first_is_item:
            item = line.strip()
        else:
            continue
        item = _strip_quotes(re.sub(r"\*\*", "", item)).rstrip(".").strip()
        item = re.sub(r"^[A-Z][\w ]{0,30}:\s+", "", item) if len(item.split()) > 6 else item
        n = len(item.split())
        if 2 <= n <= 25:
            out.append(item)
    return out
