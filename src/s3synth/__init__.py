"""s3synth: synthesize a training set with an LLM, step by step, by extrapolating the errors of a
small model on a few real examples (S3, Wang et al., Findings of EMNLP 2023).

    from s3synth import S3, load_run, load_task
    result = S3(task=load_task("rte"), gold_eval="gold.jsonl", test="test.jsonl").run("runs/rte")
    data = load_run("runs/rte")      # a datasets.DatasetDict: synthetic "train", the "real" rows apart

`gold_eval`, `test` and `contexts` also take a Hub dataset by name ("hf:nyu-mll/glue:qnli:validation"), a
`datasets.Dataset`, a pandas `DataFrame` or a list of dicts.
"""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .errors import S3Error  # noqa: E402
from .tasks import load_task  # noqa: E402


def load_run(path):
    """A finished run directory's data as a `datasets.DatasetDict`: "train", its synthetic set with the provenance
    columns (stage, round, source_id; the rows `s3synth export` writes), and "real", the real gold-eval rows
    its final model also trained on, kept apart (see report.export.dataset_dict)."""
    from .report.export import dataset_dict

    return dataset_dict(path)


def __getattr__(name):  # heavy pieces load on first use
    if name == "S3":
        from .method import S3
        return S3
    raise AttributeError(name)


__all__ = ["S3", "RunConfig", "S3Error", "load_run", "load_task", "__version__"]
