"""HubStore against a fake Hugging Face Hub (tests/hub_server.py) speaking huggingface_hub 1.x's endpoints."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import traceback
from pathlib import Path

import pytest

from hub_server import fake_hub

from components.specs import StoreSpec
from components.stores import open_store
from components.stores.base import MANIFEST
from components.stores.hub import HubStore
from components.stores.base import CheckpointNotFound, StoreError

MiB = 1 << 20
pytestmark = pytest.mark.filterwarnings("ignore:Use .content=:DeprecationWarning")  # inside huggingface_hub


@pytest.fixture(scope="module")
def server():
    with fake_hub(lfs_threshold=1 * MiB, multipart_threshold=6 * MiB, multipart_chunk=5 * MiB) as hub:
        yield hub


@pytest.fixture
def hub(server, monkeypatch):
    """The fake Hub, its log and failures reset; the client online, Xet off (the fake speaks LFS), HF_TOKEN set."""
    from huggingface_hub import constants

    server.reset_log()
    server._failures.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the session conftest turns offline mode on
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", server.token)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    return server


_repos = iter(range(10_000))


@pytest.fixture
def repo_id() -> str:
    return f"qf-org/tiny-w8a8-{next(_repos)}"


def store(hub, repo: str, **kw) -> HubStore:
    return HubStore(repo, endpoint=hub.url, retry_wait=0.05, **kw)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """Small files (inline in the commit) and an 11 MiB weights file (LFS, multipart at the fake's 6 MiB)."""
    src = tmp_path / "ckpt"
    (src / "tokenizer").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (src / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: tiny\n---\n# tiny W8A8\n")
    (src / "tokenizer" / "tokenizer.json").write_text("{}")
    (src / "model.safetensors").write_bytes(os.urandom(11 * MiB + 7))
    (src / "extra.safetensors").write_bytes(os.urandom(2 * MiB))  # LFS, basic single PUT
    return src


def files_of(src: Path) -> dict[str, bytes]:
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}


def test_publish_is_one_private_commit_with_card_and_manifest(hub, repo_id, ckpt, tmp_path):
    p = store(hub, repo_id).put(ckpt, "tiny-w8a8", {"recipe": "r1"})

    repo = hub.repos[repo_id]
    assert repo.private
    assert len(repo.commits) == 1
    commit = repo.commits[0]
    expected = files_of(ckpt)
    assert set(commit.paths) == set(expected) | {MANIFEST} and "README.md" in commit.paths
    assert set(commit.lfs) == {"model.safetensors", "extra.safetensors"}
    assert {"README.md", "config.json", MANIFEST} <= set(commit.inline)
    for path, data in expected.items():
        assert repo.files[path] == data, path
    m = json.loads(repo.files[MANIFEST])
    assert m["recipe"] == "r1" and {f["path"] for f in m["files"]} == set(expected)

    assert p.store == "hub" and p.uri == f"{hub.url}/{repo_id}" and p.revision == commit.oid
    assert p.files == len(expected)
    routes = hub.routes()
    assert routes[0] == "create" and routes.count("commit") == 1
    after = routes[routes.index("commit") + 1:]
    assert after and set(after) == {"resolve"}, "after the commit: each file checked against the manifest"
    assert len(after) == len(expected) + 1
    assert {"lfs-batch", "lfs-upload", "lfs-part", "lfs-complete"} <= set(routes)
    assert all(r["authorized"] for r in hub.requests if r["route"] not in ("lfs-upload", "lfs-part", "lfs-complete"))

    out = store(hub, repo_id).get("tiny-w8a8", tmp_path / "out")
    assert files_of(out) == {**expected, MANIFEST: repo.files[MANIFEST]}


def test_republish_same_content_makes_no_new_commit(hub, repo_id, ckpt):
    first = store(hub, repo_id).put(ckpt, "tiny", {"recipe": "r1"})
    hub.reset_log()
    again = store(hub, repo_id).put(ckpt, "tiny", {"recipe": "r1"})
    assert again.revision == first.revision and len(hub.repos[repo_id].commits) == 1
    assert "commit" not in hub.routes() and "lfs-upload" not in hub.routes()

    (ckpt / "config.json").write_text('{"changed": 1}')
    third = store(hub, repo_id).put(ckpt, "tiny", {"recipe": "r1"})
    assert third.revision != first.revision and len(hub.repos[repo_id].commits) == 2
    assert set(hub.repos[repo_id].commits[-1].paths) == {"config.json", MANIFEST}


def test_other_content_is_a_new_revision_and_the_old_one_stays(hub, repo_id, ckpt, caplog):
    first = store(hub, repo_id).put(ckpt, "tiny", {"recipe": "r1"})
    (ckpt / "model.safetensors").write_bytes(os.urandom(3 * MiB))
    second = store(hub, repo_id).put(ckpt, "tiny", {"recipe": "r1"})
    assert second.revision != first.revision and [c.oid for c in hub.repos[repo_id].commits] == [first.revision,
                                                                                                 second.revision]
    assert f"new revision {second.revision}" in caplog.text and f"previous revision {first.revision}" in caplog.text


def test_a_file_the_hub_holds_otherwise_is_found_and_committed_again(hub, repo_id, ckpt):
    first = store(hub, repo_id).put(ckpt, "tiny", {})
    repo = hub.repos[repo_id]
    repo.lfs["model.safetensors"] = "0" * 64  # the Hub now names other content at the same path
    again = store(hub, repo_id).put(ckpt, "tiny", {})
    assert again.revision != first.revision and len(repo.commits) == 2
    assert repo.lfs["model.safetensors"] == hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()


def test_a_source_changed_since_it_was_recorded_is_not_committed(hub, repo_id, ckpt):
    from components.digests import stamp_dir

    known = {s.path: s for s in stamp_dir(ckpt)}
    (ckpt / "config.json").write_text('{"architectures": ["Changed"]}')
    with pytest.raises(StoreError, match="config.json no longer match their recorded sha256"):
        store(hub, repo_id).put(ckpt, "tiny", {}, known)
    assert hub.routes() == [], "refused before any request: a Hub commit cannot be taken back"


def test_namespace_uri_publishes_each_variant_to_its_repo(hub, ckpt):
    st = open_store(StoreSpec(kind="hub", uri="qf-ns", endpoint_url=hub.url, private=False))
    assert isinstance(st, HubStore)
    p = st.put(ckpt, "SmolLM2-135M-W8A8", {})
    assert p.uri == f"{hub.url}/qf-ns/SmolLM2-135M-W8A8"
    assert hub.repos["qf-ns/SmolLM2-135M-W8A8"].private is False
    with pytest.raises(ValueError, match="repo id"):
        StoreSpec(kind="hub")


def test_missing_token_fails_before_any_request(hub, repo_id, ckpt, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(StoreError, match="HF_TOKEN"):
        store(hub, repo_id).put(ckpt, "tiny", {})
    assert hub.requests == []


def test_offline_mode_fails_before_any_request(hub, repo_id, ckpt, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StoreError, match="HF_HUB_OFFLINE"):
        store(hub, repo_id).put(ckpt, "tiny", {})
    assert hub.requests == []


@pytest.mark.parametrize("bad", ["", "a/b/c", "../x", "org/..", "org/../x", "org/a..b", "org/a--b", "-org/x",
                                 "org/x.", "org/ x", "org/x?y", "org/" + "x" * 97, "/x", "org/"])
def test_bad_repo_ids_rejected(hub, bad):
    with pytest.raises(ValueError):
        store(hub, bad)
    assert hub.requests == []


@pytest.mark.parametrize("name", ["../x", "a/b", ""])
def test_bad_names_under_a_namespace(hub, ckpt, name):
    with pytest.raises(ValueError):
        store(hub, "qf-ns").put(ckpt, name, {})
    assert hub.requests == []


def test_transient_errors_are_retried(hub, repo_id, ckpt):
    hub.fail(429, times=1, route="create", retry_after=0)  # our retry, Retry-After honoured
    hub.fail(503, times=2, route="commit")  # our retry around create_commit
    hub.fail(502, times=1, route="preupload")  # huggingface_hub's own http_backoff (waits 1 s)
    hub.fail(500, times=1, route="lfs-upload")  # huggingface_hub's http_backoff on the LFS PUT
    p = store(hub, repo_id).put(ckpt, "tiny", {})

    routes = hub.routes()
    assert routes.count("create") == 2
    assert routes.count("commit") == 3
    statuses = [r["status"] for r in hub.requests if r["route"] == "commit"]
    assert statuses == [503, 503, 200]
    assert len(hub.repos[repo_id].commits) == 1 and p.revision == hub.repos[repo_id].commits[0].oid
    assert hub.repos[repo_id].files["model.safetensors"] == (ckpt / "model.safetensors").read_bytes()


def test_retries_give_up_with_a_clear_error(hub, repo_id, ckpt):
    hub.fail(503, times=100, route="commit")
    with pytest.raises(StoreError, match=r"answered 503 for .*" + repo_id):
        store(hub, repo_id, max_retries=2).put(ckpt, "tiny", {})
    assert hub.routes().count("commit") == 3
    assert not hub.repos[repo_id].commits


def test_401_is_not_retried_and_the_token_never_shows(hub, repo_id, ckpt):
    hub.fail(401, times=100, echo_token=True)  # a server that even echoes the Authorization header back
    with pytest.raises(StoreError) as ei:
        store(hub, repo_id).put(ckpt, "tiny", {})
    assert "401" in str(ei.value) and repo_id in str(ei.value) and hub.url in str(ei.value)
    text = "".join(traceback.format_exception(ei.value)) + repr(ei.value)
    assert hub.token not in text
    # create_repo(exist_ok=True) checks once whether the repo exists on a 401; nothing is retried
    assert hub.routes() in (["create"], ["create", "info"])
    assert repo_id not in hub.repos


def test_wrong_token_is_refused(hub, repo_id, ckpt, monkeypatch):
    wrong = "wrong-" + os.urandom(8).hex()
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(StoreError, match="refused the token") as ei:
        store(hub, repo_id).put(ckpt, "tiny", {})
    assert wrong not in "".join(traceback.format_exception(ei.value))


def test_get_requires_manifest_and_verifies_checksums(hub, repo_id, ckpt, tmp_path):
    store(hub, repo_id).put(ckpt, "tiny", {})
    repo = hub.repos[repo_id]

    repo.files["config.json"] = b'{"tampered": true}'
    with pytest.raises(StoreError, match="checksum mismatch for config.json"):
        store(hub, repo_id).get("tiny", tmp_path / "out1")

    del repo.files[MANIFEST]
    with pytest.raises(CheckpointNotFound, match="manifest missing"):
        store(hub, repo_id).get("tiny", tmp_path / "out2")


@pytest.mark.skipif(importlib.util.find_spec("hf_xet") is None, reason="hf_xet not installed")
def test_large_files_without_disabling_xet_fail_clearly(hub, repo_id, ckpt, monkeypatch):
    """With hf_xet installed huggingface_hub uploads LFS-mode files with Xet, which the fake does not speak."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(StoreError, match="xet-write-token") as ei:
        store(hub, repo_id).put(ckpt, "tiny", {})
    assert hub.token not in "".join(traceback.format_exception(ei.value))
    assert "xet-token" in hub.routes() and "commit" not in hub.routes()


def test_token_from_a_prefect_secret_block(hub, repo_id, ckpt, monkeypatch):
    if not os.environ.get("PREFECT_API_URL"):
        pytest.skip("no Prefect server (QUANTFLOW_TEST_SERVERS=0)")
    from prefect.blocks.system import Secret

    name = f"qf-hub-token-{os.urandom(4).hex()}"
    Secret(value=hub.token).save(name)
    monkeypatch.delenv("HF_TOKEN")
    p = open_store(StoreSpec(kind="hub", uri=repo_id, endpoint_url=hub.url, credentials=name)).put(ckpt, "tiny", {})
    assert p.revision == hub.repos[repo_id].commits[-1].oid
    with pytest.raises(StoreError, match="cannot load the Prefect Secret block"):
        HubStore(repo_id, endpoint=hub.url, token_secret="qf-no-such-secret").put(ckpt, "tiny", {})
