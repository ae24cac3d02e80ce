"""The S3 method: the loop and its stage plan (`loop`), the LLM stages (`synth`), their prompts
(`prompts`), the cost estimate read from the same plan (`estimate`) and the baselines' comparison
(`bench`). Which stages a method runs is a row of `config.METHODS`."""

from .loop import S3, Step, stage_plan  # noqa: F401
