"""Session set-up: offline Hugging Face, a private data dir, test tiers, and real Prefect and MLflow servers on 127.0.0.1
started only when a selected test needs them.

Tiers (markers, described in pyproject.toml) say what a test needs; they are given here, by module or by test, so a
new test in a module gets its module's tier and test files carry none (a test's own tier marker wins).

Plain `pytest` runs the unit tier; naming files or tests runs them whatever their tier (`slow` aside); `-m` selects
tiers (`make test` runs every tier but `slow`).

Prefect and MLflow read their URLs from the environment, Prefect when it is imported (during collection), and modules
decide skips on them at import: so the URLs are set here, on ports chosen now. Once the selection is known, the servers
start on them if a selected test's tier needs them (`stack`, `flow`, `drill`, `browser`; once per process, so once per
pytest-xdist worker); if none does, the URLs are withdrawn and prefect's settings read again (a unit-only session runs
as QUANTFLOW_TEST_SERVERS=0 always did: no servers, none named).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from components.local_stack import free_port, mlflow_server, prefect_server, stop

ROOT = Path(tempfile.mkdtemp(prefix="quantflow-tests-"))
TIERS = ("unit", "stack", "flow", "vllm", "drill", "browser")
NEEDS_SERVERS = {"stack", "flow", "drill", "browser"}
# A module's tiers, unless the test is named in TESTS; any other module is `unit`.
MODULES = {
    "test_automations": ("stack",), "test_cli": ("stack",), "test_tracking": ("stack",),
    "test_tracking_s3": ("stack",), "test_store_s3": ("stack",), "test_readme": ("stack", "drill"),
    "test_deployment": ("flow", "stack"), "test_flow_e2e": ("flow",), "test_concurrency": ("flow",),
    "test_sweep": ("flow",), "test_sweep_spread": ("flow", "stack"), "test_secrets": ("flow",),
    "test_faults": ("flow", "drill"), "test_ui": ("browser", "flow", "stack"), "test_remote_artifacts": ("flow",),
}
# Tests whose tiers differ from their module's, by module and function name (all parameters of a parametrized test).
TESTS = {
    "test_flow_e2e::test_w8a8_on_vllm_then_cached": ("flow", "vllm"),
    "test_sweep::test_calibration_axes_make_one_variant_each": ("unit",),
    "test_sweep::test_sweep_spec_is_strict": ("unit",),
    "test_faults::test_g_the_exit_deadline_starts_when_the_signal_arrives": ("drill",),
    "test_tracking::test_the_record_digest_is_of_content_only": ("unit",),
    "test_gpu_check::test_the_gpu_check_runs_on_cpu_and_writes_every_check": ("flow",),
    "test_card::test_creation_snippet_reproduces_the_pipeline_checkpoint": ("flow",),
    "test_determinism::test_quantizing_twice_in_fresh_processes_gives_the_same_bytes": ("flow",),
    "test_references::test_flow_with_a_published_baseline_evaluates_only_the_variant": ("flow",),
    "test_infra::test_deploy_for_real_to_the_session_prefect_server": ("stack",),
    "test_infra::test_run_deployment_reads_the_flow_runs_recovery_table": ("stack",),
    "test_infra::test_run_deployment_stops_waiting_and_leaves_a_long_run_going": ("stack",),
    "test_infra::test_the_kubernetes_sweep_pod_holds_no_gpu_and_fans_out_to_the_gpu_deployment": ("stack",),
    "test_infra::test_the_kubernetes_variant_pod_is_sized_from_the_plan_and_keeps_its_home_on_the_scratch_volume": ("stack",),
    "test_infra::test_a_variant_run_on_its_own_gets_the_deployments_bounded_sizes": ("stack",),
    "test_infra::test_start_script_starts_a_server": ("stack",),
    "test_store_hub::test_token_from_a_prefect_secret_block": ("stack",),
    "test_remote_artifacts::test_a_folder_made_in_one_home_is_fetched_whole_in_another_or_not_at_all": ("stack",),
    "test_remote_artifacts::test_the_artifact_store_check": ("unit",),
}
_procs: list = []
_ports: dict[str, int] = {}
_DEFAULT = "QUANTFLOW_TESTS_DEFAULT_TIER"  # the main process's reading of its command line, for xdist's workers


def pytest_configure(config):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["QUANTFLOW_HOME"] = str(ROOT / "home")
    os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(ROOT / "home" / "prefect-results")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
    (ROOT / "prefect").mkdir()
    (ROOT / "mlflow").mkdir()
    if not hasattr(config, "workerinput"):
        plain = not config.option.markexpr and config.args_source == pytest.Config.ArgsSource.TESTPATHS
        os.environ[_DEFAULT] = "unit" if plain else "not slow" if not config.option.markexpr else ""
    if servers_wanted():
        _ports.update(prefect=free_port(), mlflow=free_port())
        _point_at_servers()


def servers_wanted() -> bool:
    return os.environ.get("QUANTFLOW_TEST_SERVERS", "1") == "1"


def _point_at_servers() -> None:
    """The environment names the session's servers (before prefect is imported, it reads its settings then)."""
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_ports['prefect']}/api"
    os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{_ports['mlflow']}"


def tiers_of(item) -> set[str]:
    """A test's own tier markers, else its entry in TESTS, else its module's in MODULES, else `flow` or `stack` for a
    test that skips without the session's servers (its skipif's reason says so), else `unit`."""
    given = {m.name for m in item.iter_markers() if m.name in TIERS}
    if given:
        return given
    module = Path(str(item.fspath)).stem
    named = TESTS.get(f"{module}::{getattr(item, 'originalname', item.name)}")
    if named or module in MODULES:
        return set(named or MODULES[module])
    if any("server" in m.kwargs.get("reason", "") for m in item.iter_markers("skipif")):
        return {"flow"} if "tiny_model" in item.fixturenames else {"stack"}
    return {"unit"}


def pytest_collection_modifyitems(config, items):
    """Each test gets its tiers; without -m, plain `pytest` keeps the unit tier and named tests keep all but `slow`."""
    for item in items:
        if item.get_closest_marker("slow") is None:
            for tier in tiers_of(item):
                item.add_marker(tier)
    default = os.environ.get(_DEFAULT, "")
    if default and not config.option.markexpr:
        keep = [i for i in items
                if (i.get_closest_marker("unit") if default == "unit" else not i.get_closest_marker("slow"))]
        if len(keep) < len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in keep])
            items[:] = keep
    _heaviest_modules_first(items)


HEAVY = {"flow", "drill", "browser", "vllm"}


def _heaviest_modules_first(items: list) -> None:
    """Modules in the order pytest-xdist hands them out to `make test`'s two workers (one module at a time, with
    `--no-loadscope-reorder`: its default order, by number of tests, leaves the few long flow modules for last, one
    worker running them while the other waits): most pipeline runs first, then most server tests, the quick unit
    modules last to fill in. Within a module, the order as written."""
    weight: dict[str, list[int]] = {}
    for item in items:
        tiers = {m.name for m in item.iter_markers()}
        w = weight.setdefault(str(item.fspath), [0, 0])
        w[0] -= bool(HEAVY & tiers)
        w[1] -= "stack" in tiers
    items.sort(key=lambda item: (*weight[str(item.fspath)], str(item.fspath)))


def pytest_report_header(config):
    if os.environ.get(_DEFAULT) == "unit" and not hasattr(config, "workerinput"):
        return "plain pytest: the unit tier only (make test runs every tier; -m selects tiers)"
    return None


def pytest_collection_finish(session):
    """Start the servers if a selected test needs them (before any test runs, so every test of the session sees the
    same servers); else the environment names none, as a session without servers always did."""
    if not servers_wanted() or session.config.option.collectonly:
        return
    if any(NEEDS_SERVERS & {m.name for m in item.iter_markers()} for item in session.items):
        _start_servers()
    else:
        del os.environ["PREFECT_API_URL"], os.environ["QUANTFLOW_MLFLOW_TRACKING_URI"]
        _settings_changed()


def _start_servers() -> None:
    """The Prefect server (with its dashboard, for tests/test_ui.py) and the MLflow server, on the ports the environment
    names; on other free ports (the environment moved there) if one was taken meanwhile."""
    for name, start in (("prefect", lambda port: prefect_server(ROOT / "prefect", port=port, ui=True)),
                        ("mlflow", lambda port: mlflow_server(ROOT / "mlflow", port=port))):
        try:
            proc, _ = start(_ports[name])
        except RuntimeError:  # it exited at once: the port was taken
            _ports[name] = free_port()
            _point_at_servers()
            _settings_changed()
            proc, _ = start(_ports[name])
        _procs.append(proc)


def _settings_changed() -> None:
    """What read the environment already (prefect's settings, at import; quantflow's, once) reads it again."""
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()
    if "components.settings" in sys.modules:
        sys.modules["components.settings"].settings.cache_clear()


def pytest_sessionfinish(session):
    """Servers stopped and data removed here, not at unconfigure: a pytest-xdist worker reports itself finished after
    this hook and may be ended before its unconfigure completes, which would leave them behind."""
    while _procs:
        stop(_procs.pop())
    if os.environ.get("QUANTFLOW_KEEP_TEST_DATA") != "1":  # set it to look at a session's data afterwards
        shutil.rmtree(ROOT, ignore_errors=True)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        os.environ.pop(_DEFAULT, None)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def embedded_base():
    """The embedded default converted to bf16 safetensors (once per session, ~40 s)."""
    from components.models import EMBEDDED_DEFAULT, resolve

    return resolve(EMBEDDED_DEFAULT)


@pytest.fixture(scope="session")
def embedded_tokenizer() -> Path:
    """The embedded default's tokenizer as its conversion saves it, without converting the weights (seconds)."""
    from tiny import save_embedded_tokenizer

    return save_embedded_tokenizer(ROOT / "embedded-tokenizer")


@pytest.fixture(scope="session")
def embedded_shaped(embedded_tokenizer) -> Path:
    """The embedded default's architecture and shapes with random weights (seconds): for config and header checks."""
    from tiny import make_embedded_shaped

    return make_embedded_shaped(ROOT / "embedded-shaped", embedded_tokenizer)


@pytest.fixture(scope="session")
def tiny_model(embedded_tokenizer) -> Path:
    from tiny import make_tiny_llama

    return make_tiny_llama(ROOT / "tiny-llama", str(embedded_tokenizer))
