"""Hugging Face Hub store: the checkpoint, its README.md card and the manifest in ONE commit.

A Hub commit is atomic, so the manifest appears together with every file or not at all. The token comes
from HF_TOKEN or from a Prefect Secret block; it is checked before any request and never appears in an
error message. Transient Hub errors (429, 5xx, dropped connections) are retried with backoff; 401/403/404
are not.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from components.digests import FileStamp, sha256_file
from components.redaction import scrub
from components.stores.base import (MANIFEST, CheckpointNotFound, Published, StoreError, manifest, manifest_bytes,
                                     name_problems, published, safe_key_path)

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
RETRY_STATUS = {429, 500, 502, 503, 504}
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


def validate_repo_id(repo_id: str) -> str:
    """`namespace/name`, each part letters, digits, '-', '_', '.', not starting/ending with '-'/'.', no '--'/'..'."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2:
        raise ValueError(f"Hub repo id {repo_id!r} must be 'namespace/name'")
    for part in parts:
        if not _NAME_RE.match(part) or "--" in part or ".." in part:
            raise ValueError(f"Hub repo id {repo_id!r}: {part!r} may hold only letters, digits, '-', '_', '.' "
                             "(at most 96, not starting or ending with '-' or '.', no '--' or '..')")
    return repo_id


class HubStore:
    """Publish to a Hub model repo: `repo` is 'namespace/name', or a namespace alone (repo = namespace/<name>).

    Small files go inline in the commit; LFS-mode files (weights) are uploaded first, with Xet when hf_xet is
    installed (huggingface_hub's default), else through the LFS batch API (also with HF_HUB_DISABLE_XET=1).
    """

    kind = "hub"

    def __init__(self, repo: str, private: bool = True, endpoint: str | None = None, token_secret: str | None = None,
                 max_retries: int = 4, retry_wait: float = 1.0, max_wait: float = 30.0, num_threads: int = 4):
        if not isinstance(repo, str) or not repo:
            raise ValueError("a Hub store needs a repo id (namespace/name) or a namespace")
        if "/" in repo:
            validate_repo_id(repo)
        else:
            validate_repo_id(f"{repo}/x")
        self.repo, self.private, self.token_secret = repo, private, token_secret
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.max_retries, self.retry_wait, self.max_wait = max_retries, retry_wait, max_wait
        self.num_threads = num_threads

    def repo_id(self, name: str) -> str:
        if "/" in self.repo:
            return self.repo
        safe_key_path(name)
        if "/" in name:
            raise ValueError(f"checkpoint name {name!r} cannot be a Hub repo name (it has a '/')")
        return validate_repo_id(f"{self.repo}/{name}")

    def problems(self, name: str | None) -> list[str]:
        """What would stop publishing `name` here (one line each, with the fix), without a request: a name that is no
        repo name, offline mode, no token."""
        from huggingface_hub import constants

        out = name_problems(self.repo_id, name)
        if constants.is_offline_mode():
            out.append(f"HF_HUB_OFFLINE is set: cannot publish to the Hub at {self.endpoint}; unset it or drop this store")
        try:
            self._token()
        except StoreError as e:
            out.append(str(e))
        return out

    # --- credentials and errors ----------------------------------------------------------------

    def _token(self) -> str:
        if self.token_secret:
            try:
                from prefect.blocks.system import Secret

                token = Secret.load(self.token_secret).get()
            except Exception as e:  # noqa: BLE001
                raise StoreError(f"cannot load the Prefect Secret block {self.token_secret!r} holding the Hub token: "
                                 f"{type(e).__name__}") from None
            if not isinstance(token, str) or not token.strip():
                raise StoreError(f"the Prefect Secret block {self.token_secret!r} holds no Hub token")
            return token.strip()
        token = os.environ.get("HF_TOKEN", "").strip()
        if not token:
            raise StoreError(f"no Hugging Face token to publish to {self.endpoint}: set HF_TOKEN, or name a Prefect "
                             "Secret block holding it in the store's `credentials`")
        return token

    @staticmethod
    def _status(e: BaseException) -> int | None:
        """HTTP status of `e` or of an exception it wraps (huggingface_hub wraps LFS upload errors)."""
        from huggingface_hub.errors import HfHubHTTPError

        seen = 0
        while e is not None and seen < 10:
            if isinstance(e, HfHubHTTPError) and e.response is not None:
                return e.response.status_code
            e = e.__cause__ or e.__context__
            seen += 1
        return None

    @staticmethod
    def _retry_after(e: BaseException) -> float | None:
        resp = getattr(e, "response", None)
        value = resp.headers.get("Retry-After") if resp is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @staticmethod
    def _transient(e: BaseException) -> bool:
        import httpx

        seen = 0
        while e is not None and seen < 10:
            if isinstance(e, (httpx.TransportError,)):
                return True
            e = e.__cause__ or e.__context__
            seen += 1
        return False

    def _error(self, e: BaseException, doing: str, repo_id: str, token: str | None) -> StoreError:
        if isinstance(e, StoreError):
            return e
        status = self._status(e)
        where = f"{repo_id} at {self.endpoint}"
        if status == 401:
            msg = f"{doing}: the Hub refused the token for {where} (401); check HF_TOKEN or the Secret block"
        elif status == 403:
            msg = f"{doing}: the token may not write to {where} (403); it needs write access to that namespace"
        elif status == 404:
            msg = f"{doing}: {where} not found (404), or the token cannot see it"
        elif status is not None:
            msg = f"{doing}: the Hub answered {status} for {where}"
        else:
            msg = f"{doing}: {type(e).__name__} talking to {where}"
        detail = scrub(str(e), token).strip().splitlines()
        if detail:
            msg += f": {detail[0][:300]}"
        return StoreError(scrub(msg, token))

    def _call(self, fn, doing: str, repo_id: str, token: str):
        """Run fn(), retrying 429/5xx/transport errors with exponential backoff (Retry-After honoured)."""
        wait = self.retry_wait
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except StoreError:
                raise
            except Exception as e:  # noqa: BLE001
                status = self._status(e)
                retry = status in RETRY_STATUS or (status is None and self._transient(e))
                if not retry or attempt == self.max_retries:
                    raise self._error(e, doing, repo_id, token) from None
                delay = min(self.max_wait, self._retry_after(e) or wait)
                log.warning("%s: %s, retrying in %.1f s (%d/%d)", doing, status or type(e).__name__, delay,
                            attempt + 1, self.max_retries)
                time.sleep(delay)
                wait = min(self.max_wait, wait * 2)

    def _api(self, token: str):
        from huggingface_hub import HfApi, constants

        if constants.is_offline_mode():
            raise StoreError(f"HF_HUB_OFFLINE is set: cannot reach the Hub at {self.endpoint}; unset it to publish")
        return HfApi(endpoint=self.endpoint, token=token, library_name="quantflow")

    # --- interface -----------------------------------------------------------------------------

    def _head(self, api, repo_id: str, token: str) -> tuple[str | None, dict | None]:
        """The commit `main` points at and the manifest published there (None: empty repo, or no manifest)."""
        import json

        info = self._call(lambda: api.model_info(repo_id, revision="main"), "reading the repo", repo_id, token)
        if MANIFEST not in {s.rfilename for s in info.siblings or []}:
            return info.sha, None
        with tempfile.TemporaryDirectory(prefix="qf-hub-") as cache:
            path = self._call(lambda: api.hf_hub_download(repo_id, MANIFEST, revision=info.sha, cache_dir=cache),
                              "reading the published manifest", repo_id, token)
            return info.sha, json.loads(Path(path).read_text())

    def _commit_problems(self, api, repo_id: str, rev: str, src: Path, m: dict, body: bytes, token: str) -> list[str]:
        """What the commit `rev` holds that is not the manifest's: per file size, then the LFS sha256 or git blob id."""
        from huggingface_hub import hf_hub_url

        out = []
        for path, size, sha256, local in [(f["path"], f["size"], f["sha256"], src / f["path"]) for f in m["files"]] + \
                [(MANIFEST, len(body), hashlib.sha256(body).hexdigest(), body)]:
            url = hf_hub_url(repo_id, path, revision=rev, endpoint=self.endpoint)
            meta = self._call(lambda url=url: api.get_hf_file_metadata(url=url, token=token),
                              f"checking {path} in the commit", repo_id, token)
            etag = (meta.etag or "").strip('"')
            if meta.size != size:
                out.append(f"{path} has {meta.size} bytes, the manifest says {size}")
            elif len(etag) == 64:  # LFS (or Xet) file: the Hub names it by its sha256
                if etag != sha256:
                    out.append(f"{path}: LFS sha256 {etag[:12]}... is not the manifest's")
            elif etag and etag != _git_blob_id(local):
                out.append(f"{path}: git blob {etag[:12]}... is not the manifest's file")
        return out

    def put(self, src: Path, name: str, meta: dict, known: dict[str, FileStamp] | None = None) -> Published:
        from huggingface_hub import CommitOperationAdd

        src = Path(src)
        repo_id = self.repo_id(name)
        m = manifest(src, meta, known)
        changed = [f["path"] for f in m["files"] if sha256_file(src / f["path"]) != f["sha256"]]
        if changed:  # checked before the commit: a Hub commit cannot be taken back
            raise StoreError(f"not publishing {src}: {', '.join(changed[:3])} no longer match their recorded sha256 "
                             "(changed since the checkpoint was made); rerun to recompute it")
        token = self._token()  # fails before any request
        api = self._api(token)
        body = manifest_bytes(m)

        def operations():  # fresh objects per attempt: huggingface_hub mutates them
            ops = [CommitOperationAdd(path_in_repo=f["path"], path_or_fileobj=str(src / f["path"])) for f in m["files"]]
            return ops + [CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=body)]

        self._call(lambda: api.create_repo(repo_id, private=self.private, exist_ok=True, repo_type="model"),
                   "creating the repo", repo_id, token)
        head, old = self._head(api, repo_id, token)
        if old == m and not self._commit_problems(api, repo_id, head, src, m, body, token):
            log.info("%s/%s already holds this content at %s", self.endpoint, repo_id, head)
            return published(self.kind, f"{self.endpoint}/{repo_id}", m).model_copy(update={"revision": head})
        info = self._call(lambda: api.create_commit(
            repo_id, operations(), repo_type="model", num_threads=self.num_threads,
            commit_message=f"quantflow: publish {name}",
            commit_description=f"{len(m['files'])} files and {MANIFEST}, published by quantflow."),
            f"publishing {name!r}", repo_id, token)
        if problems := self._commit_problems(api, repo_id, info.oid, src, m, body, token):
            raise StoreError(f"published {name!r} to {self.endpoint}/{repo_id}@{info.oid}, but that commit does not hold "
                             f"the manifest's files ({'; '.join(problems[:3])}): do not use it; rerun to publish again")
        if old is not None and old != m:
            log.warning("%s/%s: other content under an existing name: published as new revision %s; the previous "
                        "revision %s stays reachable (%s/%s/tree/%s)", self.endpoint, repo_id, info.oid, head,
                        self.endpoint, repo_id, head)
        log.info("published %s/%s at %s", self.endpoint, repo_id, info.oid)
        return published(self.kind, f"{self.endpoint}/{repo_id}", m).model_copy(update={"revision": info.oid})

    def get(self, name: str, dest: Path, revision: str | None = None) -> Path:
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

        dest = Path(dest)
        repo_id = self.repo_id(name)
        token = self._token()
        api = self._api(token)
        rev = revision or self._call(lambda: api.repo_info(repo_id, repo_type="model", revision="main").sha,
                                     f"fetching {name!r}", repo_id, token)
        with tempfile.TemporaryDirectory(prefix="qf-hub-") as cache:
            def download(path: str) -> Path:
                return Path(api.hf_hub_download(repo_id, path, revision=rev, cache_dir=cache)).resolve()

            try:
                raw = download(MANIFEST).read_bytes()
            except (EntryNotFoundError, RevisionNotFoundError):
                raise CheckpointNotFound(f"no complete checkpoint {name!r} in {self.endpoint}/{repo_id} "
                                         "(manifest missing)") from None
            except Exception as e:  # noqa: BLE001
                raise self._error(e, f"fetching {name!r}", repo_id, token) from None
            import json

            m = json.loads(raw)
            dest.mkdir(parents=True, exist_ok=True)
            base = dest.resolve()
            for f in m["files"]:
                rel = safe_key_path(f["path"], "file path in manifest")
                out = dest / rel
                if base not in out.resolve().parents:
                    raise StoreError(f"manifest path {rel!r} escapes {dest}")
                got_path = self._call(lambda rel=rel: download(rel), f"fetching {rel}", repo_id, token)
                got = sha256_file(got_path)
                if got != f["sha256"]:
                    raise StoreError(f"checksum mismatch for {rel} in {self.endpoint}/{repo_id}@{rev}: "
                                     f"manifest says {f['sha256']}, downloaded {got}")
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(got_path), out)
        (dest / MANIFEST).write_bytes(raw)
        return dest


def _git_blob_id(content: Path | bytes) -> str:
    """The id git (and the Hub, for a file not in LFS) gives a file's content."""
    data = content if isinstance(content, bytes) else Path(content).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
