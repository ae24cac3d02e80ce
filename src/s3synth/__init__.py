"""s3synth: synthesize a training set with an LLM, step by step, by extrapolating the errors of a
small model on a few real examples (S3, Wang et al., Findings of EMNLP 2023).

    from s3synth import S3, load_task
    result = S3(task=load_task("rte"), gold_eval="gold.jsonl", test="test.jsonl").run("runs/rte")
"""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .errors import S3Error  # noqa: E402
from .tasks import load_task  # noqa: E402


def __getattr__(name):  # heavy pieces load on first use
    if name == "S3":
        from .method import S3
        return S3
    raise AttributeError(name)


__all__ = ["S3", "RunConfig", "S3Error", "load_task", "__version__"]
