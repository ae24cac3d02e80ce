"""What a run leaves for people: the HTML/Markdown report and dataset card, its figures, the read-only
view of a run directory they are built from, and the export of the synthetic set."""

from .pages import write_report  # noqa: F401
