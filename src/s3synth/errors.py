"""Errors a user can fix. The CLI prints them on one line and exits with code 2."""

from __future__ import annotations


class S3Error(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""

    exit_code = 2


class DataError(S3Error):
    """Bad input data: names the file, the line (1-based, where known) and the field."""

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        where = self.path + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class TaskError(S3Error):
    """A task file that is missing, malformed or inconsistent."""


class LLMError(S3Error):
    """An LLM backend that cannot be used (bad model name, key, unreachable server, missing package)."""


class BudgetExceeded(S3Error):
    """A hard token or cost budget was reached; everything so far is saved and a re-run resumes."""

    exit_code = 3
