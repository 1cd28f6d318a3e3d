"""A loopback fake of the Hugging Face Hub: exactly the calls `huggingface_hub` 2.4 makes to
create a dataset repo, a branch, and commits with regular and LFS files (xet disabled).

    with FakeHub(token="hf_test") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        ...
        hub.files("me/data", "main")     # {path: bytes} at the head of the branch
        hub.history("me/data", "main")   # commit messages, newest first

Endpoints (every one but the presigned LFS PUT wants `Authorization: Bearer <token>`, else 401):

    POST /api/repos/create                                   {name, organization, visibility, type}
    GET  /api/datasets/{ns}/{name}[/revision/{rev}]          repo info (id, private, sha)
    POST /api/datasets/{ns}/{name}/branch/{branch}           {startingPoint?}; 409 if it exists
    GET  /api/datasets/{ns}/{name}/tree/{rev}[/{path}]       ?recursive=; paged by `page_size` (Link header)
    POST /api/validate-yaml                                  README.md front matter must be a YAML mapping
    POST /api/datasets/{ns}/{name}/preupload/{rev}           *.parquet -> "lfs", else "regular"; remote oid
    POST /datasets/{ns}/{name}.git/info/lfs/objects/batch    basic transfer; no actions if already stored
    PUT  /_lfs/{sha256}?sig=...                              presigned upload (no auth), sha256 checked
    POST /_lfs/verify                                        {oid, size}
    POST /api/datasets/{ns}/{name}/commit/{rev}              NDJSON: header, file, lfsFile, deletedFile/Folder

A new repo starts like on the Hub: branch `main` with one commit holding `.gitattributes`.
`fail_commits` holds 1-based numbers of commit requests to answer with a 500 (a crash mid-publish);
`echo_auth_in_errors` makes error bodies repeat the Authorization header, as a careless proxy
might, so a test can check that the client scrubs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from support.loopback import LoopbackHTTPServer

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
_REPO = r"(?P<type>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+?)"


def git_oid(content: bytes) -> str:
    """The git blob id (what the Hub calls `oid` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class Blob:
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(self.content), "oid": git_oid(self.content)}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": 134}
        return entry

    @property
    def remote_oid(self) -> str:
        """What preupload reports: sha256 for LFS files, the git blob id for regular ones."""
        return self.sha256 if self.lfs else git_oid(self.content)


@dataclass
class Commit:
    oid: str
    message: str
    parent: "Commit | None"
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    branches: dict[str, Commit] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class FakeHub:
    """ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread; state behind one lock."""

    def __init__(self, token: str, page_size: int = 1000) -> None:
        self.token = token
        self.page_size = page_size
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        """(method, path without query) of every request, in arrival order."""
        self.fail_commits: set[int] = set()
        self.echo_auth_in_errors = False
        self._commit_requests = 0
        self._secret = b"presign-secret"
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = LoopbackHTTPServer(_handler(self))

    @property
    def url(self) -> str:
        return self._server.origin

    def __enter__(self) -> "FakeHub":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    # ---- what tests look at -------------------------------------------------------------

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            head = self.repos[repo_id].branches[revision]
            return {path: blob.content for path, blob in head.files.items()}

    def blobs(self, repo_id: str, revision: str = "main") -> dict[str, Blob]:
        with self._lock:
            return dict(self.repos[repo_id].branches[revision].files)

    def history(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit messages of a branch, newest first."""
        with self._lock:
            commit, out = self.repos[repo_id].branches[revision], []
            while commit is not None:
                out.append(commit.message)
                commit = commit.parent
            return out

    def count(self, method: str, pattern: str) -> int:
        """How many requests had this method and a path matching the regex `pattern`."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    def create_repo(self, repo_id: str, private: bool, repo_type: str = "dataset") -> Repo:
        with self._lock:
            return self._new_repo(repo_id, repo_type, private)

    # ---- state changes (called with the lock held) -------------------------------------

    def _new_repo(self, repo_id: str, repo_type: str, private: bool) -> Repo:
        repo = Repo(repo_id, repo_type, private)
        repo.branches["main"] = self._commit(None, "initial commit", {".gitattributes": Blob(GITATTRIBUTES, False)})
        self.repos[repo_id] = repo
        return repo

    def _commit(self, parent: Commit | None, message: str, files: dict[str, Blob]) -> Commit:
        digest = hashlib.sha1(f"{next(self._ids)}:{message}".encode())
        for path in sorted(files):
            digest.update(f"{path}:{files[path].sha256}".encode())
        return Commit(digest.hexdigest(), message, parent, files)

    def sign(self, oid: str) -> str:
        return hmac.new(self._secret, oid.encode(), "sha256").hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    routes = [
        ("POST", r"^/api/repos/create$", _create_repo),
        ("GET", rf"^/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?$", _repo_info),
        ("POST", rf"^/api/{_REPO}/branch/(?P<branch>[^/]+)$", _create_branch),
        ("GET", rf"^/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", _tree),
        ("POST", r"^/api/validate-yaml$", _validate_yaml),
        ("POST", rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$", _preupload),
        ("POST", rf"^/{_REPO}\.git/info/lfs/objects/batch$", _lfs_batch),
        ("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", _lfs_put),
        ("POST", r"^/_lfs/verify$", _lfs_verify),
        ("POST", rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$", _commit_endpoint),
    ]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without this, Nagle + delayed ACK cost 40 ms a reply
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            body = self._read_body()
            with hub._lock:
                hub.requests.append((method, url.path))
            try:
                for m, pattern, fn in routes:
                    match = re.match(pattern, url.path)
                    if m == method and match:
                        if fn is not _lfs_put and self.headers.get("Authorization") != f"Bearer {hub.token}":
                            raise HttpError(401, "Invalid credentials in Authorization header")
                        params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        query = {k: v[0] for k, v in parse_qs(url.query).items()}
                        with hub._lock:
                            status, payload, headers = fn(hub, params, query, body)
                        return self._send(status, payload, headers)
                raise HttpError(404, f"no route for {method} {url.path}")
            except HttpError as e:
                message = e.message
                if hub.echo_auth_in_errors:
                    message += f" (you sent Authorization: {self.headers.get('Authorization')})"
                headers = {"X-Error-Message": e.message}
                if e.code:
                    headers["X-Error-Code"] = e.code
                self._send(e.status, {"error": message, **e.extra}, headers)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


Reply = tuple[int, Any, dict[str, str] | None]


def _repo(hub: FakeHub, p: dict[str, str]) -> Repo:
    repo = hub.repos.get(f"{p['ns']}/{p['name']}")
    if repo is None or f"{repo.repo_type}s" != p["type"]:
        raise HttpError(404, "Repository not found", "RepoNotFound")
    return repo


def _head(repo: Repo, rev: str) -> Commit:
    if rev not in repo.branches:
        raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    return repo.branches[rev]


def _create_repo(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    req = json.loads(body)
    repo_id = f"{req['organization']}/{req['name']}"
    if repo_id in hub.repos:
        # like the Hub: the 409 still carries the url, which `create_repo(exist_ok=True)` returns
        url = f"{hub.url}/{hub.repos[repo_id].repo_type}s/{repo_id}"
        raise HttpError(409, "You already created this repo", url=url)
    repo = hub._new_repo(repo_id, req.get("type") or "model", req.get("visibility") == "private")
    return 200, {"url": f"{hub.url}/{repo.repo_type}s/{repo_id}", "name": repo_id}, None


def _repo_info(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    repo = _repo(hub, p)
    head = _head(repo, p.get("rev", "main"))
    siblings = [{"rfilename": path} for path in sorted(head.files)]
    return 200, {"id": repo.repo_id, "private": repo.private, "sha": head.oid, "siblings": siblings}, None


def _create_branch(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    repo = _repo(hub, p)
    start = json.loads(body or b"{}").get("startingPoint", "main")
    if p["branch"] in repo.branches:
        raise HttpError(409, "Reference already exists")
    repo.branches[p["branch"]] = _head(repo, start)
    return 200, {}, None


def _tree(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    repo = _repo(hub, p)
    head = _head(repo, p["rev"])
    prefix = p["path"].strip("/") + "/" if p.get("path") else ""
    recursive = q.get("recursive", "false").lower() in ("1", "true")
    entries: dict[str, dict] = {}
    for path, blob in sorted(head.files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):  # folders on the way
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": git_oid(folder.encode())})
        if recursive or len(parts) == 1:
            entries[path] = blob.tree_entry(path)
    if prefix and not entries:
        raise HttpError(404, f"{p['path']} does not exist", "EntryNotFound")
    items = sorted(entries.values(), key=lambda e: e["path"])
    start = int(q.get("cursor", 0))
    page, headers = items[start:start + hub.page_size], None
    if start + hub.page_size < len(items):
        base = f"{hub.url}/api/{p['type']}/{repo.repo_id}/tree/{quote(p['rev'], safe='')}"
        if p.get("path"):
            base += "/" + quote(p["path"], safe="")
        nxt = f"{base}?recursive={str(recursive).lower()}&cursor={start + hub.page_size}"
        headers = {"Link": f'<{nxt}>; rel="next"'}
    return 200, page, headers


def _validate_yaml(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    content = json.loads(body)["content"]
    match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
    if match:
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            return 400, {"errors": [{"message": f"invalid YAML: {e}"}]}, None
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}, None
    return 200, {"errors": [], "warnings": []}, None


def _preupload(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    head = _head(_repo(hub, p), p["rev"])
    files = []
    for f in json.loads(body)["files"]:
        lfs = f["path"].endswith(".parquet") or f["size"] > 10 * 1024 * 1024
        remote = head.files.get(f["path"])
        files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                      "oid": remote.remote_oid if remote else None})
    return 200, {"files": files, "commitOid": head.oid}, None


def _lfs_batch(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    _repo(hub, p)
    req = json.loads(body)
    if req.get("operation") != "upload" or "basic" not in req.get("transfers", []):
        raise HttpError(400, "only basic uploads are supported")
    objects = []
    for obj in req["objects"]:
        out: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
        if obj["oid"] not in hub.lfs_store:
            href = f"{hub.url}/_lfs/{obj['oid']}?size={obj['size']}&sig={hub.sign(obj['oid'])}"
            out["actions"] = {"upload": {"href": href}, "verify": {"href": f"{hub.url}/_lfs/verify"}}
        objects.append(out)
    return 200, {"transfer": "basic", "objects": objects}, None


def _lfs_put(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    oid = p["oid"]
    if not hmac.compare_digest(q.get("sig", ""), hub.sign(oid)):
        raise HttpError(403, "bad signature")
    if hashlib.sha256(body).hexdigest() != oid or len(body) != int(q.get("size", -1)):
        raise HttpError(400, "content does not match the oid/size it was announced with")
    hub.lfs_store[oid] = body
    return 200, {}, None


def _lfs_verify(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    req = json.loads(body)
    stored = hub.lfs_store.get(req["oid"])
    if stored is None or len(stored) != req["size"]:
        raise HttpError(404, f"LFS object {req['oid']} not found")
    return 200, {}, None


def _commit_endpoint(hub: FakeHub, p: dict, q: dict, body: bytes) -> Reply:
    repo = _repo(hub, p)
    head = _head(repo, p["rev"])
    hub._commit_requests += 1
    if hub._commit_requests in hub.fail_commits:
        raise HttpError(500, "Internal Error (injected)")
    files, message = dict(head.files), None
    for line in body.decode().splitlines():
        item = json.loads(line)
        key, value = item["key"], item["value"]
        if key == "header":
            message = value["summary"]
        elif key == "file":
            files[value["path"]] = Blob(base64.b64decode(value["content"]), lfs=False)
        elif key == "lfsFile":
            if value["oid"] not in hub.lfs_store:
                raise HttpError(400, f"LFS object {value['oid']} of {value['path']} was never uploaded")
            files[value["path"]] = Blob(hub.lfs_store[value["oid"]], lfs=True)
        elif key == "deletedFile":
            if files.pop(value["path"], None) is None:
                raise HttpError(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            files = {k: v for k, v in files.items() if not k.startswith(value["path"].rstrip("/") + "/")}
        else:
            raise HttpError(400, f"unknown commit operation {key!r}")
    if not message:
        raise HttpError(400, "a commit needs a header with a summary")
    repo.branches[p["rev"]] = commit = hub._commit(head, message, files)
    url = f"{hub.url}/{p['type']}/{repo.repo_id}/commit/{commit.oid}"
    return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": ""}, None
