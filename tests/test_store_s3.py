"""S3Store against a real SeaweedFS S3 server (weed mini on 127.0.0.1, credentials enforced)."""
from __future__ import annotations

import json
import os
import threading
import traceback
from pathlib import Path

import pytest

from servers import seaweed_s3, use_only_these_aws_credentials

from components.specs import StoreSpec
from components.stores import open_store
from components.stores.base import MANIFEST
from components.stores.base import CheckpointNotFound, StoreError
from components.stores.s3 import S3Store

MiB = 1 << 20
WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with seaweed_s3(tmp_path_factory.mktemp("weed")) as server:
        yield server
    assert server.process.poll() is not None, "weed still running"


@pytest.fixture(autouse=True)
def aws_env(s3, monkeypatch, tmp_path):
    """Only the test server's credentials: no profile, no config files, no instance metadata lookups."""
    use_only_these_aws_credentials(monkeypatch, s3, tmp_path)


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(s3) -> str:
    """A fresh, existing bucket per test."""
    name = f"qf-test-{next(_buckets)}"
    admin(s3).create_bucket(Bucket=name)
    return name


def admin(s3):
    import boto3

    return boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name="us-east-1")


def store(s3, bucket: str, prefix: str = "checkpoints", **kw) -> S3Store:
    kw = {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB, "max_concurrency": 4, **kw}
    return S3Store(bucket, prefix, endpoint_url=s3.endpoint_url, **kw)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A fake checkpoint: a 12 MiB weights file (multipart at a 5 MiB threshold), small files, a subfolder."""
    src = tmp_path / "ckpt"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    (src / "tokenizer" / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_bytes(os.urandom(12 * MiB + 123))
    return src


def record(st: S3Store) -> list[tuple[str, str | None]]:
    """(operation, key) of every S3 call the store's client makes, in order."""
    calls: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def hook(params, model, **kwargs):
        with lock:
            calls.append((model.name, params.get("Key")))

    st.client.meta.events.register("before-parameter-build.s3", hook)
    return calls


def writes(calls, op: str | None = None) -> list[str | None]:
    return [k for o, k in calls if (o == op if op else o in WRITES)]


def same_tree(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != MANIFEST)
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --- publishing ----------------------------------------------------------------------------------


def test_put_multipart_manifest_last_then_get(s3, bucket, ckpt, tmp_path):
    st = store(s3, bucket)
    calls = record(st)
    p = st.put(ckpt, "tiny-w8a8", {"recipe": "r1"})

    root = "checkpoints/tiny-w8a8/"
    assert p.store == "s3" and p.uri == f"s3://{bucket}/{root}" and p.files == 4
    assert writes(calls, "CreateMultipartUpload") == [root + "model.safetensors"]
    assert len(writes(calls, "UploadPart")) == 3  # 12 MiB + 123 bytes in 5 MiB parts
    assert writes(calls)[-1] == root + MANIFEST, "the manifest is the last write"
    assert writes(calls).count(root + MANIFEST) == 1

    cli = admin(s3)
    keys = sorted(o["Key"] for o in cli.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted(root + k for k in ("config.json", "README.md", "tokenizer/tokenizer.json",
                                             "model.safetensors", MANIFEST))
    m = json.loads(cli.get_object(Bucket=bucket, Key=root + MANIFEST)["Body"].read())
    assert m["recipe"] == "r1"
    weights = next(f for f in m["files"] if f["path"] == "model.safetensors")
    head = cli.head_object(Bucket=bucket, Key=root + "model.safetensors")
    assert head["Metadata"]["sha256"] == weights["sha256"] and head["ContentLength"] == 12 * MiB + 123

    out = st.get("tiny-w8a8", tmp_path / "out")
    same_tree(ckpt, out)
    assert json.loads((out / MANIFEST).read_text()) == m


def test_interrupted_run_leaves_no_manifest_and_rerun_completes(s3, bucket, ckpt, tmp_path):
    class Crash(BaseException):
        """The process dies (SIGKILL, OOM...) just before writing the manifest."""

    root = "checkpoints/tiny/"
    st = store(s3, bucket)

    def crash(params, **kwargs):
        if params.get("Key") == root + MANIFEST:
            raise Crash()

    st.client.meta.events.register("before-parameter-build.s3.PutObject", crash)
    with pytest.raises(Crash):
        st.put(ckpt, "tiny", {"recipe": "r1"})

    cli = admin(s3)
    keys = {o["Key"] for o in cli.list_objects_v2(Bucket=bucket)["Contents"]}
    assert root + "model.safetensors" in keys and root + MANIFEST not in keys
    with pytest.raises(CheckpointNotFound, match="manifest missing"):
        store(s3, bucket).get("tiny", tmp_path / "nope")
    with pytest.raises(FileNotFoundError):  # same contract as LocalStore
        store(s3, bucket).get("tiny", tmp_path / "nope")

    # A run killed in the middle of a multipart upload leaves it incomplete: the next run aborts it.
    up = cli.create_multipart_upload(Bucket=bucket, Key=root + "model-00002.safetensors")
    cli.upload_part(Bucket=bucket, Key=root + "model-00002.safetensors", UploadId=up["UploadId"], PartNumber=1,
                    Body=os.urandom(5 * MiB))
    assert cli.list_multipart_uploads(Bucket=bucket, Prefix=root).get("Uploads")

    st2 = store(s3, bucket)
    calls = record(st2)
    st2.put(ckpt, "tiny", {"recipe": "r1"})
    assert writes(calls) == [root + MANIFEST], "files already there with the right sha256 are skipped"
    assert ("AbortMultipartUpload", root + "model-00002.safetensors") in calls
    assert not cli.list_multipart_uploads(Bucket=bucket, Prefix=root).get("Uploads")
    same_tree(ckpt, st2.get("tiny", tmp_path / "out"))


def test_rerun_uploads_only_what_changed(s3, bucket, ckpt):
    root = "checkpoints/tiny/"
    store(s3, bucket).put(ckpt, "tiny", {"recipe": "r1"})

    st = store(s3, bucket)
    calls = record(st)
    st.put(ckpt, "tiny", {"recipe": "r1"})
    assert writes(calls) == [], "an identical checkpoint is not written again"

    (ckpt / "config.json").write_text('{"changed": true}')
    (ckpt / "tokenizer" / "tokenizer.json").unlink()
    calls.clear()
    p = st.put(ckpt, "tiny", {"recipe": "r2"})
    assert [k for k in writes(calls) if k.startswith(root)] == [root + "config.json", root + MANIFEST]
    assert ("DeleteObjects", None) in calls  # the file no longer in the checkpoint is removed
    keys = {o["Key"] for o in admin(s3).list_objects_v2(Bucket=bucket)["Contents"]}
    assert root + "tokenizer/tokenizer.json" not in keys and p.files == 3


def test_other_content_under_a_name_is_a_new_revision_the_old_one_kept(s3, bucket, ckpt, tmp_path, caplog):
    st = store(s3, bucket)
    first = st.put(ckpt, "tiny", {"recipe": "r1"})
    old = {p.relative_to(ckpt).as_posix(): p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    (ckpt / "model.safetensors").write_bytes(os.urandom(12 * MiB + 5))
    second = st.put(ckpt, "tiny", {"recipe": "r1"})
    assert second.revision != first.revision
    assert f"new revision {second.revision}" in caplog.text and f"previous revision {first.revision}" in caplog.text

    cli = admin(s3)
    kept = st.revision_root("tiny", first.revision)
    m = json.loads(cli.get_object(Bucket=bucket, Key=kept + MANIFEST)["Body"].read())
    assert {f["path"] for f in m["files"]} == set(old)
    for path, data in old.items():
        assert cli.get_object(Bucket=bucket, Key=kept + path)["Body"].read() == data, path
    same_tree(ckpt, st.get("tiny", tmp_path / "now"))


def test_an_object_damaged_in_the_bucket_is_found_by_its_checksum_and_sent_again(s3, bucket, ckpt, tmp_path):
    root = "checkpoints/tiny/"
    store(s3, bucket).put(ckpt, "tiny", {"recipe": "r1"})
    cli = admin(s3)
    head = cli.head_object(Bucket=bucket, Key=root + "config.json")
    data = (ckpt / "config.json").read_bytes()
    # same size, same claimed sha256 in the metadata: only the server's checksum tells
    cli.put_object(Bucket=bucket, Key=root + "config.json", Body=data.upper(), Metadata=head["Metadata"],
                   ChecksumAlgorithm="SHA256")

    st = store(s3, bucket)
    calls = record(st)
    st.put(ckpt, "tiny", {"recipe": "r1"})
    assert writes(calls) == [root + "config.json", root + MANIFEST]
    same_tree(ckpt, st.get("tiny", tmp_path / "out"))


def test_a_source_changed_since_it_was_recorded_is_not_published(s3, bucket, ckpt):
    from components.digests import stamp_dir

    known = {s.path: s for s in stamp_dir(ckpt)}
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    st = store(s3, bucket)
    calls = record(st)
    with pytest.raises(StoreError, match="model.safetensors no longer matches its recorded sha256"):
        st.put(ckpt, "tiny", {"recipe": "r1"}, known)
    assert writes(calls) == [] and "Contents" not in admin(s3).list_objects_v2(Bucket=bucket)


def test_no_prefix_and_open_store_from_spec(s3, bucket, ckpt, tmp_path):
    spec = StoreSpec(kind="s3", uri=f"s3://{bucket}", endpoint_url=s3.endpoint_url)
    st = open_store(spec)
    assert isinstance(st, S3Store) and st.bucket == bucket and st.prefix == ""
    p = st.put(ckpt, "tiny", {})
    assert p.uri == f"s3://{bucket}/tiny/"
    same_tree(ckpt, st.get("tiny", tmp_path / "out"))

    st = open_store(StoreSpec(kind="s3", uri=f"s3://{bucket}/a/b/", endpoint_url=s3.endpoint_url))
    assert st.prefix == "a/b" and st.uri("x") == f"s3://{bucket}/a/b/x/"
    with pytest.raises(ValueError, match="s3://"):
        StoreSpec(kind="s3", uri=bucket)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["secret", "key"])
def test_wrong_credentials(s3, bucket, ckpt, monkeypatch, wrong):
    bad_secret = "not-the-secret-" + os.urandom(6).hex()
    if wrong == "secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "QFUNKNOWNKEY" + os.urandom(4).hex().upper())
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
    with pytest.raises(StoreError) as ei:
        store(s3, bucket).put(ckpt, "tiny", {})
    msg = str(ei.value)
    assert bucket in msg and s3.endpoint_url in msg and "credentials" in msg
    assert ("SignatureDoesNotMatch" if wrong == "secret" else "InvalidAccessKeyId") in msg
    text = "".join(traceback.format_exception(ei.value))
    assert bad_secret not in text and s3.secret_key not in text
    assert "Contents" not in admin(s3).list_objects_v2(Bucket=bucket), "nothing written, no manifest"


def test_no_credentials(s3, bucket, ckpt, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no AWS credentials"):
        store(s3, bucket).put(ckpt, "tiny", {})


def test_missing_bucket(s3, ckpt, tmp_path):
    with pytest.raises(StoreError, match="'qf-missing-bucket' at .* does not exist"):
        store(s3, "qf-missing-bucket").put(ckpt, "tiny", {})
    with pytest.raises(StoreError, match="does not exist"):
        store(s3, "qf-missing-bucket").get("tiny", tmp_path / "out")

    p = store(s3, "qf-created-bucket", create_bucket=True).put(ckpt, "tiny", {})
    assert p.uri == "s3://qf-created-bucket/checkpoints/tiny/"
    assert admin(s3).head_bucket(Bucket="qf-created-bucket")
    same_tree(ckpt, store(s3, "qf-created-bucket").get("tiny", tmp_path / "out"))


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "/abs", "a//b", "", ".", "..", "a/./b", "a\\b", "x/"])
def test_names_cannot_escape_the_prefix(s3, bucket, ckpt, tmp_path, name):
    st = store(s3, bucket)
    calls = record(st)
    with pytest.raises(ValueError):
        st.put(ckpt, name, {})
    with pytest.raises(ValueError):
        st.get(name, tmp_path / "out")
    assert calls == [], "rejected before any request"


@pytest.mark.parametrize("uri", ["s3://qf-bucket/../x", "s3://qf-bucket/a//b", "s3://../x", "s3://UPPER/x", "qf/x"])
def test_bad_uris(uri):
    with pytest.raises(ValueError):
        S3Store.from_uri(uri, endpoint_url="http://127.0.0.1:9")


def test_get_verifies_checksums(s3, bucket, ckpt, tmp_path):
    st = store(s3, bucket)
    st.put(ckpt, "tiny", {})
    admin(s3).put_object(Bucket=bucket, Key="checkpoints/tiny/config.json", Body=b'{"tampered": 1}')
    with pytest.raises(StoreError, match="checksum mismatch for config.json"):
        st.get("tiny", tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()


def test_credentials_block(s3, bucket, ckpt, monkeypatch, tmp_path):
    """Credentials from a Prefect AwsCredentials block (needs the session's Prefect server)."""
    if not os.environ.get("PREFECT_API_URL"):
        pytest.skip("no Prefect server (QUANTFLOW_TEST_SERVERS=0)")
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    name = f"qf-s3-{os.urandom(4).hex()}"
    AwsCredentials(aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key, region_name="us-east-1",
                   aws_client_parameters=AwsClientParameters(endpoint_url=s3.endpoint_url)).save(name)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    st = open_store(StoreSpec(kind="s3", uri=f"s3://{bucket}/blk", credentials=name))
    assert st.endpoint_url == s3.endpoint_url
    st.put(ckpt, "tiny", {})
    same_tree(ckpt, st.get("tiny", tmp_path / "out"))
    with pytest.raises(StoreError, match="cannot load the Prefect AwsCredentials block"):
        S3Store(bucket, credentials_block="qf-no-such-block")
