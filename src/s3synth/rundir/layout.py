"""Where everything lives in a run directory, defined once: file names, round folders, and the sample-index
bands of LLM requests (part of each cache key). The writer, the report, export and the CLI read it here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class Layout:
    """Where everything lives in a run directory; the writer, the report, export and the CLI read it here.

    Example: LAYOUT.round(2, "added") -> "round-2/added.jsonl"
    """

    config = "config.toml"
    manifest = "manifest.json"
    cache = "llm_cache.sqlite"
    lock = ".lock"
    rationales = "rationales.json"
    seed = "seed.jsonl"
    seed_dropped = "seed_dropped.jsonl"
    final_dir = "final"
    final_metrics = "final/metrics.json"
    final_train = "final/train.jsonl"
    final_predictions = "final/predictions.jsonl"     # the final model on the test set, one row per example
    final_cleaned = "final/cleaned.jsonl"             # --clean-labels: what was dropped or down-weighted, and why
    final_model = "final/model"
    reports = ("report.html", "report.md", "dataset_card.md")
    export_dir = "export"                             # `s3synth export`'s default output folder
    ROUND_FILES = {"errors": "errors.jsonl", "sources": "sources.jsonl", "added": "added.jsonl",
                   "metrics": "metrics.json", "dropped": "dropped.jsonl",
                   "predictions": "predictions.jsonl", "cleaned": "cleaned.jsonl"}

    @staticmethod
    def round_dir(q: int) -> str:
        return f"round-{q}"

    def round(self, q: int, what: str) -> str:
        return f"{self.round_dir(q)}/{self.ROUND_FILES[what]}"

    def dropped(self, stage: str) -> str:
        """Where screened-out examples of a stage go: "seed" or "round-K"."""
        return self.seed_dropped if stage == "seed" else f"{stage}/{self.ROUND_FILES['dropped']}"

    def top_names(self) -> set[str]:
        """The names s3synth gives to files and folders at the top of a run directory (round-K folders aside)."""
        return {self.config, self.manifest, self.cache, self.rationales, self.seed, self.seed_dropped,
                self.final_dir, self.export_dir, *self.reports}

    def file_names(self) -> set[str]:
        """The base names of the files s3synth writes (atomically, through a temp file) in a run directory."""
        return {self.config, self.manifest, self.rationales, self.seed, self.seed_dropped, *self.reports,
                *self.ROUND_FILES.values(),
                *(Path(f).name for f in (self.final_metrics, self.final_train, self.final_predictions,
                                                self.final_cleaned))}

    def rounds_present(self, path: Path) -> list[int]:
        """Round numbers with a folder in `path`, 1, 2, ... up to the first gap."""
        q = 1
        while (path / self.round_dir(q)).is_dir():
            q += 1
        return list(range(1, q))


LAYOUT = Layout()

# Sample indices of LLM requests (part of each cache key): a band per prompt family, an offset per
# attempt, so that every request of a run is distinct. Example: the 2nd attempt at error 7 of a round
# is SAMPLE_BANDS["extrapolate"] + 1 * ATTEMPT_STRIDE + 7.
SAMPLE_BANDS = {"rationale": 0, "seed": 10_000_000, "extrapolate": 20_000_000, "zerogen": 30_000_000,
                "seed_list": 40_000_000, "zerogen_list": 50_000_000}
BAND_WIDTH = 10_000_000
ATTEMPT_STRIDE = 1_000_000
# list requests (--per-call N, --per-context K) have bands of their own, and a slot of LIST_STRIDE per
# shape (N, or 50 + K), so that answers of different shapes never share a cache key
LIST_STRIDE = 100_000
MAX_PER_REQUEST = 49


def list_sample_index(stage: str, per_call: int, per_context: int, index: int) -> int:
    """Example: list_sample_index("seed", 5, 1, 7) -> 40_500_007; ("seed", 1, 2, 7) -> 45_200_007."""
    if not (1 <= per_call <= MAX_PER_REQUEST and 1 <= per_context <= MAX_PER_REQUEST):
        raise ValueError(f"per_call and per_context must be in 1..{MAX_PER_REQUEST}")
    if not 0 <= index < LIST_STRIDE:
        from ..errors import S3Error
        raise S3Error(f"--per-call/--per-context: at most {LIST_STRIDE - 1:,} list requests per stage; "
                      "ask for a smaller seed size")
    shape = per_call if per_context == 1 else 50 + per_context
    return SAMPLE_BANDS[f"{stage}_list"] + shape * LIST_STRIDE + index


def band_of(sample_index: int) -> str:
    """Example: band_of(20_000_007) -> "extrapolate"."""
    start = (int(sample_index) // BAND_WIDTH) * BAND_WIDTH
    return next((k for k, v in SAMPLE_BANDS.items() if v == start), "other")
