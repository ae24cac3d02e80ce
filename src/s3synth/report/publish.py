"""`s3synth push RUN --repo-id USER/NAME`: the final model (with its model card) and the synthetic set (as
Parquet, with its dataset card) to the Hugging Face Hub, through `huggingface_hub`.

Repos: the model goes to the model repo USER/NAME, the data to the dataset repo USER/NAME (a dataset repo
is a different repo of the same name: huggingface.co/datasets/USER/NAME), unless --dataset-repo-id names
another. Each is created when missing (private with --private) and receives one commit; pushing again adds
a commit. The token comes from huggingface_hub (HF_TOKEN, or the login stored by `hf auth login`); it is
passed to the client only, never written or printed.

Not handled: pull requests, branches other than main, deleting files that an earlier push left in a repo.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import S3Error
from ..rundir import LAYOUT
from .cards import CARD, dataset_card, model_card
from .export import export_columns, export_rows, parquet_bytes
from .runview import RunView, load_run

WHAT = ("both", "model", "dataset")
DATA_FILE = "data/train.parquet"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# left behind in a run's model folder by interrupted writes or kept copies: never uploaded
_LEFTOVER = re.compile(r"(^\.|\.(changed|damaged|kept)-\d|\.tmp$)")


@dataclass
class Upload:
    """One commit to one repo: (path in repo, local file or bytes) per file."""

    repo_id: str
    repo_type: str                      # model | dataset
    private: bool
    message: str
    files: list[tuple[str, Path | bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo_id}"

    def listing(self) -> list[str]:
        """Example: ["model repo USER/NAME (private) <- 'commit message'", "  config.json  612 bytes", ...]"""
        head = (f"{self.repo_type} repo {self.repo_id} ({'private' if self.private else 'default visibility'}; "
                f"{self.url}), commit {self.message!r}:")
        return [head] + [f"  {name}  {_size(src):,} bytes" for name, src in self.files]


def _size(src: Path | bytes) -> int:
    return len(src) if isinstance(src, bytes) else src.stat().st_size


def check_repo_id(repo_id: str, option: str = "--repo-id") -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id \
            or repo_id.endswith((".", "-")):
        raise S3Error(f"{option} {repo_id!r}: give it as USER/NAME or ORG/NAME (letters, digits, '-', '_', '.'; "
                      "e.g. alice/rte-minilm-s3)")
    return repo_id


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """The files of a saved model folder to upload (sorted), without its README.md (the card is made afresh)
    and without leftovers of interrupted writes or kept copies."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not p.is_symlink() and rel != CARD and not any(_LEFTOVER.search(part) for part in
                                                                          rel.split("/")):
            out.append((rel, p))
    return out


def plan_push(run_dir: str | Path, repo_id: str, *, what: str = "both", dataset_repo_id: str | None = None,
              private: bool = False, message: str | None = None) -> list[Upload]:
    """What `push` uploads: one Upload per repo, cards included; reads the run, writes nothing."""
    if what not in WHAT:
        raise S3Error(f"--what {what!r}: must be one of {', '.join(WHAT)}")
    check_repo_id(repo_id)
    ds_id = check_repo_id(dataset_repo_id, "--dataset-repo-id") if dataset_repo_id else repo_id
    run = load_run(run_dir)
    if not run.finished:
        raise S3Error(f"{run_dir} is not a finished run (no final model yet); finish it by re-running its "
                      "`s3synth run` command, then push")
    ups = []
    model_dir = run.path / LAYOUT.final_model
    if what in ("both", "model"):
        files = model_files(model_dir) if model_dir.is_dir() else []
        if not files:
            raise S3Error(f"{model_dir}: no saved model to push; re-run the run's `s3synth run` command "
                          "(it writes final/model/), or push --what dataset")
        card = model_card(run, repo_id=repo_id, dataset_repo_id=ds_id if what == "both" else None)
        ups.append(Upload(repo_id, "model", private, message or _message(run, "model"),
                          [(CARD, card.encode("utf-8")), *files]))
    if what in ("both", "dataset"):
        rows = export_rows(run)
        card = dataset_card(run, DATA_FILE, repo_id=ds_id, model_repo_id=repo_id if what == "both" else None)
        ups.append(Upload(ds_id, "dataset", private, message or _message(run, "dataset"),
                          [(CARD, card.encode("utf-8")), (DATA_FILE, parquet_bytes(rows, export_columns(run)))]))
    return ups


def _message(run: RunView, what: str) -> str:
    m = run.manifest
    thing = "model" if what == "model" else "synthetic training set"
    return f"s3synth: {m.get('task', '?')} {thing} from run {run.path.name} ({m.get('method', 's3')}, " \
           f"LLM {(m.get('llm') or {}).get('name', '?')})"


# ------------------------------------------------------------------ talking to the Hub

def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, then the stored login); S3Error when there is none."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise S3Error("no Hugging Face token: set HF_TOKEN to a token with write access "
                      "(huggingface.co/settings/tokens) or run `hf auth login`, then push again")
    return token


@contextlib.contextmanager
def _online():
    """Pushing is the one call that goes online even where HF_HUB_OFFLINE=1 is set (for reading models: see
    s3synth.hub, which honours it and --offline)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def push(uploads: list[Upload], token: str | None = None) -> list[str]:
    """Create each repo if missing and commit its files; returns the commit URLs. Errors: one-line S3Error."""
    from huggingface_hub import CommitOperationAdd, HfApi

    token = token or hub_token()
    api = HfApi(token=token)
    urls = []
    with _online(), _hub_errors(token):
        api.whoami()                     # a bad token fails here, before any repo is created
        for up in uploads:
            # private=None without --private: the namespace's default visibility (public, unless an org says otherwise)
            api.create_repo(up.repo_id, repo_type=up.repo_type, private=True if up.private else None, exist_ok=True)
            if up.private and not api.repo_info(up.repo_id, repo_type=up.repo_type).private:
                raise S3Error(f"{up.repo_type} repo {up.repo_id} already exists and is public: --private does not "
                              "change that, and nothing was uploaded; make it private on the Hub (its Settings) or "
                              "choose another --repo-id")
            ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=src if isinstance(src, bytes) else str(src))
                   for name, src in up.files]
            info = api.create_commit(up.repo_id, operations=ops, commit_message=up.message, repo_type=up.repo_type)
            urls.append(str(getattr(info, "commit_url", "") or up.url))
    return urls


@contextlib.contextmanager
def _hub_errors(token: str):
    """The Hub's refusals as one-line S3Errors (exit 2), the token masked wherever it could show."""
    from huggingface_hub.errors import HfHubHTTPError

    def line(text: str) -> str:
        text = " ".join(str(text).split())
        return text.replace(token, "***") if token else text

    try:
        yield
    except S3Error:
        raise
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        server = line(getattr(e, "server_message", None) or str(e).split("\n")[0])
        if status == 401:
            raise S3Error(f"the Hub refused the token (401: {server}); set HF_TOKEN to a valid token with write "
                          "access (huggingface.co/settings/tokens) or run `hf auth login`") from None
        if status == 403:
            raise S3Error(f"the Hub refused the upload (403: {server}); the token needs write access to that "
                          "namespace (a fine-grained token: 'write' for the user or org), or choose a --repo-id "
                          "in your own namespace") from None
        if status == 409:
            raise S3Error(f"the Hub reported a conflict (409: {server}); wait for the other operation on that repo "
                          "to finish, then push again") from None
        raise S3Error(f"the Hub answered {status}: {server}; push again later, or check the repo on the Hub") from None
    except ValueError as e:            # huggingface_hub: invalid card metadata, malformed answers
        raise S3Error(f"push failed: {line(e)}") from None
    except (OSError, *_transport_errors()) as e:      # refused, DNS, TLS, timeouts, offline mode
        raise S3Error(f"cannot reach the Hugging Face Hub ({type(e).__name__}: {line(e)}); check the network (or "
                      "HF_ENDPOINT), then push again") from None


def _transport_errors() -> tuple[type, ...]:
    """The connection errors of the HTTP library huggingface_hub uses (httpx2 from 2.x, httpx in 1.x)."""
    out = []
    for module in ("httpx2", "httpx"):
        try:
            out.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)
