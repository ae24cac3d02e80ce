"""Plugins: one registry for every group (LLM backends, learners, executors) and one way to read their options.

Built-in plugins are registered exactly as a third party's are, through entry points in pyproject.toml:

    [project.entry-points."s3synth.llms"]
    mybackend = "mypkg.module:MyLLM"

A plugin class declares its options as a dataclass `Options` (field types and defaults, checks in
`__post_init__` raising S3Error). `parse_options` builds it from a dict, converting the strings of
`KEY=VALUE` command-line options to the field's type and refusing unknown keys with the list of known ones.

Not handled: nested option types beyond dict/list (given as JSON on the command line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from importlib.metadata import entry_points

from .errors import S3Error

GROUPS = {"llms": "LLM backend", "learners": "learner", "executors": "executor"}


def _group(group: str) -> str:
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; known: {', '.join(GROUPS)}")
    return f"s3synth.{group}"


def plugin_names(group: str) -> list[str]:
    """Example: plugin_names("learners") -> ["distilbert", "fast", "hf", "minilm"] (plus any installed plugin)."""
    return sorted({ep.name for ep in entry_points(group=_group(group))})


def load_plugin(group: str, name: str, hint: str = ""):
    """The class registered as `name` in `group`; S3Error naming the available ones when there is none."""
    for ep in entry_points(group=_group(group)):
        if ep.name == name:
            try:
                return ep.load()
            except ImportError as e:
                raise S3Error(f"the {GROUPS[group]} '{name}' ({ep.value}) cannot be loaded: {e}") from None
    names = plugin_names(group)
    if not names:
        raise S3Error(f"no {GROUPS[group]} is registered: s3synth is not installed as a package "
                      "(pip install -e . in the repository, or bash scripts/setup.sh)")
    raise S3Error(f"unknown {GROUPS[group]} '{name}'; available: {', '.join(names)}{hint}")


# ------------------------------------------------------------------ options

def parse_kv(items, flag: str) -> dict:
    """Example: parse_kv(["rpm=60", "extra_body={\\"x\\": 1}"], "--llm-option") -> {"rpm": "60", "extra_body": '{"x": 1}'}."""
    out = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise S3Error(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} rpm=60")
        out[key] = value
    return out


def convert(value, tp, where: str):
    """`value` (often a string from the command line) as type `tp`; S3Error with `where` when it is not one.

    Examples: convert("16", int, "--x") -> 16; convert("true", bool, "--x") -> True;
    convert(Path("a.jsonl"), str, "--x") -> "a.jsonl"; convert("many", int, "--x") -> S3Error.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(value, a, where)
            except S3Error as e:
                errors.append(str(e))
        raise S3Error(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is typing.Any:
        return value
    base = origin or tp
    if base is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise S3Error(f"{where}: {value!r} is not true or false")
    if base is int:
        if isinstance(value, bool):
            raise S3Error(f"{where}: {value!r} is not a whole number")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise S3Error(f"{where}: {value!r} is not a whole number") from None
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise S3Error(f"{where}: {value!r} is not a number") from None
    if base is str:
        if isinstance(value, os.PathLike):     # a path given as pathlib.Path
            return os.fspath(value)
        if not isinstance(value, str):
            raise S3Error(f"{where}: {value!r} is not text")
        return value
    if base in (dict, list, tuple):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise S3Error(f"{where}: {value!r} is not JSON (write e.g. '{{\"key\": 1}}')") from None
        if not isinstance(value, (list, tuple) if base is not dict else dict):
            raise S3Error(f"{where}: {value!r} is not a JSON {'object' if base is dict else 'list'}")
        return tuple(value) if base is tuple else value
    return value


def parse_options(options_cls, raw: dict | None, where: str):
    """An `options_cls` instance from `raw` (values typed or strings); `where` names the plugin in errors.

    Example: parse_options(OpenAICompatLLM.Options, {"rpm": "60"}, "LLM backend 'openai'").rpm -> 60.0
    """
    if isinstance(raw, options_cls):
        return raw
    raw = dict(raw or {})
    flds = option_names(options_cls)
    unknown = sorted(set(raw) - flds)
    if unknown:
        raise S3Error(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                      f"known: {', '.join(sorted(flds)) or '(none)'}")
    hints = typing.get_type_hints(options_cls)
    kw = {k: convert(v, hints.get(k, typing.Any), f"{where}: option {k}") for k, v in raw.items()}
    return options_cls(**kw)


def option_names(options_cls) -> set[str]:
    """Example: option_names(EmbeddedLLM.Options) -> {"weights", "n_ctx", "n_threads", "n_parallel"}."""
    return {f.name for f in dataclasses.fields(options_cls)}


def describe_options(options_cls) -> list[str]:
    """Example: ["rpm: float | None = None", ...] for --help texts and error messages."""
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        tp = hints.get(f.name)
        name = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
        out.append(f"{f.name}: {name or str(tp).replace('typing.', '')} = {default!r}")
    return out
