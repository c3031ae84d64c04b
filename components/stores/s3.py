"""S3-compatible object store (AWS S3, MinIO, SeaweedFS, ...): files first, the manifest last.

Layout: ``s3://<bucket>/<prefix>/<name>/<file>`` plus ``<prefix>/<name>/quantflow-manifest.json``.
Each object is uploaded with an S3 SHA256 checksum (``ChecksumAlgorithm``; a multipart object gets the composite
checksum of its parts), which the server computes from what it received: after the upload every object's checksum is
compared with the one of the file whose sha256 the manifest lists, and a re-run skips an object only when its
checksum matches. Other content under an existing name first copies the previous revision (files and manifest) to
``<prefix>/.revisions/<name>/<revision>/``. Readers trust a checkpoint only once its manifest exists.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from concurrent.futures import Future
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.utils import ChunksizeAdjuster
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from components.digests import FileStamp, sha256_file
from components.stores.base import (MANIFEST, CheckpointNotFound, Published, StoreError, manifest, manifest_bytes,
                                     name_problems, published, revision_of,
                                     safe_key_path)

log = logging.getLogger(__name__)

MiB = 1 << 20
SHA256_META = "sha256"  # sent as x-amz-meta-sha256
REVISIONS = ".revisions"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden", "InvalidToken",
              "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "UnrecognizedClientException"}
MISSING_BUCKET_CODES = {"NoSuchBucket"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix"); the prefix may be empty."""
    if not uri or not uri.startswith("s3://"):
        raise ValueError(f"S3 store uri must look like s3://bucket/prefix, got {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


class S3Store:
    """Publish checkpoints to an S3 bucket.

    Credentials come from the standard AWS chain (environment, shared config/credentials files, instance
    roles), or from a Prefect ``AwsCredentials`` block when ``credentials_block`` names one.
    """

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 create_bucket: bool = False, credentials_block: str | None = None,
                 multipart_threshold: int = 64 * MiB, multipart_chunksize: int = 16 * MiB, max_concurrency: int = 8,
                 keep_revisions: bool = True):
        if not _BUCKET_RE.match(bucket or "") or ".." in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r} (3-63 lowercase letters, digits, '.', '-')")
        prefix = (prefix or "").strip("/")
        if prefix:
            safe_key_path(prefix, "S3 prefix")
        self.bucket, self.prefix, self.create_bucket = bucket, prefix, create_bucket
        # False for the artifact store (components/remote.py): a copy there is a cache, replaced, never a revision
        self.keep_revisions = keep_revisions
        self.region = region
        self.credentials_block = credentials_block
        self.transfer_config = TransferConfig(multipart_threshold=multipart_threshold,
                                              multipart_chunksize=multipart_chunksize,
                                              max_concurrency=max_concurrency, use_threads=True)
        session, client_kwargs = self._session(endpoint_url, region)
        self.endpoint_url = client_kwargs.get("endpoint_url")
        cfg = Config(retries={"mode": "standard", "max_attempts": 5},
                     s3={"addressing_style": "path"} if self.endpoint_url else None,
                     max_pool_connections=max(10, max_concurrency * 2))
        self.client = session.client("s3", config=cfg, **client_kwargs)
        self._bucket_checked = False

    @classmethod
    def from_uri(cls, uri: str, **kwargs) -> "S3Store":
        bucket, prefix = parse_s3_uri(uri)
        return cls(bucket, prefix, **kwargs)

    # --- helpers -------------------------------------------------------------------------------

    def _session(self, endpoint_url: str | None, region: str | None) -> tuple[boto3.session.Session, dict]:
        kwargs: dict = {}
        if self.credentials_block:
            from prefect_aws import AwsCredentials  # only when a block is named: loading it needs the Prefect API

            try:
                creds = AwsCredentials.load(self.credentials_block)
            except Exception as e:  # noqa: BLE001 - any load failure is a configuration error
                raise StoreError(f"cannot load the Prefect AwsCredentials block {self.credentials_block!r}: "
                                 f"{type(e).__name__}") from None
            session = creds.get_boto3_session()
            params = creds.aws_client_parameters
            endpoint_url = endpoint_url or params.endpoint_url
            region = region or creds.region_name
        else:
            session = boto3.session.Session()
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        if region:
            kwargs["region_name"] = region
        return session, kwargs

    @property
    def where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'AWS S3'}"

    def _root(self, name: str) -> str:
        safe_key_path(name)
        return f"{self.prefix}/{name}/" if self.prefix else f"{name}/"

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._root(name)}"

    def _error(self, e: Exception, doing: str) -> StoreError:
        """A StoreError naming the bucket and endpoint, never the credentials."""
        if isinstance(e, StoreError):
            return e
        if isinstance(e, NoCredentialsError):
            return StoreError(f"{doing}: no AWS credentials found for {self.where} (set AWS_ACCESS_KEY_ID/"
                              "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a credentials block)")
        if isinstance(e, EndpointConnectionError):
            return StoreError(f"{doing}: cannot reach {self.where}")
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in MISSING_BUCKET_CODES:
                return StoreError(f"{doing}: {self.where} does not exist (create it, or set create_bucket=True)")
            if code in AUTH_CODES or status in (401, 403):
                return StoreError(f"{doing}: S3 refused the credentials for {self.where} ({code or status}); check "
                                  "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the credentials block, "
                                  "and that they may read and write this bucket")
            return StoreError(f"{doing}: S3 error {code or status} on {self.where}: {err.get('Message', '')}")
        return StoreError(f"{doing}: {type(e).__name__} on {self.where}: {e}")

    def problems(self, name: str | None) -> list[str]:
        """What would stop publishing `name` here (one line each, with the fix): a name that is no plain key, then one
        listing call under the prefix with short timeouts and no retries (endpoint reachable, credentials accepted,
        bucket there unless create_bucket). Creates nothing."""
        out = name_problems(self._root, name)
        session, kwargs = self._session(self.endpoint_url, self.region)
        cfg = Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 2},
                     s3={"addressing_style": "path"} if kwargs.get("endpoint_url") else None)
        client = session.client("s3", config=cfg, **kwargs)
        try:
            client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in MISSING_BUCKET_CODES or not self.create_bucket:
                out.append(str(self._error(e, "checking the bucket")))
        except NoCredentialsError as e:  # boto3 stops before sending: is the endpoint there at all?
            unreachable = self._unreachable(session, kwargs, cfg)
            out.append(f"checking the bucket: cannot reach {self.where} ({unreachable}): check endpoint_url and that "
                       "the server runs; no AWS credentials were found either (set AWS_ACCESS_KEY_ID/"
                       "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a credentials block)" if unreachable
                       else str(self._error(e, "checking the bucket")))
        except Exception as e:  # noqa: BLE001
            out.append(str(self._error(e, "checking the bucket")))
        return out

    def _unreachable(self, session, kwargs: dict, cfg: Config) -> str | None:
        """Why the endpoint does not answer an unsigned request (any S3 answer, even AccessDenied, is an answer)."""
        from botocore import UNSIGNED

        client = session.client("s3", config=cfg.merge(Config(signature_version=UNSIGNED)), **kwargs)
        try:
            client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError:
            return None
        except Exception as e:  # noqa: BLE001 - no answer: the reason, by its type
            return type(e).__name__
        return None

    def _ensure_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            # Listing under our prefix only: policies scoped to a prefix allow that, not a whole-bucket listing.
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in MISSING_BUCKET_CODES or not self.create_bucket:
                raise self._error(e, "checking the bucket") from None
            log.info("creating %s", self.where)
            kwargs = {}
            region = self.region or self.client.meta.region_name
            if region and region != "us-east-1" and not self.endpoint_url:
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.client.create_bucket(Bucket=self.bucket, **kwargs)
            except ClientError as ce:
                if ce.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",):
                    raise self._error(ce, "creating the bucket") from None
        except Exception as e:  # noqa: BLE001
            raise self._error(e, "checking the bucket") from None
        self._bucket_checked = True

    def _head(self, key: str) -> dict | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _read_manifest(self, root: str) -> dict | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=root + MANIFEST)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return json.loads(body)

    def abort_incomplete_uploads(self, root: str) -> int:
        """Abort multipart uploads left under `root` by an interrupted run; returns how many."""
        n = 0
        kwargs: dict = {"Bucket": self.bucket, "Prefix": root}
        while True:
            try:
                page = self.client.list_multipart_uploads(**kwargs)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") != "AccessDenied":
                    raise
                log.warning("may not list multipart uploads in %s: incomplete uploads under %s stay until the "
                            "bucket's lifecycle rule removes them", self.where, root)
                return n
            for up in page.get("Uploads", []) or []:
                log.info("aborting incomplete multipart upload of s3://%s/%s", self.bucket, up["Key"])
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
            if not page.get("IsTruncated"):
                return n
            kwargs["KeyMarker"] = page.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")

    def _list_keys(self, root: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            keys += [o["Key"] for o in page.get("Contents", []) or []]
        return keys

    # --- interface -----------------------------------------------------------------------------

    def revision_root(self, name: str, revision: str) -> str:
        """Where an earlier revision of `name` stays once other content was published under that name."""
        safe_key_path(name)
        return f"{self.prefix}/{REVISIONS}/{name}/{revision}/" if self.prefix else f"{REVISIONS}/{name}/{revision}/"

    def put(self, src: Path, name: str, meta: dict, known: dict[str, FileStamp] | None = None) -> Published:
        src = Path(src)
        root = self._root(name)
        if name.split("/")[0] == REVISIONS:
            raise ValueError(f"checkpoint name {name!r} is reserved for earlier revisions")
        m = manifest(src, meta, known)
        rev = revision_of(m)
        try:
            self._ensure_bucket()
            checksums = self._local_checksums(src, m["files"])
            old = self._read_manifest(root)
            if old == m:
                damaged = [f["path"] for f in m["files"] if not self._stored(root + f["path"], f, checksums[f["path"]])]
                if not damaged:
                    log.info("%s is already published (revision %s, every object's checksum verified)", self.uri(name), rev)
                    return published(self.kind, self.uri(name), m).model_copy(update={"revision": rev})
                log.warning("%s: %s do not match the manifest's checksums: uploading them again", self.uri(name),
                            ", ".join(damaged[:3]))
            elif old is not None and self.keep_revisions:
                keep = self._keep(root, self.revision_root(name, revision_of(old)), old)
                log.warning("%s: other content under an existing name: publishing it as new revision %s; the previous "
                            "revision %s stays at s3://%s/%s", self.uri(name), rev, revision_of(old), self.bucket, keep)
            # The old manifest goes first: while files change, readers must not trust the checkpoint.
            self.client.delete_object(Bucket=self.bucket, Key=root + MANIFEST)
            self.abort_incomplete_uploads(root)
            self._upload_files(src, root, m["files"], checksums)
            wanted = {root + f["path"] for f in m["files"]} | {root + MANIFEST}
            stale = [k for k in self._list_keys(root) if k not in wanted]
            for i in range(0, len(stale), 1000):
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": k} for k in stale[i:i + 1000]], "Quiet": True})
            body = manifest_bytes(m)
            sent = self.client.put_object(Bucket=self.bucket, Key=root + MANIFEST, Body=body,
                                          ContentType="application/json", ChecksumAlgorithm="SHA256")
            if sent.get("ChecksumSHA256") not in (None, _b64(hashlib.sha256(body).digest())):
                self.client.delete_object(Bucket=self.bucket, Key=root + MANIFEST)
                raise StoreError(f"publishing {name!r}: S3 stored another manifest than sent (checksum mismatch); "
                                 "nothing is trusted there, rerun")
        except (ValueError, StoreError):
            raise
        except Exception as e:  # noqa: BLE001
            raise self._error(e, f"publishing {name!r}") from None
        log.info("published %s (%d files, revision %s)", self.uri(name), len(m["files"]), rev)
        return published(self.kind, self.uri(name), m).model_copy(update={"revision": rev})

    def _local_checksums(self, src: Path, files: list[dict]) -> dict[str, str]:
        """Per file, the S3 SHA256 checksum its upload gets; each file is first checked against the manifest."""
        out = {}
        for f in files:
            full, checksum = self._checksum(src / f["path"], f["size"])
            if full != f["sha256"]:
                raise StoreError(f"not publishing {src}: {f['path']} no longer matches its recorded sha256 (changed "
                                 "since the checkpoint was made); rerun to recompute it")
            out[f["path"]] = checksum
        return out

    def _checksum(self, path: Path, size: int) -> tuple[str, str]:
        """(sha256 hex of the file, the SHA256 checksum S3 reports for it once uploaded with this transfer config)."""
        cfg = self.transfer_config
        chunk = size if size < cfg.multipart_threshold else ChunksizeAdjuster().adjust_chunksize(cfg.multipart_chunksize, size)
        full, parts = hashlib.sha256(), []
        with open(path, "rb") as fh:
            while block := fh.read(max(chunk, 1)):
                full.update(block)
                parts.append(hashlib.sha256(block).digest())
        if size < cfg.multipart_threshold:
            return full.hexdigest(), _b64(full.digest())
        return full.hexdigest(), f"{_b64(hashlib.sha256(b''.join(parts)).digest())}-{len(parts)}"

    def _stored(self, key: str, f: dict, checksum: str) -> bool:
        """Whether the object at `key` holds the manifest's file: by the server's checksum, else by downloading it."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        if head["ContentLength"] != f["size"]:
            return False
        if head.get("ChecksumSHA256"):
            return head["ChecksumSHA256"] == checksum
        h = hashlib.sha256()  # a server that keeps no checksum: read it back
        for block in self.client.get_object(Bucket=self.bucket, Key=key)["Body"].iter_chunks(MiB):
            h.update(block)
        return h.hexdigest() == f["sha256"]

    def _keep(self, root: str, keep: str, old: dict) -> str:
        """Server-side copy of the revision at `root` (files of `old`, then its manifest) to `keep`."""
        for f in old["files"]:
            self.client.copy({"Bucket": self.bucket, "Key": root + f["path"]}, self.bucket, keep + f["path"],
                             Config=self.transfer_config)
        self.client.put_object(Bucket=self.bucket, Key=keep + MANIFEST, Body=manifest_bytes(old),
                               ContentType="application/json", ChecksumAlgorithm="SHA256")
        return keep

    def _upload_files(self, src: Path, root: str, files: list[dict], checksums: dict[str, str]) -> None:
        todo = []
        for f in files:
            if self._stored(root + f["path"], f, checksums[f["path"]]):
                log.debug("skip %s (same checksum)", f["path"])
                continue
            todo.append(f)
        if not todo:
            return
        with create_transfer_manager(self.client, self.transfer_config) as mgr:
            futures: list[tuple[dict, Future]] = []
            for f in todo:
                extra = {"Metadata": {SHA256_META: f["sha256"]}, "ChecksumAlgorithm": "SHA256"}
                futures.append((f, mgr.upload(str(src / f["path"]), self.bucket, root + f["path"], extra_args=extra)))
            errors = []
            for f, fut in futures:
                try:
                    fut.result()
                    log.info("uploaded %s (%d bytes)", f["path"], f["size"])
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            if errors:
                raise errors[0]
        bad = [f["path"] for f in todo if not self._stored(root + f["path"], f, checksums[f["path"]])]
        if bad:
            raise StoreError(f"uploading to {self.where}: {', '.join(bad[:3])} stored with another checksum than the "
                             "manifest's file (changed during the upload, or damaged on the way); not published, rerun")

    def manifest_of(self, name: str) -> dict | None:
        """The committed manifest of `name`, None when there is none (never uploaded, or not finished)."""
        try:
            return self._read_manifest(self._root(name))
        except Exception as e:  # noqa: BLE001
            raise self._error(e, f"reading the manifest of {name!r}") from None

    def get(self, name: str, dest: Path) -> Path:
        dest = Path(dest)
        root = self._root(name)
        try:
            m = self._read_manifest(root)
        except Exception as e:  # noqa: BLE001
            raise self._error(e, f"fetching {name!r}") from None
        if m is None:
            raise CheckpointNotFound(f"no complete checkpoint {name!r} in {self.uri(name)} (manifest missing)")
        dest.mkdir(parents=True, exist_ok=True)
        base = dest.resolve()
        try:
            with create_transfer_manager(self.client, self.transfer_config) as mgr:
                jobs = []
                for f in m["files"]:
                    rel = safe_key_path(f["path"], "file path in manifest")
                    out = dest / rel
                    if base not in out.resolve().parents:
                        raise StoreError(f"manifest path {rel!r} escapes {dest}")
                    if out.is_file() and out.stat().st_size == f["size"] and sha256_file(out) == f["sha256"]:
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = out.with_name(out.name + ".part")
                    jobs.append((f, out, tmp, mgr.download(self.bucket, root + rel, str(tmp))))
                for f, out, tmp, fut in jobs:
                    fut.result()
                    got = sha256_file(tmp)
                    if got != f["sha256"]:
                        tmp.unlink(missing_ok=True)
                        raise StoreError(f"checksum mismatch for {f['path']} in {self.uri(name)}: "
                                         f"manifest says {f['sha256']}, downloaded {got}")
                    tmp.replace(out)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._error(e, f"fetching {name!r}") from None
        (dest / MANIFEST).write_bytes(manifest_bytes(m))
        return dest


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()
