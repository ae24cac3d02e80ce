"""The run configuration: one validated dataclass, saved whole as `config.toml` (never a secret)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from .errors import S3Error

BALANCE_MODES = ("fill", "cap", "none")
METHODS = ("s3", "zerogen", "goldgen", "seed-only", "gold", "zerogen-s3")


@dataclass
class RunConfig:
    """Everything a run was asked to do. Defaults are documented in the README."""

    task: str
    gold_eval: str
    test: str | None = None
    llm: str = "embedded"
    learner: str = "minilm"
    learner_path: str | None = None
    method: str = "s3"              # s3 | zerogen | goldgen | seed-only | gold | zerogen-s3 (Table 5: ZeroGen seed + S3)
    size: int | None = None         # zerogen / seed-only: synthetic examples to keep (default: --seed-size)
    cache_path: str | None = None   # LLM cache file (default: DIR/llm_cache.sqlite; `bench` shares one)
    seed_size: int = 200            # seed examples kept (rejected answers are replaced)
    rounds: int = 2                 # error-extrapolation rounds (the paper: 2)
    seed: int = 0
    max_gold_eval: int | None = None   # random subsample of the gold eval set
    max_test: int | None = None        # random subsample of the test set
    holdout_frac: float = 0.3       # share of gold eval kept out of error mining, for selection and stopping
    min_gain: float = 0.0           # stop when the held-out metric gains less than this over the last round
    balance: str = "fill"           # label balance of each round's added data: fill | cap | none
    prompt_style: str = "auto"      # auto (few-shot for embedded, paper otherwise) | paper | fewshot
    temperature: float = 0.8
    top_p: float = 0.95
    extrapolate_attempts: int = 2   # LLM calls per error at most (a rejected answer is asked again)
    contexts: str | None = None     # pair/QA: context pool file (default: the gold eval's contexts)
    drop_leaks: bool = False        # drop synthetic examples flagged as copies of gold-eval ones (always counted)
    dedup: bool = False             # drop near-duplicate generations (always counted)
    # LLM connection (openai:)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    llm_mode: str = "chat"          # openai: chat | completions endpoint
    llm_timeout: float = 60.0       # openai: seconds per request before a retry
    embedded_weights: str = "q8_0"  # embedded: q8_0 | original (the packaged Q4_1 file)
    cache_mode: str = "use"         # use | off | only
    max_tokens: int | None = None   # hard budget over the whole run directory
    max_cost: float | None = None
    price_in: float = 0.0
    price_out: float = 0.0
    # learner
    learner_settings: dict = field(default_factory=dict)   # overrides of TrainConfig fields

    def __post_init__(self):
        def bad(name, why):
            raise S3Error(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {why}")
        if self.method not in METHODS:
            bad("method", f"must be one of {', '.join(METHODS)}")
        if self.size is not None and self.size < 1:
            bad("size", "must be >= 1")
        if self.seed_size < 1:
            bad("seed_size", "must be >= 1")
        if self.rounds < 0:
            bad("rounds", "must be >= 0")
        if self.max_gold_eval is not None and self.max_gold_eval < 2:
            bad("max_gold_eval", "must be >= 2")
        if not (0 <= self.holdout_frac < 1):
            bad("holdout_frac", "must be in [0, 1)")
        if self.balance not in BALANCE_MODES:
            bad("balance", f"must be one of {', '.join(BALANCE_MODES)}")
        if self.prompt_style not in ("auto", "paper", "fewshot"):
            bad("prompt_style", "must be auto, paper or fewshot")
        if not (0 <= self.temperature <= 2):
            bad("temperature", "must be in [0, 2]")
        if not (0 < self.top_p <= 1):
            bad("top_p", "must be in (0, 1]")
        if self.extrapolate_attempts < 1:
            bad("extrapolate_attempts", "must be >= 1")
        if self.cache_mode not in ("use", "off", "only"):
            bad("cache_mode", "must be use, off or only")
        if self.llm_mode not in ("chat", "completions"):
            bad("llm_mode", "must be chat or completions")
        if self.embedded_weights not in ("q8_0", "original"):
            bad("embedded_weights", "must be q8_0 or original")
        if self.llm_timeout <= 0:
            bad("llm_timeout", "must be > 0")
        if self.concurrency < 1:
            bad("concurrency", "must be >= 1")

    def to_dict(self) -> dict:
        """All settings, with credentials written into a URL masked (config.toml never holds a secret)."""
        d = asdict(self)
        if d.get("base_url"):
            d["base_url"] = redact_url(d["base_url"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def redact_url(text: str) -> str:
    """Example: "http://user:pw@host/v1" -> "http://***@host/v1" (also inside a longer text)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


def to_toml(d: dict, prefix: str = "") -> str:
    """A small TOML writer for flat values and one level of tables (None values are omitted)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{s}"'
    lines, tables = [], []
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {val(v)}")
    for k, v in tables:
        lines.append(f"\n[{prefix}{k}]")
        lines += [f"{kk} = {val(vv)}" for kk, vv in v.items() if vv is not None]
    return "\n".join(lines) + "\n"
