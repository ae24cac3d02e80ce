"""The run configuration and the table of methods: the one source of every setting, default and choice.

`RunConfig` converts every value to its field's declared type ("16" -> 16, "true" -> True, a Path -> its
text) or refuses it in one line (`typed`), then validates everything on construction (Python and the
command line get the same errors); the CLI builds its options from the fields below (type, default,
choices and help in each field's metadata). `config.toml` holds it whole, with credentials in URLs masked
and rows given from Python (a data input's Dataset, DataFrame or list of dicts) named by size and sha256.
"""

from __future__ import annotations

import functools
import re
import typing
from dataclasses import asdict, dataclass, field, fields

from .data import parse_columns
from .datasets_hub import PythonRows, check_revision, is_hub, parse_spec, python_rows, refuse_placeholder
from .errors import S3Error
from .plugins import convert


@dataclass(frozen=True)
class Method:
    """One row of the methods table: which stages a method runs. The loop and the estimate read it;
    neither names a method.

    - seed: the prompt family of the seed stage ("seed": the task's seed prompt; "zerogen": one fixed
      prompt per label; None: no synthetic seed, train on the gold eval's mining part itself)
    - rationales: single-text tasks write rationales first and show them in seed prompts
    - rounds: runs `--rounds` rounds of error extrapolation
    - extrapolate_all: extrapolates every mining example once, errors or not (GoldGen)
    - sized: the seed grows to `--size` (a bench sets it to S3's final size)
    - final_gold: the final model trains on the synthetic data plus the gold eval's mining part
      (`--final-train synthetic+gold`); the held-out part still picks epochs
    - auto_gold: it does so under `--final-train auto` (the default) too: the quality grid's choice for s3
    """

    name: str
    label: str
    seed: str | None
    rationales: bool
    rounds: bool
    extrapolate_all: bool = False
    sized: bool = False
    final_gold: bool = False
    auto_gold: bool = False
    help: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("s3", "S3", "seed", rationales=True, rounds=True, auto_gold=True, help="the paper's method"),
    Method("zerogen", "ZeroGen", "zerogen", rationales=False, rounds=False, sized=True,
           help="one fixed prompt per label, no rationales, no feedback"),
    Method("goldgen", "GoldGen", "seed", rationales=True, rounds=False, extrapolate_all=True,
           help="extrapolate every gold example once"),
    Method("seed-only", "Seed only (w/o EES)", "seed", rationales=True, rounds=False, sized=True,
           help="the seed grown to --size"),
    Method("gold", "Gold data", None, rationales=False, rounds=False, help="train on the gold eval itself"),
    Method("zerogen-s3", "ZeroGen seed + S3", "zerogen", rationales=False, rounds=True,
           help="Table 5's transfer: a ZeroGen seed, then S3's extrapolation"),
    Method("s3+gold", "S3 + gold", "seed", rationales=True, rounds=True, final_gold=True,
           help="S3, with the final model trained on its data plus the real mining labels"),
    Method("zerogen+gold", "ZeroGen + gold", "zerogen", rationales=False, rounds=False, sized=True, final_gold=True,
           help="the control: as many ZeroGen examples as S3's plus the same real labels"),
)}


def final_counts(method: str | None, final: dict | None) -> tuple[int, int]:
    """(synthetic, real): the examples a final model trained on, read from its final/metrics.json. The real
    ones are the gold eval's mining part: `parts` counts them under `--final-train synthetic+gold`, and a
    method without a synthetic seed (gold) trains on nothing else.

    Example: final_counts("s3", {"train_size": 94, "parts": {"synthetic": 52, "gold": 42}}) -> (52, 42);
             final_counts("gold", {"train_size": 42}) -> (0, 42)"""
    final = final or {}
    size = int(final.get("train_size") or 0)
    parts = final.get("parts") or {}
    if "gold" in parts:
        real = int(parts["gold"] or 0)
    else:
        real = size if method in METHODS and METHODS[method].seed is None else 0
    return size - real, real


BALANCE_MODES = ("fill", "cap", "none")
PROMPT_STYLES = ("auto", "paper", "fewshot")
CACHE_MODES = ("use", "off", "only")
FINAL_TRAIN = ("auto", "synthetic", "synthetic+gold")
CLEAN_MODES = ("none", "drop", "weight")
CLEAN_WITH = ("fast", "learner")
MINE_RULES = ("misclassified", "margin", "loss")
EXPORT_FORMATS = ("jsonl", "parquet", "hf")     # `s3synth export --format`
BATCH_FALLBACKS = ("batch", "online")
DATA_FIELDS = ("gold_eval", "test", "contexts")   # the data inputs: a file, hf:NAME..., or rows from Python


def opt(default=None, help: str = "", *, choices=None, cli: bool = True, **more):
    """A RunConfig field with its command-line help (and choices); `cli=False` keeps it off the CLI."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kw, metadata={"help": help, "choices": choices, "cli": cli, **more})


@dataclass
class RunConfig:
    """Everything a run was asked to do."""

    task: str = opt(None, "Built-in task (see `s3synth tasks`) or a task YAML/TOML file.", required=True)
    gold_eval: str = opt(None, "Real labelled examples whose errors are extrapolated: a JSONL, CSV or Parquet file, "
                               "or a Hugging Face Hub dataset hf:NAME[:CONFIG][:SPLIT] (e.g. "
                               "hf:nyu-mll/glue:qnli:validation, hf:stanfordnlp/imdb::test), read with the datasets "
                               "library into the Hugging Face cache; from Python also a datasets.Dataset, a pandas "
                               "DataFrame or a list of dicts.", required=True, path=True, data=True)
    test: str | None = opt(None, "Real test set for the reported metrics (never used for choices): a file or "
                                 "hf:NAME[:CONFIG][:SPLIT], as --gold-eval.", path=True, data=True)
    columns: str | None = opt(None, "Your data's column for each field of the task, FIELD=COLUMN[,...], e.g. "
                                    "text=body,label=priority (fields: text, label, context, answers, answer, "
                                    "answer_start, id), for every data file read; default: the task's `fields` "
                                    "names.", metavar="FIELD=COLUMN,...")
    data_revision: str | None = opt(None, "hf: data: the Hub revision (branch, tag or commit sha) of every hf: input "
                                          "(default: the main branch); the commit read is recorded in "
                                          "manifest.json.")
    llm: str = opt("embedded", "embedded | openai:MODEL | anthropic:MODEL | transformers:DIR_OR_HUB_NAME | "
                               "vllm:DIR_OR_HUB_NAME | any registered BACKEND:MODEL. A Hub name is downloaded once "
                               "into the Hugging Face cache.")
    llm_options: dict = opt(dict, "Options of the LLM backend (-o KEY=VALUE).", cli=False)
    learner: str = opt("minilm", "minilm | distilbert (the paper's distilbert-base-uncased) | hf:HUB_NAME | hf:DIR | "
                                 "fast | any registered learner. A Hub name is downloaded once into the Hugging "
                                 "Face cache (safetensors only).")
    learner_path: str | None = opt(None, "Weights folder (or Hub name) for the learner, e.g. for --learner distilbert.",
                                   path=True)
    learner_options: dict = opt(dict, "Options of the learner (--learner-option KEY=VALUE).", cli=False)
    offline: bool = opt(False, "Hugging Face Hub models and hf: datasets from the local cache only, no download (as "
                               "HF_HUB_OFFLINE=1); without a cached copy the run stops before writing anything.",
                        flag=True)
    method: str = opt("s3", "s3, or a baseline of the paper: " + "; ".join(
        f"{m.name}: {m.help}" for m in METHODS.values() if m.name != "s3") + ".", choices=tuple(METHODS))
    size: int | None = opt(None, "zerogen / seed-only: synthetic examples to keep (default: --seed-size).")
    cache_path: str | None = opt(None, "LLM cache file (default: DIR/llm_cache.sqlite; a bench shares one).", cli=False)
    seed_size: int = opt(200, "Seed examples to keep (rejected answers are replaced).")
    rounds: int = opt(2, "Error-extrapolation rounds (the paper: 2).")
    seed: int = opt(0, "Random seed for sampling, splits and training.")
    max_gold_eval: int | None = opt(None, "Use a random subsample of this many gold eval examples.")
    max_test: int | None = opt(None, "Use a random subsample of this many test examples.")
    test_seed: int | None = opt(None, "Seed of the --max-test subsample (default: --seed); fix it to score every "
                                      "seed on the same test examples.")
    holdout_frac: float = opt(0.3, "Share of gold eval kept out of error mining, used to pick epochs and to stop.")
    min_gain: float = opt(0.0, "Stop when the held-out metric gains less than this over the previous round.")
    balance: str = opt("fill", "Label balance of each round's added data (none = the paper).", choices=BALANCE_MODES)
    final_train: str = opt("auto", "What the final model trains on: the synthetic data (the paper), or it plus the "
                                   "gold eval's mining part (the held-out part still picks epochs). auto: "
                                   "synthetic+gold for method s3 (chosen by the quality grid), the paper's "
                                   "training for its baselines and for every row of `s3synth bench`.",
                           choices=FINAL_TRAIN)
    gold_weight: float = opt(1.0, "--final-train synthetic+gold: the loss weight of each real example "
                                  "(synthetic ones weigh 1).")
    clean_labels: str = opt("none", "Before each training, find synthetic examples whose label is likely wrong "
                                    "(confident learning on cross-validated probabilities) and drop or "
                                    "down-weight them.", choices=CLEAN_MODES)
    clean_with: str = opt("fast", "--clean-labels: the model whose cross-validated probabilities judge the labels "
                                  "(fast: frozen MiniLM features + logistic regression; learner: the run's learner, "
                                  "trained once per fold).", choices=CLEAN_WITH)
    clean_folds: int = opt(5, "--clean-labels: cross-validation folds.")
    mine: str = opt("misclassified", "Which gold examples each round extrapolates: misclassified (the paper), "
                                     "margin (also correct ones within --mine-margin of another label), or loss "
                                     "(the --mine-share with the highest loss).", choices=MINE_RULES)
    mine_margin: float = opt(0.2, "--mine margin: a correct example is mined when its gold label's probability "
                                  "leads the next label by less than this.")
    mine_share: float = opt(0.3, "--mine loss: the share of the mining set, highest loss first.")
    prompt_style: str = opt("auto", "auto: the backend's default (few-shot completion prompts for the embedded "
                                    "model, the paper's templates otherwise).", choices=PROMPT_STYLES)
    temperature: float = opt(0.8, "Sampling temperature.")
    top_p: float = opt(0.95, "Nucleus sampling mass.")
    per_call: int = opt(1, "Seed and ZeroGen stages: examples asked for in one LLM request (the paper: 1), as a "
                           "numbered list, or JSON under a response schema where the backend supports one "
                           "(OpenAI chat, vLLM).")
    per_context: int = opt(1, "Pair and QA tasks, seed and ZeroGen stages: examples for one premise/context in one "
                              "request (labels in turn; QA: the context's answers), so the context is paid once.")
    extrapolate_attempts: int = opt(2, "LLM calls per error at most (a rejected answer is asked again).")
    contexts: str | None = opt(None, "Pair/QA tasks: premises/contexts to write for (default: the gold eval's): a "
                                     "file or hf:NAME[:CONFIG][:SPLIT], as --gold-eval.", path=True, data=True)
    drop_leaks: bool = opt(False, "Drop synthetic examples copying a gold-eval one (8-gram containment >= 0.5); "
                                  "always counted.", flag=True)
    dedup: bool = opt(False, "Drop near-duplicate generations (same label, 3-word-shingle Jaccard >= 0.9).", flag=True)
    executor: str = opt("local", "Where the LLM requests the cache cannot answer run: local (this process) | ray (Ray "
                                 "Data jobs on a local or remote Ray cluster; pip install 's3synth[ray]') | any "
                                 "registered executor. Answers, cache and results are the same.")
    ray_address: str | None = opt(None, "--executor ray: auto | HOST:PORT (as `ray start --head` printed it) | "
                                        "ray://HOST:PORT of a running Ray cluster (default: start a local Ray for "
                                        "the run). A cluster that checks tokens gets ~/.ray/auth_token on its own "
                                        "machine, else RAY_AUTH_TOKEN.")
    executor_options: dict = opt(dict, "Options of the executor (--executor-option KEY=VALUE).", cli=False)
    cache_mode: str = opt("use", "LLM answer cache: use, off (--no-cache) or only (--cache-only: never call the LLM).",
                          choices=CACHE_MODES)
    max_tokens: int | None = opt(None, "Hard budget: LLM tokens over the whole run directory.")
    max_cost: float | None = opt(None, "Hard budget in money (needs --price-in/--price-out).")
    price_in: float = opt(0.0, "Price per million prompt tokens.")
    price_out: float = opt(0.0, "Price per million completion tokens.")
    batch: bool = opt(False, "Send each stage's uncached requests as provider batch jobs (openai: the Batch API; "
                             "anthropic: Message Batches) at the batch price; answers take minutes to hours. The "
                             "batch ids are recorded in the run's cache: a re-run polls them, never pays twice.",
                      flag=True)
    batch_fallback: str = opt("batch", "--batch: requests that an expired, failed or cancelled batch left "
                                       "unanswered go to a new batch, or online (at the online price).",
                              choices=BATCH_FALLBACKS)
    batch_discount: float = opt(0.5, "The share of the price that batch requests take off (0.5: half price), for "
                                     "--max-cost and `estimate --batch`.")
    batch_poll: float = opt(15.0, "--batch: seconds before the first poll of a batch; the wait grows 1.5x per "
                                  "poll up to 30x this (at most 10 minutes).")

    def __post_init__(self):
        def bad(name, why):
            raise S3Error(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {why}")
        for f in fields(self):
            v = typed(f, getattr(self, f.name))
            setattr(self, f.name, v)
            if f.metadata.get("required") and not v:
                raise S3Error(f"--{f.name.replace('_', '-')} is required")
            if f.metadata.get("choices") and v not in f.metadata["choices"]:
                bad(f.name, f"must be one of {', '.join(f.metadata['choices'])}")
        parse_columns(self.columns)
        hub_inputs = [n for n in DATA_FIELDS if is_hub(getattr(self, n))]
        for name in hub_inputs:
            try:
                parse_spec(getattr(self, name))
            except S3Error as e:
                raise S3Error(f"--{name.replace('_', '-')} {e}") from None
        check_revision(self.data_revision, {f"--{n.replace('_', '-')}": getattr(self, n) for n in DATA_FIELDS})
        if self.ray_address and self.executor != "ray":
            raise S3Error(f"--ray-address {self.ray_address!r} needs --executor ray")
        if self.size is not None and self.size < 1:
            bad("size", "must be >= 1")
        if self.seed_size < 1:
            bad("seed_size", "must be >= 1")
        if self.rounds < 0:
            bad("rounds", "must be >= 0")
        if self.max_gold_eval is not None and self.max_gold_eval < 2:
            bad("max_gold_eval", "must be >= 2")
        if self.max_test is not None and self.max_test < 1:
            bad("max_test", "must be >= 1")
        if self.gold_weight <= 0:
            bad("gold_weight", "must be > 0")
        if self.clean_folds < 2:
            bad("clean_folds", "must be >= 2")
        if not (0 < self.mine_margin <= 1):
            bad("mine_margin", "must be in (0, 1]")
        if not (0 < self.mine_share <= 1):
            bad("mine_share", "must be in (0, 1]")
        if self.method == "gold" and self.final_train == "synthetic+gold":
            bad("final_train", "method gold trains on the gold eval already; use --method s3 (or another "
                               "synthetic method) with --final-train synthetic+gold")
        if not (0 <= self.holdout_frac < 1):
            bad("holdout_frac", "must be in [0, 1)")
        if not (0 <= self.temperature <= 2):
            bad("temperature", "must be in [0, 2]")
        if not (0 < self.top_p <= 1):
            bad("top_p", "must be in (0, 1]")
        for name in ("per_call", "per_context"):
            if not 1 <= getattr(self, name) <= 49:
                bad(name, "must be in 1..49")
        if self.per_call > 1 and self.per_context > 1:
            raise S3Error("--per-call and --per-context: use one of them (both ask for several examples per request)")
        if self.extrapolate_attempts < 1:
            bad("extrapolate_attempts", "must be >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad("max_tokens", "must be >= 1")
        if self.price_in < 0 or self.price_out < 0:
            raise S3Error("--price-in and --price-out must be >= 0")
        if not (0 <= self.batch_discount < 1):
            bad("batch_discount", "must be in [0, 1): the share of the price a batch takes off (0.5: half price)")
        if self.batch_poll <= 0:
            bad("batch_poll", "must be > 0 (seconds)")
        if self.batch and self.cache_mode == "off":
            raise S3Error("--batch records its batch ids in the run's LLM cache: drop --no-cache (--cache-mode off)")
        if self.max_cost is not None:
            if self.max_cost <= 0:
                bad("max_cost", "must be > 0")
            if not (self.price_in or self.price_out):
                raise S3Error("--max-cost needs --price-in and/or --price-out (money per million tokens)")

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]

    @property
    def final_with_gold(self) -> bool:
        """The final model trains on synthetic + mining gold: a +gold method, `--final-train synthetic+gold`,
        or `auto` (the default) with method s3, the one lever the quality grid adopted. Under `auto` the
        paper's baselines train as the paper's table has them (synthetic only; gold: the gold only)."""
        if self.method_spec.final_gold:
            return True
        if self.final_train == "auto":
            return self.method_spec.auto_gold
        return self.final_train == "synthetic+gold"

    def to_dict(self) -> dict:
        """All settings, with credentials written into a URL masked (config.toml never holds a secret)."""
        d = asdict(self)
        for name in DATA_FIELDS:        # rows given from Python: named by their size and sha256 (not rebuildable)
            if isinstance(d[name], PythonRows):
                d[name] = str(d[name])
        d["llm_options"] = {k: redact_url(v) if isinstance(v, str) else v for k, v in self.llm_options.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """A RunConfig from a dict such as a config.toml; keys of other versions are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


TYPE_WORDS = {int: "a whole number (int)", float: "a number (float)", bool: "true or false (bool)",
              str: "text or a path (str)", dict: "a dict of option name -> value"}


@functools.cache
def _hints() -> dict:
    return typing.get_type_hints(RunConfig)


def typed(f, value):
    """`value` as RunConfig field `f`'s declared type (the one place every field is converted or refused):
    a string of a number, a bool's "true"/"false" and a `pathlib.Path` for a text field are converted; None
    stays None where the field allows it (Optional, or a required field, refused by name after); anything
    else is an S3Error naming the field, its flag, the value and the type. An int stays an int in a float
    field (as the earlier versions kept it: it is part of LLM cache keys). A data input (DATA_FIELDS) also
    takes rows from Python, kept as `datasets_hub.PythonRows`, and refuses config.toml's record of such rows.

    Examples: typed(seed_size, "16") -> 16; typed(dedup, "true") -> True; typed(gold_eval, Path("g.csv"))
    -> "g.csv"; typed(seed_size, "many") -> S3Error("RunConfig seed_size='many' (--seed-size): expected a
    whole number (int)").
    """
    if f.metadata.get("data"):     # a data input: also rows given from Python (datasets_hub.PythonRows)
        refuse_placeholder(f"--{f.name.replace('_', '-')}", value)
        try:
            rows = python_rows(value)
        except S3Error as e:
            raise S3Error(f"RunConfig {f.name}: {e}") from None
        if rows is not None:
            return rows
    tp = _hints()[f.name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = len(args) < len(typing.get_args(tp))
    base = args[0] if args else tp
    if value is None and (optional or f.metadata.get("required")):
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return value
    base = typing.get_origin(base) or base
    if value is not None:
        try:
            return convert(value, base, f.name)
        except S3Error:
            pass
    flag = f" (--{f.name.replace('_', '-')})" if f.metadata.get("cli", True) else ""
    what = TYPE_WORDS.get(base, getattr(base, "__name__", str(base))) + (" or None" if optional else "")
    raise S3Error(f"RunConfig {f.name}={value!r}{flag}: expected {what}")


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def redact_url(text: str) -> str:
    """Example: "http://user:pw@host/v1" -> "http://***@host/v1" (also inside a longer text)."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)


def to_toml(d: dict) -> str:
    """TOML text of a settings dict (None values left out: TOML has no null)."""
    import tomli_w

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if v is not None}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x if v is not None]
        return x
    return tomli_w.dumps(clean(d))
