"""benchmarks/gpu/: the GPU check in its CPU mode (tiny shapes, same code paths), and the carried-wheel bootstrap
installing offline from a local folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benchmarks" / "gpu"


def test_the_gpu_check_runs_on_cpu_and_writes_every_check(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(GPU / "check.py"), "--cpu", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    g1, g2, g3 = (json.loads((tmp_path / f"g{i}.json").read_text()) for i in (1, 2, 3))
    assert not any("error" in c or "skipped" in c for g in (g1, g2, g3) for c in g["cases"].values()), (g1, g2, g3)
    for case in g1["cases"].values():
        # the cache llm-compressor held, by kind, against the plan: the eager mask is there and counted
        assert case["pass"] and case["cache_measured"] == case["cache_planned"], case
        assert case["cache_measured"]["mask"] > 0 and case["placement"] == "cpu"
    [g2case] = g2["cases"].values()
    for mode in ("fp32", "tf32"):
        assert len(g2case[mode]["losses"]) == 7 and g2case[mode]["hessian_s"] > 0 and g2case[mode]["solve_s"] > 0
    assert g2case["max_int8_weight_difference"] is not None
    for case in g3["cases"].values():
        assert case["pass"] and case["reloads_with_finite_logits"] and abs(case["checkpoint_error"]) <= 0.10, case


def test_the_gpu_check_skips_what_is_left_past_its_deadline(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(GPU / "check.py"), "--cpu", "--out", str(tmp_path), "--deadline-s", "0",
                           "--checks", "g3"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads((tmp_path / "g3.json").read_text())["cases"]
    assert cases and all(c == {"skipped": "deadline"} for c in cases.values()), cases


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel: one module saying its version."""
    dist = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
    return path


def test_the_bootstrap_installs_the_carried_wheels_offline_beside_the_machines_packages(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "carried_demo", "0.1")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# carried\ncarried-demo==0.1\n")
    env = {**os.environ, "PYTHON": sys.executable, "REQUIREMENTS": str(reqs), "CHECK_IMPORTS": "carried_demo",
           "PIP_INDEX_URL": "http://127.0.0.1:9/nowhere", "PIP_CONFIG_FILE": os.devnull}  # no index: offline or fail
    venv = tmp_path / "venv"
    proc = subprocess.run(["sh", str(GPU / "bootstrap.sh"), "install", str(venv), str(wheels)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installed: carried-demo 0.1" in proc.stdout
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()  # the machine's torch stays
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import carried_demo; print(carried_demo.VERSION)"],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "0.1"
    # a wheel that was not carried fails the install, naming it, instead of reaching for an index
    reqs.write_text("carried-demo==0.1\nnot-carried==1.0\n")
    proc = subprocess.run(["sh", str(GPU / "bootstrap.sh"), "install", str(tmp_path / "venv2"), str(wheels)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not-carried" in proc.stderr, proc.stdout + proc.stderr
