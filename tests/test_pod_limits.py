"""Pods sized from the memory plan, and the limits preflight reads inside one (components/pod_limits.py): Kubernetes
quantities, cgroup v1/v2 memory limits, the seed cards' pods on an 8 x H100 80 GB node with 2000 GB of host RAM, and
preflight's refusals, with the numbers, in a pod too small for its plan (fake cgroup tree, no cluster)."""
from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path

import pytest
from pydantic import ValidationError
from tiny import config_only_base

from components import memory_plan as mp
from components import pod_limits
from components.memory_plan import GB, Machine
from components.pod_limits import GiB, GpuNode, quantity
from components.settings import settings
from components.specs import QuantizationSpec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = json.loads((ROOT / "benchmarks" / "configs" / "Llama-3.3-70B-Instruct.json").read_text())
H100 = 81_559 * 2**20  # what nvidia-smi and torch report for an "80GB" H100
NODE = GpuNode(gpus=8, gpu_memory="81559Mi", memory="2000G", ephemeral_storage="3500Gi")
SEED_000 = (mp.Calibration(num_samples=512, seq_len=4096), mp.Quantization(weight_bits=8, gptq=False))  # FP8 static
SEED_002 = (mp.Calibration(num_samples=1024, seq_len=8192), mp.Quantization(weight_bits=8, gptq=True))  # W8A8 GPTQ
CARD_000 = {"base": {"source": "meta-llama/Meta-Llama-3.1-70B-Instruct"}, "scheme": "fp8-static",
            "calibration": {"dataset": "HuggingFaceH4/ultrachat_200k", "split": "train_sft", "num_samples": 512,
                            "max_seq_length": 4096},
            "evaluation": {"engine": "vllm", "suite": "openllm-v1-2024"},
            "stores": [{"kind": "s3", "uri": "s3://quantflow-models/card-000"}]}


@pytest.fixture(autouse=True)
def settings_reread():
    """Tests here point QUANTFLOW_HOME elsewhere: the next reader reads the environment again."""
    yield
    settings.cache_clear()


def test_kubernetes_quantities():
    assert quantity("800Gi") == 800 * GiB and quantity("2000G") == 2000 * 10**9 and quantity("81559Mi") == H100
    assert quantity("1.5Ti") == 3 * 2**39 and quantity("1073741824") == GiB and quantity("4k") == 4000
    assert pod_limits.gi(420.5e9) == "392Gi" and pod_limits.gi(GiB) == "1Gi"
    with pytest.raises(ValueError, match="'lots' is not a Kubernetes quantity: give bytes with a unit, e.g. 800Gi"):
        quantity("lots")
    with pytest.raises(ValidationError, match="'80 GB' is not a Kubernetes quantity"):
        GpuNode(gpus=8, gpu_memory="80 GB", memory="2000G", ephemeral_storage="3500Gi")
    assert NODE.machine().gpu_bytes == H100 and NODE.machine().host_bytes == 2000 * GB


@pytest.mark.parametrize("files,limit", [
    ({"memory.max": "68719476736\n"}, 64 * GiB),  # cgroup v2, a pod with limits.memory: 64Gi
    ({"memory.max": "max\n"}, None),  # cgroup v2, no limit
    ({"memory/memory.limit_in_bytes": "68719476736\n"}, 64 * GiB),  # cgroup v1
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),  # cgroup v1, no limit (page-aligned int64 max)
    ({}, None),  # no memory controller mounted
])
def test_the_memory_limit_from_cgroup_v2_and_v1(tmp_path, files, limit):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert pod_limits.memory_limit(tmp_path) == limit


def test_the_scratch_limit_comes_from_the_environment():
    assert pod_limits.scratch_limit({"QUANTFLOW_SCRATCH_LIMIT": "200Gi"}) == 200 * GiB
    assert pod_limits.scratch_limit({}) is None


def _size(seed, node: GpuNode = NODE, eval_gpus: int = 2, **kw) -> dict:
    """size_for as pod_job_variables calls it: the 70B plan for `seed` on the node, the placement quantize runs."""
    shape, machine = mp.shape_from_config(CONFIG), node.machine()
    memory = mp.plan(shape, *seed, machine)
    assert memory.fits, memory.problems
    how = mp.settings_for(QuantizationSpec(), memory, machine)
    return pod_limits.size_for(memory, how, eval_gpus, mp.disk_needed(shape, *seed, **kw), node)


def test_the_seed_cards_pods_on_8_h100s_with_2000_gb_of_host_ram():
    """Card 000 quantizes on cuda:0 with its cache on cuda:1 and evaluates the bf16 base at TP 2: 2 GPUs; its host peak
    is the bf16 model (141.1 GB). Card 002 quantizes on cuda:0 with its 279 GB cache in host RAM (420.5 GB peak) and
    evaluates at TP 2: 2 GPUs. Memory: peak / 0.9 + 16 GiB /dev/shm + 8 GiB processes, whole Gi, limit = request."""
    assert _size(SEED_000) == {"gpu_count": 2, "memory_request": "171Gi", "memory_limit": "171Gi", "scratch_size": "106Gi"}
    assert _size(SEED_002) == {"gpu_count": 2, "memory_request": "460Gi", "memory_limit": "460Gi", "scratch_size": "106Gi"}
    # scratch: checkpoint 72.7 GB (+ a local store's copy), calibration set, two evaluations' outputs, the container's
    # own writes, plus 10%; a GGUF converted in the pod adds its bf16 copy
    assert _size(SEED_002, local_copies=1)["scratch_size"] == "180Gi"
    assert _size(SEED_002, converted=True)["scratch_size"] == "250Gi"
    # overlap_base true runs quantization and the base evaluation side by side: both sets of GPUs
    shape, machine = mp.shape_from_config(CONFIG), NODE.machine()
    memory = mp.plan(shape, *SEED_002, machine)
    how = mp.settings_for(QuantizationSpec(), memory, machine)
    assert pod_limits.size_for(memory, how, 2, 100 * GB, NODE, overlap_base=True)["gpu_count"] == 3


def test_a_pod_no_node_can_hold_is_refused_with_the_numbers():
    small = NODE.model_copy(update={"memory": "470G"})  # the plan fits 0.9 x 470 GB; the pod's 460 GiB does not
    with pytest.raises(ValueError) as e:
        _size(SEED_002, small)
    assert str(e.value) == (
        "the variant's pod does not fit a 8 x 81559Mi GPU node (memory 460Gi > the node's 470G; quantization takes 1 "
        "GPU(s), the evaluation 2, host peak 420.5 GB): use a bigger node type in gpu_node, or fewer/shorter "
        "calibration samples")
    with pytest.raises(ValueError, match=r"GPUs 4 > the node's 2"):
        _size(SEED_000, NODE.model_copy(update={"gpus": 2}), eval_gpus=4)


def test_pod_job_variables_read_config_json_from_the_hub_and_size_every_sweep_variant(tmp_path):
    """The sweep's own function, as the sweep pod runs it: config.json from a (fake) Hub, no weights, for card 000 and
    the four variants of infra/k8s/sweep-card-002.json (the cache between layers moves from cuda:1 to host RAM as the
    calibration grows past what one H100 holds)."""
    from hub_server import seed_bases

    from components.specs import VariantSpec
    from flows.sweep import SweepSpec, pod_job_variables

    sweep = SweepSpec.model_validate_json((ROOT / "infra" / "k8s" / "sweep-card-002.json").read_text())
    assert sweep.gpu_node == NODE and sweep.dispatch == "deployments" and sweep.deployment == "quantize-variant/gpu-k8s"
    with seed_bases(tmp_path / "hf-cache"):
        card_000 = pod_job_variables(VariantSpec.model_validate(CARD_000), NODE)
        sized = {v.calibration.num_samples: pod_job_variables(v, sweep.gpu_node) for v in sweep.variants()}
        with pytest.raises(ValueError, match=r"sizing the pod of variant .*-n1024-l8192 on a 1 x 81559Mi GPU node: "
                                             r"host RAM 256.0 GB cannot hold the model"):
            pod_job_variables(sweep.variants()[-1], NODE.model_copy(update={"gpus": 1, "memory": "256G"}))
    assert card_000 == {"gpu_count": 2, "memory_request": "171Gi", "memory_limit": "171Gi", "scratch_size": "106Gi"}
    assert {n: (v["gpu_count"], v["memory_request"], v["scratch_size"]) for n, v in sized.items()} == {
        128: (2, "171Gi", "106Gi"), 256: (2, "171Gi", "106Gi"), 512: (2, "315Gi", "106Gi"), 1024: (2, "460Gi", "106Gi")}
    assert all(v["memory_limit"] == v["memory_request"] for v in sized.values())


# --- preflight inside a pod -----------------------------------------------------------------------------------------

def test_preflight_in_a_pod_refuses_what_its_limits_cannot_hold_and_passes_a_sized_pod(tmp_path, monkeypatch):
    """Card 002 in a pod on a 2 x H100 node with 2000 GB of RAM and a large disk: under the gpu-k8s deployment's own
    64Gi memory limit and 100Gi of scratch, preflight refuses both, in one line each with the numbers and the fix;
    with the sizes size_for gives it (460Gi, 180Gi with this spec's local store copy) neither line comes."""
    import torch

    from components import preflight as pf
    from components.evaluation import engine, environment
    from components.messages import Checked

    base = config_only_base(tmp_path / "Llama-3.3-70B-Instruct", CONFIG)
    home, cgroup = tmp_path / "home", tmp_path / "cgroup"
    home.mkdir()
    cgroup.mkdir()
    monkeypatch.setenv("QUANTFLOW_HOME", str(home))
    settings.cache_clear()
    monkeypatch.setattr(pod_limits, "CGROUP", cgroup)
    monkeypatch.setattr(mp, "machine_now", lambda disk: Machine(gpus=2, gpu_bytes=H100, host_bytes=2000 * GB,
                                                                 disk_free_bytes=3000 * GB))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: usage(4000 * GB, 1000 * GB, 3000 * GB))  # the node's disk
    monkeypatch.setattr(engine, "detect_platform", lambda: "cuda")
    monkeypatch.setattr(environment, "check", Checked)  # vLLM's environment in place, as in the image
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spec = {"base": {"source": str(base)}, "scheme": "w8a8-int8",
            "calibration": {"source": "random", "num_samples": 1024, "max_seq_length": 8192},
            "evaluation": {"engine": "vllm", "suite": "openllm-v1"}, "stores": [{"kind": "local"}]}

    def problems(memory_max: str, scratch: str) -> list[str]:
        (cgroup / "memory.max").write_text(f"{quantity(memory_max)}\n")
        monkeypatch.setenv("QUANTFLOW_SCRATCH_LIMIT", scratch)
        with pytest.raises(pf.PreflightError) as e:  # the base has no weights: refused whatever the pod
            pf.preflight(spec)
        return e.value.problems

    small = problems("64Gi", "100Gi")
    assert ("quantization: the plan needs 420.5 GB of host RAM; this pod's memory limit is 64.0 GiB (90% of it usable): "
            "set the memory_request and memory_limit job variables to 460Gi or more, or run it through the sweep with "
            "gpu_node set, which sizes pods") in small, small
    (scratch,) = [p for p in small if p.startswith("not enough scratch")]
    assert scratch.startswith(f"not enough scratch under {home}: ~") and (
        "GiB needed; this pod's scratch limit is 100.00 GiB (QUANTFLOW_SCRATCH_LIMIT, the emptyDir's sizeLimit), "
        "0.00 GiB of it used: set the scratch_size job variable to ") in scratch and scratch.endswith(
        "or more, or run it through the sweep with gpu_node set, which sizes pods")
    assert not any(p.startswith("not enough free disk") for p in small)  # the node's disk has room
    sized = _size(SEED_002, local_copies=1)
    assert sized["scratch_size"] == "180Gi"
    fine = problems(sized["memory_limit"], sized["scratch_size"])
    assert not any("memory limit" in p or "scratch" in p for p in fine), fine
    assert any("no weights" in p for p in fine)  # the one problem left: this base is a skeleton
    monkeypatch.setattr(pod_limits, "_used", lambda root: 100 * GiB)  # what the volume holds already counts
    (full,) = [p for p in problems(sized["memory_limit"], sized["scratch_size"]) if "scratch" in p]
    assert "limit is 180.00 GiB (QUANTFLOW_SCRATCH_LIMIT, the emptyDir's sizeLimit), 100.00 GiB of it used" in full


def test_run_variant_sizes_the_pod_and_the_sweeps_own_job_variables_win(monkeypatch):
    """run_variant passes the plan's sizes with the sweep's `job_variables` laid over them; no gpu_node, no sizing."""
    import flows.sweep as sweep
    from flows.sweep import SweepSpec

    calls = []

    def run_deployment(name, **kw):
        calls.append(kw["job_variables"])
        raise RuntimeError("dispatched")

    monkeypatch.setattr(sweep, "run_deployment", run_deployment)
    monkeypatch.setattr(sweep, "pod_job_variables", lambda variant, node: {"gpu_count": 2, "memory_request": "460Gi",
                                                                           "memory_limit": "460Gi", "scratch_size": "106Gi"})
    spec = SweepSpec.model_validate_json((ROOT / "infra" / "k8s" / "sweep-card-002.json").read_text())
    for s in (spec, spec.model_copy(update={"job_variables": {"memory_limit": "500Gi"}}),
              spec.model_copy(update={"gpu_node": None}), spec.model_copy(update={"gpu_node": None, "job_variables": {"x": 1}})):
        with pytest.raises(RuntimeError, match="dispatched"):
            sweep.run_variant.fn(s.variants()[0], s)
    assert calls == [{"gpu_count": 2, "memory_request": "460Gi", "memory_limit": "460Gi", "scratch_size": "106Gi"},
                     {"gpu_count": 2, "memory_request": "460Gi", "memory_limit": "500Gi", "scratch_size": "106Gi"},
                     None, {"x": 1}]


def test_a_hub_download_counts_against_the_home_only_where_the_hf_cache_shares_its_disk(tmp_path, monkeypatch):
    """In a pod the HF cache is a PVC (/data/hf-cache), not the scratch volume: 141 GB of download is not scratch."""
    from huggingface_hub import constants

    from components import preflight as pf
    from components.models import BaseInfo
    from components.specs import VariantSpec

    monkeypatch.setenv("QUANTFLOW_HOME", str(tmp_path / "home"))
    settings.cache_clear()
    c = pf._Checks(VariantSpec.model_validate({"base": {"source": "org/model"},
                                               "stores": [{"kind": "s3", "uri": "s3://bucket/prefix"}]}))
    base = BaseInfo(name="model", to_download_bytes=10**18)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # the home's disk
    pf._disk(c, base, 1)
    (problem,) = c.problems
    assert "not enough free disk under" in problem and "Hub download" in problem
    c.problems.clear()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/dev/shm/hf-cache")  # another file system
    pf._disk(c, base, 1)
    assert c.problems == []


def test_the_sweep_file_fits_the_sweep_deployments_parameter_schema():
    """What the server checks a run's `spec` against (enforce_parameter_schema): the file as it is, or without a node,
    or with the node's fields left empty (the form's untouched inputs: no sizing), never an unknown field; a node given
    in part is refused when the flow reads its spec, in one line."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    from flows.sweep import SweepSpec, sweep

    schema = parameter_schema(sweep).model_dump_for_openapi()
    errors = lambda spec: validate({"spec": spec}, schema, raise_on_error=False)  # noqa: E731
    spec = json.loads((ROOT / "infra" / "k8s" / "sweep-card-002.json").read_text())
    node, bare = spec["gpu_node"], {k: v for k, v in spec.items() if k != "gpu_node"}
    empty = {k: None for k in node}
    for ok in (spec, bare, {**spec, "gpu_node": {}}, {**spec, "gpu_node": empty}):
        assert not errors(ok), ok
    assert SweepSpec.model_validate(spec).gpu_node == NODE
    assert SweepSpec.model_validate({**spec, "gpu_node": {}}).gpu_node is None
    assert SweepSpec.model_validate({**spec, "gpu_node": empty}).gpu_node is None
    assert errors({**spec, "gpu_node": {**node, "gpu_memory_gb": 80}})
    with pytest.raises(ValidationError, match=r"gpu_node: memory, ephemeral_storage missing: give all of gpus, "
                                              r"gpu_memory, memory and ephemeral_storage .*, or none \(no sizing\)"):
        SweepSpec.model_validate({**spec, "gpu_node": {"gpus": 8, "gpu_memory": "81559Mi"}})
