"""A small fake Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub 1.x uses to publish and fetch a model.

Speaks (model repos only):
  POST /api/repos/create                               create_repo (409 if it exists)
  POST /api/validate-yaml                              README.md metadata check made by create_commit
  POST /api/models/{ns}/{name}/preupload/{rev}         "regular" or "lfs" upload mode per file, remote oid
  POST /{ns}/{name}.git/info/lfs/objects/batch         LFS batch API: basic transfer, or HF multipart
  PUT  /_lfs/{oid}, PUT /_lfs/{oid}/part/{n}           LFS object / part upload (no auth, like presigned URLs)
  POST /_lfs/{oid}/complete, POST /_lfs/{oid}/verify   multipart completion, verify
  POST /api/models/{ns}/{name}/commit/{rev}            NDJSON commit: inline base64 files + lfsFile pointers
  GET  /api/models/{ns}/{name}[/revision/{rev}]        repo info (sha, private, siblings)
  GET  /api/models/{ns}/{name}/tree/{rev}[/{path}]     the files (recursively), as snapshot_download lists them
  GET|HEAD /{ns}/{name}/resolve/{rev}/{path}           file download
  GET  /api/models/{ns}/{name}/xet-write-token/{rev}   answered 501: this fake does not speak Xet

Large files: preupload says "lfs" for files of at least `lfs_threshold` bytes (or LFS-typical suffixes).
huggingface_hub 1.x with hf_xet installed then uploads them with Xet (no negotiation through the LFS batch
API), which this fake cannot store: the xet token request gets a 501 and the upload fails. With
HF_HUB_DISABLE_XET=1 (``huggingface_hub.constants.HF_HUB_DISABLE_XET = True``) the client uses the LFS
batch API, which is fully served here (basic PUT, or multipart above `multipart_threshold`).

Every request is recorded in `requests`; `fail(status, times, route)` makes the next `times` matching
requests fail (5xx, 429 with Retry-After, 401 ...). Received files are kept in `repos[repo_id].files`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".zip", ".tar", ".gz")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    summary: str
    description: str
    paths: list[str]  # every path the commit touched
    inline: list[str]  # sent base64 in the NDJSON payload
    lfs: list[str]  # sent as lfsFile pointers (content through the LFS batch API)


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs: dict[str, str] = field(default_factory=dict)  # path -> sha256 of LFS files
    commits: list[Commit] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40


@dataclass
class Failure:
    status: int
    times: int
    route: str | None
    retry_after: float | None
    body: dict | None
    echo_token: bool


class FakeHub:
    def __init__(self, token: str | None = None, lfs_threshold: int = 1 << 20, multipart_threshold: int = 8 << 20,
                 multipart_chunk: int = 5 << 20):
        self.token = token or "fake-" + secrets.token_hex(16)
        self.lfs_threshold = lfs_threshold  # preupload answers 'lfs' from this size up
        self.multipart_threshold, self.multipart_chunk = multipart_threshold, multipart_chunk
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self._parts: dict[str, dict[int, bytes]] = {}
        self.requests: list[dict] = []
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self.url = ""
        self._server: ThreadingHTTPServer | None = None

    # --- test controls -------------------------------------------------------------------------

    def fail(self, status: int, times: int = 1, route: str | None = None, retry_after: float | None = None,
             body: dict | None = None, echo_token: bool = False) -> None:
        """The next `times` requests to `route` (None: any) answer `status`; 401s can echo the token back."""
        with self._lock:
            self._failures.append(Failure(status, times, route, retry_after, body, echo_token))

    def routes(self) -> list[str]:
        return [r["route"] for r in self.requests]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- dispatch ------------------------------------------------------------------------------

    def _injected(self, route: str) -> Failure | None:
        with self._lock:
            for f in self._failures:
                if f.times > 0 and (f.route is None or f.route == route):
                    f.times -= 1
                    return f
        return None


_REPO = r"(?P<repo>[^/]+/[^/]+?)"
ROUTES = [
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "validate-yaml", re.compile(r"^/api/validate-yaml$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "lfs-batch", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$")),
    ("PUT", "lfs-upload", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$")),
    ("PUT", "lfs-part", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})/part/(?P<n>\d+)$")),
    ("POST", "lfs-complete", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})/complete$")),
    ("POST", "lfs-verify", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$")),
    ("POST", "commit", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$")),
    ("GET", "xet-token", re.compile(rf"^/api/models/{_REPO}/xet-write-token/(?P<rev>[^/]+)$")),
    ("GET", "tree", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("GET", "info", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")),
    ("GET", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
    ("HEAD", "resolve", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]
NO_AUTH = {"lfs-upload", "lfs-part", "lfs-complete"}  # presigned-style URLs: the client sends no token


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub  # set on the subclass made per server

    def log_message(self, *args) -> None:  # quiet
        pass

    # --- plumbing ------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes | dict | list | None = None, headers: dict | None = None,
              head_only: bool = False) -> None:
        if isinstance(body, (dict, list)):
            raw = json.dumps(body).encode()
            ctype = "application/json"
        else:
            raw = body or b""
            ctype = "application/octet-stream"
        headers = {"Content-Type": ctype, **(headers or {})}
        self._status = self._entry["status"] = status  # logged before the client can see the answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.end_headers()
        if not head_only:
            self.wfile.write(raw)

    def _dispatch(self) -> None:
        hub = self.hub
        path = unquote(urlsplit(self.path).path)
        route, match = "unknown", None
        for method, name, rx in ROUTES:
            if method == self.command and (m := rx.match(path)):
                route, match = name, m
                break
        auth = self.headers.get("Authorization", "")
        body = self._body()
        self._status = 0
        self._entry = entry = {"method": self.command, "path": path, "route": route, "status": 0,
                               "authorized": auth == f"Bearer {hub.token}", "has_auth": bool(auth)}
        with hub._lock:
            hub.requests.append(entry)
        try:
            if (failure := hub._injected(route)) is not None:
                msg = failure.body or {"error": f"injected {failure.status}"}
                if failure.echo_token:
                    msg = {"error": f"Invalid credentials in Authorization header: {auth!r}"}
                hdrs = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
                if failure.status in (401, 403):
                    hdrs["X-Error-Message"] = msg["error"]
                self._send(failure.status, msg, hdrs)
            elif match is None:
                self._send(404, {"error": f"fake hub: no route for {self.command} {path}"})
            elif route not in NO_AUTH and not entry["authorized"]:
                self._send(401, {"error": "Invalid username or password."},
                           {"X-Error-Code": "RepoNotFound" if "repo" in match.groupdict() else "Unauthorized"})
            else:
                getattr(self, "_" + route.replace("-", "_"))(match, body)
        except Exception as e:  # noqa: BLE001 - report, never hang the client
            if not self._status:
                self._send(500, {"error": f"fake hub bug: {type(e).__name__}: {e}"})

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    def _repo(self, match) -> Repo | None:
        repo = self.hub.repos.get(match["repo"])
        if repo is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    # --- routes --------------------------------------------------------------------------------

    def _create(self, match, body: bytes) -> None:
        p = json.loads(body)
        repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else f"user/{p['name']}"
        private = p.get("visibility") == "private" or bool(p.get("private"))
        url = f"{self.hub.url}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub.repos:
                self._send(409, {"error": "You already created this model repo", "url": url})
                return
            self.hub.repos[repo_id] = Repo(repo_id, private)
        self._send(200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)})

    def _validate_yaml(self, match, body: bytes) -> None:
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, match, body: bytes) -> None:
        if (repo := self._repo(match)) is None:
            return
        files = []
        for f in json.loads(body)["files"]:
            lfs = f["size"] >= self.hub.lfs_threshold or f["path"].endswith(LFS_SUFFIXES)
            oid = None
            if f["path"] in repo.files:
                oid = repo.lfs.get(f["path"]) if lfs else git_blob_sha1(repo.files[f["path"]])
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        self._send(200, {"files": files})

    def _lfs_batch(self, match, body: bytes) -> None:
        if self._repo(match) is None:
            return
        p = json.loads(body)
        objects = []
        for o in p["objects"]:
            oid, size = o["oid"], o["size"]
            obj: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_objects:
                base = f"{self.hub.url}/_lfs/{oid}"
                if size > self.hub.multipart_threshold:
                    chunk = self.hub.multipart_chunk
                    parts = {str(i + 1): f"{base}/part/{i + 1}" for i in range(-(-size // chunk))}
                    upload = {"href": f"{base}/complete", "header": {"chunk_size": str(chunk), **parts}}
                else:
                    upload = {"href": base}
                obj["actions"] = {"upload": upload, "verify": {"href": f"{base}/verify"}}
            objects.append(obj)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def _store_lfs(self, oid: str, data: bytes) -> bool:
        if hashlib.sha256(data).hexdigest() != oid:
            self._send(400, {"error": f"sha256 of the uploaded content is not {oid}"})
            return False
        with self.hub._lock:
            self.hub.lfs_objects[oid] = data
        return True

    def _lfs_upload(self, match, body: bytes) -> None:
        if self._store_lfs(match["oid"], body):
            self._send(200, None, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_part(self, match, body: bytes) -> None:
        with self.hub._lock:
            self.hub._parts.setdefault(match["oid"], {})[int(match["n"])] = body
        self._send(200, None, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_complete(self, match, body: bytes) -> None:
        oid = match["oid"]
        p = json.loads(body)
        parts = self.hub._parts.get(oid, {})
        try:
            data = b"".join(parts[part["partNumber"]] for part in sorted(p["parts"], key=lambda x: x["partNumber"]))
        except KeyError as e:
            self._send(400, {"error": f"missing part {e}"})
            return
        if self._store_lfs(oid, data):
            self.hub._parts.pop(oid, None)
            self._send(200, {"success": True})

    def _lfs_verify(self, match, body: bytes) -> None:
        p = json.loads(body)
        data = self.hub.lfs_objects.get(match["oid"])
        if data is None or len(data) != p["size"]:
            self._send(404, {"error": "object not uploaded"})
        else:
            self._send(200, {"success": True})

    def _commit(self, match, body: bytes) -> None:
        if (repo := self._repo(match)) is None:
            return
        header, files, lfs = {}, {}, {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None:
                    self._send(422, {"error": f"LFS object {value['oid']} for {value['path']} was never uploaded"})
                    return
                files[value["path"]] = data
                lfs[value["path"]] = value["oid"]
            elif key in ("deletedFile", "deletedFolder"):
                files[value["path"]] = None
            else:
                self._send(400, {"error": f"unknown commit operation {key!r}"})
                return
        if header.get("parentCommit") and header["parentCommit"] != repo.sha:
            self._send(412, {"error": "parent commit is not the head of the branch"})
            return
        with self.hub._lock:
            for path, data in files.items():
                if data is None:
                    repo.files.pop(path, None)
                    repo.lfs.pop(path, None)
                else:
                    repo.files[path] = data
                    repo.lfs.pop(path, None)
            repo.lfs.update(lfs)
            oid = hashlib.sha1(repo.sha.encode() + body).hexdigest()
            repo.commits.append(Commit(oid, header.get("summary", ""), header.get("description", ""), sorted(files),
                                       sorted(p for p in files if p not in lfs and files[p] is not None), sorted(lfs)))
        self._send(200, {"commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                         "success": True})

    def _xet_token(self, match, body: bytes) -> None:
        self._send(501, {"error": "this fake hub does not speak Xet: set HF_HUB_DISABLE_XET=1"})

    def _info(self, match, body: bytes) -> None:
        if (repo := self._repo(match)) is None:
            return
        self._send(200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": repo.private,
                         "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def _tree(self, match, body: bytes) -> None:
        if (repo := self._repo(match)) is None:
            return
        if match["rev"] not in ("main", repo.sha):
            self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            return
        prefix = (match["path"] or "").strip("/")
        entries = []
        for path, data in sorted(repo.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if path in repo.lfs:
                entry["lfs"] = {"oid": repo.lfs[path], "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self._send(200, entries)

    def _resolve(self, match, body: bytes) -> None:
        if (repo := self._repo(match)) is None:
            return
        rev, path = match["rev"], match["path"]
        if rev not in ("main", repo.sha):
            self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
            return
        data = repo.files.get(path)
        if data is None:
            self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
            return
        etag = repo.lfs.get(path) or git_blob_sha1(data)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"'}
        if path in repo.lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": len(data)})
        self._send(200, data, headers, head_only=self.command == "HEAD")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up are no news
            super().handle_error(request, client_address)


@contextmanager
def fake_hub(**kwargs) -> Iterator[FakeHub]:
    """Serve a FakeHub on 127.0.0.1 (a free port) in a background thread; shut it down on exit."""
    hub = FakeHub(**kwargs)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = _Server(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    hub._server = server
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


SEED_BASES = {"meta-llama/Meta-Llama-3.1-70B-Instruct": "Meta-Llama-3.1-70B-Instruct.json",  # seed card 000
              "meta-llama/Llama-3.3-70B-Instruct": "Llama-3.3-70B-Instruct.json"}  # seed card 002


@contextmanager
def seed_bases(cache) -> Iterator[FakeHub]:
    """The seed cards' 70B bases on a fake Hub, each repo holding only its config.json (benchmarks/configs/: what
    sizing a pod reads, no weights), and huggingface_hub pointed at it: online, Xet off, a fresh cache under `cache`."""
    import os
    from pathlib import Path
    from unittest import mock

    from huggingface_hub import HfApi, constants

    configs = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    with fake_hub() as hub, mock.patch.multiple(
            constants, HF_HUB_OFFLINE=False, HF_HUB_DISABLE_XET=True, ENDPOINT=hub.url, HF_HUB_CACHE=str(cache),
            HUGGINGFACE_CO_URL_TEMPLATE=hub.url + "/{repo_id}/resolve/{revision}/{filename}"), \
            mock.patch.dict(os.environ, {"HF_TOKEN": hub.token}):
        api = HfApi(endpoint=hub.url, token=hub.token)
        for repo, name in SEED_BASES.items():
            api.create_repo(repo)
            api.upload_file(path_or_fileobj=str(configs / name), path_in_repo="config.json", repo_id=repo)
        yield hub
