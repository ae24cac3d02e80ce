"""A stand-in for the Hugging Face Hub's HTTP API, for unit tests only: `huggingface_hub` talks to it through
its documented hook `set_client_factory` (an httpx2 client on a `MockTransport`: nothing leaves the process).

It answers the calls `s3synth push` makes, as the Hub documents and `huggingface_hub` 2.x expects them:
GET /api/whoami-v2; POST /api/repos/create (no visibility given: the namespace's default, private in
`private_orgs`; 409 with the existing repo's url when it exists; 403 outside the token's namespaces);
GET /api/{models,datasets}/ID; POST /api/validate-yaml; POST /api/{type}s/ID/preupload/main (LFS for
*.safetensors, *.parquet, *.bin and files over 10 MB); the git-LFS batch API with basic transfer (a PUT per
object, sha256 checked); POST /api/{type}s/ID/commit/main (NDJSON). A request without a valid token gets 401
with X-Error-Message "Invalid credentials in Authorization header", as the Hub does. Uploads go to memory:
`HubStub.repos[(type, id)]` holds {"private", "files": {path: bytes}, "commits": [{"summary", "files"}]}.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote

import httpx2
import yaml
from local_server import LocalServer

ENDPOINT = "https://huggingface.co"
LFS_SUFFIXES = (".safetensors", ".parquet", ".bin")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")    # a repo id (bare: legacy)


def _json(status: int, obj, **headers) -> httpx2.Response:
    return httpx2.Response(status, json=obj, headers=headers)


def _error(status: int, message: str, code: str | None = None) -> httpx2.Response:
    headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
    return httpx2.Response(status, json={"error": message}, headers=headers)


class HubStub:
    def __init__(self, token: str, user: str = "alice", orgs: tuple[str, ...] = ("s3org", "closedorg"),
                 private_orgs: tuple[str, ...] = ("closedorg",)):
        self.token, self.user, self.orgs, self.private_orgs = token, user, orgs, private_orgs
        self.repos: dict[tuple[str, str], dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[dict] = []

    # -------------------------------------------------------------- plumbing
    def handler(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        if request.url.host == "lfs.stub" and request.method == "PUT":
            return self._lfs_put(request)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Invalid credentials in Authorization header")
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", r"/api/(models|datasets)/(?P<id>[^/]+/[^/]+)(/revision/[^/]+)?", self._info),
            ("POST", r"/api/(?P<type>model|dataset)s/(?P<id>[^/]+/[^/]+)/preupload/main", self._preupload),
            ("POST", r"/(?P<prefix>datasets/)?(?P<id>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", r"/api/(?P<type>model|dataset)s/(?P<id>[^/]+/[^/]+)/commit/main", self._commit),
        ]
        for method, pattern, fn in routes:
            m = re.fullmatch(pattern, path)
            if m and request.method == method:
                return fn(request, m)
        return _error(404, f"stub: no route for {request.method} {path}")

    def client(self) -> httpx2.Client:
        from huggingface_hub.utils._http import hf_request_event_hook

        return httpx2.Client(transport=httpx2.MockTransport(self.handler), follow_redirects=True,
                             event_hooks={"request": [hf_request_event_hook]})

    def repo(self, repo_type: str, repo_id: str) -> dict | None:
        return self.repos.get((repo_type, repo_id))

    # -------------------------------------------------------------- the API
    def _whoami(self, request, m):
        return _json(200, {"type": "user", "name": self.user, "orgs": [{"name": o} for o in self.orgs],
                           "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create(self, request, m):
        body = json.loads(request.content)
        kind = body.get("type") or "model"
        namespace = body.get("organization") or self.user
        repo_id = f"{namespace}/{body['name']}"
        if namespace not in (self.user, *self.orgs):
            return _error(403, f'You don\'t have the rights to create a {kind} under the namespace "{namespace}"')
        url = f"{ENDPOINT}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
        if (kind, repo_id) in self.repos:      # the Hub names the existing repo's url (huggingface_hub reads it)
            return _json(409, {"error": f"You already created this {kind} repo", "url": url},
                         **{"X-Error-Message": f"You already created this {kind} repo"})
        visibility = body.get("visibility") or ("private" if namespace in self.private_orgs else "public")
        self.repos[(kind, repo_id)] = {"private": visibility == "private", "files": {}, "commits": []}
        return _json(200, {"url": url, "name": repo_id})

    def _info(self, request, m):
        kind = "dataset" if request.url.path.startswith("/api/datasets/") else "model"
        repo = self.repo(kind, m.group("id"))
        if repo is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        return _json(200, {"id": m.group("id"), "private": repo["private"], "sha": "0" * 40,
                           "siblings": [{"rfilename": f} for f in repo["files"]]})

    def _validate_yaml(self, request, m):
        body = json.loads(request.content)
        self.validated.append(body)
        text = body["content"]
        errors = []
        if text.startswith("---\n"):
            try:
                meta = yaml.safe_load(text[4:].split("\n---\n", 1)[0]) or {}
            except yaml.YAMLError as e:
                return _json(400, {"errors": [{"message": f"Invalid YAML: {e}"}]})
            if "base_model" in meta and not _ID.match(str(meta["base_model"])):
                errors.append({"message": '"base_model" must be a valid model id'})
            for d in meta.get("datasets") or []:
                if not _ID.match(str(d)):
                    errors.append({"message": f'"datasets" item {d!r} is not a valid dataset id'})
        if errors:
            return _json(400, {"errors": errors})
        return _json(200, {"errors": [], "warnings": []})

    def _preupload(self, request, m):
        repo = self.repo(m.group("type"), m.group("id"))
        if repo is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        files = []
        for f in json.loads(request.content)["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return _json(200, {"files": files, "commitOid": "0" * 40})

    def _lfs_batch(self, request, m):
        objects = []
        for o in json.loads(request.content)["objects"]:
            item = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.lfs:
                item["actions"] = {"upload": {"href": f"https://lfs.stub/upload/{o['oid']}"}}
            objects.append(item)
        return _json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, request):
        oid = request.url.path.rsplit("/", 1)[1]
        data = request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "sha256 mismatch")
        self.lfs[oid] = data
        return httpx2.Response(200)

    def _commit(self, request, m):
        repo = self.repo(m.group("type"), m.group("id"))
        if repo is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        lines = [json.loads(x) for x in request.content.decode().splitlines() if x.strip()]
        header = lines[0]["value"]
        files = {}
        for item in lines[1:]:
            v = item["value"]
            if item["key"] == "file":
                files[v["path"]] = base64.b64decode(v["content"])
            elif item["key"] == "lfsFile":
                if v["oid"] not in self.lfs:
                    return _error(400, f"LFS object {v['oid']} was not uploaded")
                files[v["path"]] = self.lfs[v["oid"]]
        repo["files"].update(files)
        repo["commits"].append({"summary": header["summary"], "files": sorted(files)})
        oid = hashlib.sha1(json.dumps(repo["commits"]).encode()).hexdigest()
        prefix = "datasets/" if m.group("type") == "dataset" else ""
        return _json(200, {"commitUrl": f"{ENDPOINT}/{prefix}{m.group('id')}/commit/{oid}", "commitOid": oid})


@contextmanager
def installed(stub: HubStub):
    """Route huggingface_hub's HTTP client to `stub` (documented hook), Xet off (so LFS objects come through
    the git-LFS batch API the stub implements), endpoint the public one; restored afterwards."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    before = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True
    set_client_factory(stub.client)
    try:
        yield stub
    finally:
        set_client_factory(default_client_factory)
        constants.HF_HUB_DISABLE_XET = before


# ---------------------------------------------------------------- the read API, for downloads

class DownloadStub:
    """The Hub's read API as huggingface_hub 2.x uses it for `snapshot_download` and as `datasets.load_dataset`
    uses it (repo info at a revision, the tree listing, recursive or one folder at a time, POST paths-info,
    HEAD/GET on /resolve/ at a branch or commit with X-Repo-Commit, ETag and Content-Length), for model repos
    (`add`) and dataset repos (`add_dataset`; URLs under /api/datasets/ and /datasets/). One commit per repo,
    its branch `main`. What it does not have is a 404 with the Hub's X-Error-Code (RepoNotFound,
    RevisionNotFound, EntryNotFound). Served in-process through huggingface_hub's documented
    `set_client_factory` hook (`client`), or over real HTTP on loopback for another process (`serve`: point
    HF_ENDPOINT at it)."""

    def __init__(self, repo_id: str | None = None, sha: str | None = None, files: dict[str, bytes] | None = None):
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}       # model repos
        self.datasets: dict[str, tuple[str, dict[str, bytes]]] = {}    # dataset repos
        self.requests: list[tuple[str, str]] = []
        if repo_id is not None:
            self.add(repo_id, sha, files or {})

    def add(self, repo_id: str, sha: str, files: dict[str, bytes]) -> "DownloadStub":
        self.repos[repo_id] = (sha, files)
        return self

    def add_dataset(self, repo_id: str, sha: str, files: dict[str, bytes]) -> "DownloadStub":
        self.datasets[repo_id] = (sha, files)
        return self

    @staticmethod
    def _lfs(path: str) -> bool:
        return path.endswith((".safetensors", ".bin", ".parquet"))

    def _etag(self, path: str, data: bytes) -> str:
        if self._lfs(path):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()    # a git blob id

    def _entry(self, f: str, data: bytes) -> dict:
        entry = {"type": "file", "path": f, "size": len(data), "oid": self._etag(f, data)}
        if self._lfs(f):
            entry["lfs"] = {"oid": self._etag(f, data), "size": len(data), "pointerSize": 134}
        return entry

    def _folder(self, path: str) -> dict:
        return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}

    def _tree(self, files: dict[str, bytes], under: str, recursive: bool) -> list[dict] | None:
        """The tree listing of folder `under` ("" the top): its files and folders, or everything below it;
        None when there is no such folder."""
        prefix = f"{under}/" if under else ""
        out, folders = [], {}
        for f, data in files.items():
            if not f.startswith(prefix):
                continue
            rest = f[len(prefix):].split("/")
            for k in range(1, len(rest) if recursive else min(len(rest), 2)):
                folders.setdefault(prefix + "/".join(rest[:k]), None)
            if recursive or len(rest) == 1:
                out.append(self._entry(f, data))
        if not out and not folders:
            return None
        return [self._folder(p) for p in folders] + out

    def handler(self, request):
        path = unquote(request.url.path)
        self.requests.append((request.method, path))
        m = re.match(r"/(?P<api>api/)?(?P<type>models/|datasets/)?(?P<id>[^/]+/[^/]+)(/|$)", path)
        if m is None or (m.group("api") and not m.group("type")):
            return _error(404, f"stub: no route for {request.method} {path}")
        kind = (m.group("type") or "models/").rstrip("/")
        repos = self.datasets if kind == "datasets" else self.repos
        repo_id = m.group("id")
        if repo_id not in repos:
            return _error(404, "Repository not found", code="RepoNotFound")
        sha, files = repos[repo_id]
        at = rf"(?P<rev>main|{sha})"
        base = re.escape(f"/api/{kind}/{repo_id}")
        if m := re.fullmatch(rf"{base}(/revision/(?P<rev>[^/]+))?", path):
            if m.group("rev") not in (None, "main", sha):
                return _error(404, "Invalid rev id", code="RevisionNotFound")
            return _json(200, {"id": repo_id, "sha": sha, "private": False,
                               "siblings": [{"rfilename": f} for f in files]})
        if re.fullmatch(rf"{base}/(tree|paths-info)/(?P<rev>[^/]+)(/.*)?", path) and not re.fullmatch(
                rf"{base}/(tree|paths-info)/{at}(/.*)?", path):
            return _error(404, "Invalid rev id", code="RevisionNotFound")
        if m := re.fullmatch(rf"{base}/tree/{at}(/(?P<under>.*))?", path):
            tree = self._tree(files, (m.group("under") or "").strip("/"),
                              request.url.params.get("recursive", "").lower() in ("1", "true"))
            if tree is None:
                return _error(404, f"{m.group('under')} does not exist on {m.group('rev')}", code="EntryNotFound")
            return _json(200, tree)
        if request.method == "POST" and re.fullmatch(rf"{base}/paths-info/{at}", path):
            asked = parse_qs(request.content.decode()).get("paths", [])
            out = []
            for p in asked:
                p = p.strip("/")
                if p in files:
                    out.append(self._entry(p, files[p]))
                elif any(f.startswith(p + "/") for f in files):
                    out.append(self._folder(p))
            return _json(200, out)
        prefix = re.escape(f"/{'datasets/' if kind == 'datasets' else ''}{repo_id}")
        if m := re.fullmatch(rf"{prefix}/resolve/{at}/(?P<file>.+)", path):
            f = m.group("file")
            if f not in files:
                return _error(404, "Entry not found", code="EntryNotFound")
            headers = {"X-Repo-Commit": sha, "ETag": f'"{self._etag(f, files[f])}"',
                       "Content-Length": str(len(files[f]))}
            if request.method == "HEAD":
                return httpx2.Response(200, headers=headers)
            return httpx2.Response(200, headers=headers, content=files[f])
        if re.fullmatch(rf"{prefix}/resolve/[^/]+/.+", path):
            return _error(404, "Invalid rev id", code="RevisionNotFound")
        return _error(404, f"stub: no route for {request.method} {path}")

    def client(self):
        from huggingface_hub.utils._http import hf_request_event_hook

        return httpx2.Client(transport=httpx2.MockTransport(self.handler), follow_redirects=True,
                             event_hooks={"request": [hf_request_event_hook]})

    def serve(self) -> "HubServer":
        """This stub on a loopback port (a context manager); its `endpoint` is the value for HF_ENDPOINT."""
        return HubServer(self)


class HubServer(LocalServer):
    """A stub's `handler` behind a real HTTP server: each request is handed over as an httpx2.Request and the
    httpx2.Response it returns is written back (status, headers, body; no body for HEAD)."""

    def __init__(self, stub):
        self.stub = stub

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the HubServer first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    class handler(BaseHTTPRequestHandler):
        owner: "HubServer"
        protocol_version = "HTTP/1.1"

        def _answer(self):
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(size) if size else b""
            request = httpx2.Request(self.command, f"http://{self.headers.get('Host', 'hub')}{self.path}",
                                     headers=dict(self.headers), content=body)
            response = self.owner.stub.handler(request)
            content = response.content
            self.send_response(response.status_code)
            for k, v in response.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", response.headers.get("Content-Length", str(len(content))))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_HEAD = do_POST = _answer

        def log_message(self, *args):
            pass
