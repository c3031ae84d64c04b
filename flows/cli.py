"""`quantflow`: the one command line for everything a person types."""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import typer
import yaml

app = typer.Typer(help="Quantize LLMs with llm-compressor, evaluate them with lm-eval, publish them with their cards.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)  # locals may hold secrets
_verbose = False
SIGNAL_EXIT_S = 8  # after Ctrl-C or SIGTERM, exit by then whatever the run is doing (a long C call, a hung request)


@app.callback()
def _options(verbose: bool = typer.Option(False, "--verbose", help="Tracebacks and Prefect's full failure logs.")) -> None:
    global _verbose
    _verbose = verbose
    if not verbose:
        logging.getLogger("huggingface_hub.utils._http").addFilter(_HubRetries())
    try:
        _prefect_defaults()
    except ValueError:  # settings the environment gets wrong: the command that reads them says so, in one line
        pass


class _HubRetries(logging.Filter):
    """huggingface_hub logs two lines for each retry of each request, through two handlers (its own, which a library
    adds, and Prefect's): 26 lines for one preflight against an unreachable Hub. The first is said once, here, with a
    note that it retries; the rest is left out (--verbose shows them)."""

    def __init__(self):
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "thrown while requesting" not in msg and not msg.startswith("Retrying in"):
            return True
        if not self.said:
            self.said = True
            typer.echo(f"{msg} (retrying with backoff; further retries not shown)", err=True)
        return False


def _error_lines(e: BaseException) -> str:
    """A known error as one line per problem; anything else as one line pointing at --verbose."""
    from pydantic import ValidationError

    from components.evaluation.environment import EvaluationError
    from components.preflight import PreflightError
    from components.messages import validation_problems

    if isinstance(e, ValidationError):
        problems = validation_problems(e)
        return f"invalid spec ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  - " + "\n  - ".join(problems)
    if isinstance(e, (PreflightError, ValueError, OSError, EvaluationError)):  # an engine's failure: its log's tail
        return str(e)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''} (rerun with --verbose for the traceback)"


def _friendly(fn):
    """Errors as one line per problem and exit 1 (printed once: Prefect's console copies are filtered); --verbose
    shows the traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the command line's last word on any failure
            if _verbose:
                raise
            typer.echo(_error_lines(e), err=True)
            raise typer.Exit(1) from None
    return wrapper


class _Console(logging.Filter):
    """What Prefect prints to the terminal during a run, less what the command prints itself: the failure (with its
    traceback) once per task and once per flow, crash reports after a signal, and the recovery tables. The Prefect API
    still gets every record. Also notes the last task that crashed: where a SIGTERM stopped the run."""

    REPEATS = ("Recovery of ", "Sweep recovery:")

    def __init__(self):
        super().__init__()
        self.crashed_in: str | None = None
        self.last_step: str | None = None  # the task run that logged last: where a signal most likely landed

    def filter(self, record: logging.LogRecord) -> bool:
        self.last_step = getattr(record, "task_run_name", None) or self.last_step
        msg = str(record.msg)
        if msg.startswith("Crash detected!"):
            self.crashed_in = self.crashed_in or getattr(record, "task_run_name", None)
            return False
        if msg.startswith(self.REPEATS):
            return False
        if msg.startswith(("Finished in state Failed", "Finished in state Crashed")):
            return False
        return not (record.levelno >= logging.ERROR and record.exc_info)


@contextmanager
def _run_console():
    """Install the console filter on Prefect's terminal handlers (unless --verbose)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    console = _Console()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    for h in handlers if not _verbose else []:
        h.addFilter(console)
    try:
        yield console
    finally:
        for h in handlers:
            h.removeFilter(console)


_SPARED: set[int] = set()  # the temporary Prefect server: it must outlive the run to record how the run ended


def _stop_children(grace: float = 3) -> None:
    """Terminate every descendant process (lm_eval, vllm serve, their workers), then kill what is left."""
    import psutil

    children = []
    for child in psutil.Process().children():
        if child.pid not in _SPARED:
            try:
                children += [child, *child.children(recursive=True)]
            except psutil.Error:
                pass
    for c in children:
        try:
            c.terminate() if grace else c.kill()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace or 0.5)
    for c in alive:
        try:
            c.kill()
        except psutil.Error:
            pass


def _where(console: _Console) -> str:
    """Where the main thread is (called there, by the signal handler), else the console's best guess."""
    from prefect.context import FlowRunContext, TaskRunContext

    task, flow = TaskRunContext.get(), FlowRunContext.get()
    if task is not None:
        return f"step {task.task_run.name}"
    if console.crashed_in:
        return f"step {console.crashed_in}"
    if flow is not None:
        return f"flow run {flow.flow_run.name} (preflight or between steps)"
    if console.last_step:  # outside the run's thread (the signal clock): the step that logged last
        return f"step {console.last_step}"
    return "start-up"


class _Stop:
    """Ctrl-C (SIGINT to the process group) or SIGTERM, carried out by a thread of its own, so that it does not depend
    on where the main thread is: an exception raised by a signal handler lands wherever the main thread happens to be
    (a weakref callback or a `__del__`, where Python prints it and swallows it, or a C extension's loop), and the
    work it was meant to stop goes on.

    The first signal: one line saying where the run stopped, then stdout and stderr go to /dev/null (nothing after
    that line: no progress bar, no "Exception ignored" traceback); the main thread is interrupted once, best effort;
    the stopping thread terminates the child processes, records the run's flow runs (and their unfinished task runs)
    CRASHED through the Prefect API, as Prefect's engine does after an interrupt (finished steps stay cached: the rerun
    resumes), sends the queued logs and events, stops the temporary server and exits 130/143. The main thread never
    ends the process or tears down the server once a stop has begun (`hold`). SIGNAL_EXIT_S after the signal *arrived*
    (`_signal_clock`), the process exits whatever the stop is waiting for."""

    def __init__(self, console: _Console):
        self.console = console
        self.signum: int | None = None
        self.api: str | None = None  # the Prefect API the run reports to
        self.server = None  # the temporary server, if any: stopped last
        self.ledger = None  # components.orphans.Ledger: the flow runs this process started
        self._begin = threading.Lock()
        self._handled = threading.Event()
        self._go = threading.Event()
        # Started now, not from the handler: starting a thread takes threading's own locks, which the interrupted main
        # thread may hold.
        threading.Thread(target=self._finish, daemon=True, name="quantflow-stop").start()

    def handler(self, signum, frame) -> None:
        """The Python-level handler (main thread, between two bytecodes): where the run is, the stop begun, and one
        KeyboardInterrupt so the main thread's work usually stops at once (the stop does not count on it)."""
        first = self.begin(signum, _where(self.console))
        self._handled.set()
        if first:
            raise KeyboardInterrupt

    def arrived(self, signum: int) -> None:
        """The signal clock's thread, as the signal arrives: if the main thread does not run the handler soon (a long
        C call), begin without it."""
        if not self._handled.wait(0.5):
            self.begin(signum, _where(self.console))

    def begin(self, signum: int, where: str) -> bool:
        """Say it, silence the terminal, start the stopping thread; once (True the first time)."""
        if not self._begin.acquire(blocking=False):
            return False
        self.signum = signum
        line = (f"\nStopped by {signal.Signals(signum).name} during {where}: rerun the same command to resume "
                "(finished steps come from the cache).\n")
        try:
            os.write(2, line.encode())
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        except OSError:
            pass
        self._go.set()
        return True

    def _finish(self) -> None:
        self._go.wait()
        signum = self.signum
        _stop_children()
        self.record(signum)
        _flush_prefect(timeout=2)
        if self.server is not None:
            from components.processes import stop

            stop(self.server, grace=2)
        _stop_children(grace=0)  # what the main thread started meanwhile (a retry)
        os._exit(128 + signum)

    def record(self, signum: int) -> None:
        """The run's flow runs CRASHED; the ledger goes when that is done (else the next command does it)."""
        if self.api is None or self.ledger is None:
            return
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from components.orphans import crash

        try:
            with temporary_settings(updates={PREFECT_API_URL: self.api}):  # settings are per thread (a context)
                crash(self.ledger.flow_runs, f"stopped by {signal.Signals(signum).name}: rerun the same command to "
                                             "resume (finished steps come from the cache)")
            self.ledger.close()
        except Exception:  # noqa: BLE001 - the ledger stays: the next command marks them
            pass

    def give_up(self, signum: int) -> None:
        """SIGNAL_EXIT_S after the signal arrived the process is still here (the API does not answer, a child does
        not die): stop the children and exit."""
        self.begin(signum, _where(self.console))
        _stop_children(grace=1)
        os._exit(128 + signum)

    def hold(self) -> None:
        """In the main thread, on its way out: once a stop has begun, the stopping thread ends the process."""
        while self.signum is not None:
            time.sleep(1)

    def tracked(self, flow):
        """`flow` noting each flow run it starts in the ledger; in the main thread it also takes SIGTERM back from
        Prefect's engine, whose handler raises wherever the main thread is (a runner's cancellation does not apply:
        this process is the command line's)."""
        def running(_flow, flow_run, _state) -> None:
            if self.ledger is not None:
                self.ledger.add(str(flow_run.id))
            if threading.current_thread() is threading.main_thread() and self.signum is None:
                signal.signal(signal.SIGTERM, self.handler)

        return flow.with_options(on_running=[*flow.on_running_hooks, running])


@contextmanager
def _stoppable(console: _Console):
    """Ctrl-C or SIGTERM stop the run (see _Stop) within SIGNAL_EXIT_S of their arrival."""
    stop = _Stop(console)
    old = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    undo = _signal_clock(stop.give_up, stop.arrived)
    try:
        yield stop
    finally:
        stop.hold()
        for s, h in old.items():
            signal.signal(s, h)
        undo()


def _signal_clock(give_up, arrived: Callable[[int], None] | None = None) -> Callable[[], None]:
    """Start the exit deadline when SIGINT or SIGTERM *arrives*, not when a Python handler gets to run: the C-level
    handler writes the signal number to a wakeup fd (`signal.set_wakeup_fd`), a thread reads it, calls
    `arrived(signum)` and `give_up(signum)` SIGNAL_EXIT_S later unless the run has exited by then. Returns the function
    that undoes it."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: no clock, the handler's own exit path stands
        os.close(r)
        os.close(w)
        return lambda: None

    def watch() -> None:
        timer = None
        try:  # read to the end: a signal that finds the pipe closed would print a traceback
            while data := os.read(r, 1):
                if timer is None and data[0] in (signal.SIGINT, signal.SIGTERM):
                    timer = threading.Timer(SIGNAL_EXIT_S, give_up, (data[0],))
                    timer.daemon = True
                    timer.start()
                    if arrived is not None:
                        arrived(data[0])
        finally:
            os.close(r)

    threading.Thread(target=watch, daemon=True, name="quantflow-signal-clock").start()

    def undo() -> None:
        signal.set_wakeup_fd(previous)
        os.close(w)  # the watching thread's read returns empty and it ends

    return undo


def _flush_prefect(timeout: float = 5) -> None:
    """Send queued logs and events now, while the API still answers (the temporary server stops next)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def _needs_prefect_api(spec) -> bool:
    """Whether preflight needs the Prefect API: a store names a credentials block."""
    return any(getattr(s, "credentials", None) for s in spec.stores)


@contextmanager
def _prefect_api(stop: _Stop, check: Callable[[], None] | None = None):
    """The Prefect API the run reports to: PREFECT_API_URL if set (checked first: one line if it does not answer),
    else the stack `quantflow server up` runs, else a temporary local server in its own session, so Ctrl-C in the
    terminal reaches the run, not the server, tied to this process (it dies with it, SIGKILL included). `check` (the
    spec's preflight) runs while the temporary server starts: a refusal does not wait for a server. Flow runs that a
    killed command left unfinished on this API are marked CRASHED first (components/orphans.py)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, get_current_settings, temporary_settings

    from components.local_stack import prefect_api_problem, prefect_server, stop as stop_server, wait_prefect
    from components.preflight import PreflightError
    from components.settings import settings
    from components.redaction import safe_uri

    url, proc = get_current_settings().api.url, None
    if url:
        problem = prefect_api_problem(url)
        if problem:
            raise PreflightError([problem])
        ledger_key = safe_uri(url)
    elif stack := settings().stack():  # `quantflow server up` is running: report there, as the UI shows it
        url = ledger_key = stack.prefect_api_url
    else:
        home = Path(get_current_settings().home)
        log = settings().path("stack") / "prefect-temporary.log"
        proc, url = prefect_server(home, log=log, tied=True, wait=False)
        ledger_key = f"temporary server on {home.expanduser().resolve()}"
        stop.server = proc
        _SPARED.add(proc.pid)
    try:
        if check is not None:
            check()
        if proc is not None:
            wait_prefect(proc, url, log)
        stop.api = url
        # A temporary server has no UI address: it goes when the run ends, so Prefect prints no "View at" link that
        # would be dead by then (and the MLflow run records none); the command prints the MLflow run and the card.
        updates = {PREFECT_API_URL: url, **({PREFECT_UI_URL: ""} if proc is not None else {})}
        with temporary_settings(updates=updates):
            from components.orphans import Ledger, reap

            for line in reap(settings().path("runs"), ledger_key):
                typer.echo(line, err=True)
            stop.ledger = Ledger(settings().path("runs"), ledger_key)
            try:
                yield
            finally:
                stop.hold()
                _flush_prefect()
                stop.ledger.close()
    finally:
        stop.hold()
        if proc is not None:
            stop_server(proc, grace=3)
            _SPARED.discard(proc.pid)


@contextmanager
def _flow_run(check: Callable[[], None] | None = None):
    """Everything a flow run from the command line needs around it (see each context); yields `tracked(flow)`."""
    from components.preflight import PreflightError
    from components.settings import check_home, settings

    problems = check_home().problems
    if problems:
        raise PreflightError(problems)
    settings().path("logs")  # LLM_COMPRESSOR_LOG_FILE's folder
    import flows.quantize_variant  # noqa: F401 - sets up Prefect's logging, which the console filter adjusts

    with _run_console() as console, _stoppable(console) as stop, _prefect_api(stop, check):
        yield stop.tracked


def _prefect_defaults() -> None:
    """Keep Prefect's results (the task cache) beside quantflow's data unless told otherwise. Called before any command
    imports prefect: Prefect reads its settings from the environment once, when it is imported (set later, the results
    went to ~/.prefect/storage, shared by every QUANTFLOW_HOME). The folders are made by the commands that use them,
    once the home is checked."""
    from components.settings import settings

    home = settings().home.expanduser().resolve()
    # Under Prefect's own name: a worker hands its settings to its runs under their canonical names, which beat an
    # alias (PREFECT_LOCAL_STORAGE_PATH) set in a run's job variables.
    if not {"PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH"} & set(os.environ):
        os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(home / "prefect-results")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network at run time
    if not _verbose:  # llm-compressor's per-layer lines (hundreds; its METRIC level is above WARNING) go to a file
        os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
        os.environ.setdefault("LLM_COMPRESSOR_LOG_FILE", str(home / "logs" / "llmcompressor.log"))


def _with(data: dict, overrides: dict) -> dict:
    """`data` with dotted-key overrides (None: not given) applied; a section that is not a mapping is left for
    validation to name."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = value
    return data


def _spec(spec_file: Optional[Path], overrides: dict):
    from components.specs import VariantSpec, load_spec_file

    return VariantSpec.model_validate(_with(load_spec_file(spec_file) if spec_file else {}, overrides))


@app.command()
@_friendly
def run(
    spec_file: Optional[Path] = typer.Option(None, "--spec", help="VariantSpec as YAML or JSON; flags override it."),
    model: Optional[str] = typer.Option(None, help="Base model: Hub id, local dir, GGUF file or pkg:<package>/<file>."),
    scheme: Optional[str] = typer.Option(None, help="Scheme name (see `quantflow schemes`)."),
    suite: Optional[str] = typer.Option(None, help="Eval suite (see `quantflow suites`)."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | hf"),
    dataset: Optional[str] = typer.Option(None, help="Calibration dataset: Hub id or local file."),
    num_samples: Optional[int] = typer.Option(None, help="Calibration samples."),
    max_seq_length: Optional[int] = typer.Option(None, help="Calibration sequence length."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N docs of each task."),
    serving: Optional[bool] = typer.Option(None, "--serving/--no-serving",
                                           help="Measure serving speed of base and variant with vLLM (default: on)."),
) -> None:
    """Run one variant end to end (quantize, evaluate base and variant, card, publish, track)."""
    spec = _spec(spec_file, {"base.source": model, "scheme": scheme, "evaluation.suite": suite, "evaluation.engine": engine,
                             "calibration.dataset": dataset, "calibration.num_samples": num_samples,
                             "calibration.max_seq_length": max_seq_length, "evaluation.limit": limit,
                             "evaluation.serving.enabled": serving})
    from components.preflight import preflight
    from flows.quantize_variant import quantize_variant

    # Preflight while the temporary server starts: a bad spec is refused without waiting for one. The flow checks
    # again (its model-side facts are remembered, components/preflight_memo.py), as a run from a deployment must.
    with _flow_run(None if _needs_prefect_api(spec) else lambda: preflight(spec)) as tracked:
        outcome = tracked(quantize_variant)(spec)
    from components.card.render import accuracy_table, gate_markdown, serving_table
    from components.settings import settings

    typer.echo("\n" + accuracy_table(outcome.table, "base", outcome.name, outcome.gate) + "\n\n" + gate_markdown(outcome.gate))
    if outcome.speed:
        typer.echo("\n" + serving_table(outcome.speed, "base", outcome.name))
    typer.echo(f"\nEngine: {outcome.engine}\nCard: {outcome.card}\nCheckpoint: {outcome.checkpoint}")
    for p in outcome.published:
        typer.echo(f"Published ({p.store}): {p.uri}")
    from components.tracking import run_url

    link = run_url(outcome.mlflow_run_id) or f"{outcome.mlflow_run_id}  (browse: mlflow ui --backend-store-uri " \
                                                f"{settings().tracking_uri})"
    typer.echo(f"MLflow run: {link}")


@app.command()
@_friendly
def sweep(
    schemes: list[str] = typer.Option(["w8a8-int8", "fp8-dynamic"], "--scheme", help="Repeat for each variant."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the embedded default)."),
    suite: Optional[str] = typer.Option(None, help="Eval suite."),
    engine: Optional[str] = typer.Option(None, help="auto | vllm | hf"),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N docs of each task."),
    serving: Optional[bool] = typer.Option(None, "--serving/--no-serving", help="Measure serving speed (default: on)."),
    num_samples: list[int] = typer.Option([], "--num-samples", help="Calibration samples; repeat to sweep them."),
    max_seq_length: list[int] = typer.Option([], "--max-seq-length", help="Calibration sequence length; repeat to sweep."),
    dataset: list[str] = typer.Option([], "--dataset", help="Calibration dataset; repeat to sweep."),
    dispatch: Optional[str] = typer.Option(None, help="local (default: one after another here) | deployments "
                                                      "(each variant a run of the quantize-variant deployment, at once)."),
    work_queue: Optional[str] = typer.Option(None, help="With deployments: the work queue of the variant runs."),
) -> None:
    """Several variants of one base model (schemes x calibration settings); calibration and the baseline evaluation
    are computed once. An option given once sets it for every variant; given several times, it is a sweep axis."""
    import itertools

    from components.card.render import headline
    from flows.sweep import SweepSpec, comparison, sweep as sweep_flow

    axes = {"num_samples": num_samples, "max_seq_length": max_seq_length, "dataset": dataset}
    swept = {k: v for k, v in axes.items() if len(v) > 1}
    data = _with({"schemes": schemes}, {"base.source": model, "evaluation.suite": suite, "evaluation.engine": engine,
                                        "evaluation.limit": limit, "evaluation.serving.enabled": serving,
                                        "dispatch": dispatch, "work_queue": work_queue,
                                        **{f"calibration.{k}": v[0] for k, v in axes.items() if len(v) == 1}})
    if swept:
        data["calibrations"] = [dict(zip(swept, point, strict=True)) for point in itertools.product(*swept.values())]
    spec = SweepSpec.model_validate(data)
    with _flow_run() as tracked:
        outcomes = tracked(sweep_flow)(spec)
    typer.echo("\n" + comparison(outcomes, spec.variants()))
    for o in outcomes:
        typer.echo(f"{o.name}: {headline(o.table, o.gate)}; card {o.card}")


@app.command()
@_friendly
def compare(base: str = typer.Argument(..., help="Base model name, e.g. SmolLM2-135M-Instruct."),
            png: Optional[Path] = typer.Option(None, help="Also write a bar chart of recovery per task here.")) -> None:
    """The variants of a base model side by side (recovery per task, gate), from MLflow."""
    from components import comparison, tracking

    tasks, rows = comparison.variants(base)
    typer.echo(comparison.markdown(tasks, rows))
    if url := tracking.experiment_url(base):
        typer.echo(f"MLflow, headline columns first: {url}")
    if png:
        typer.echo(f"chart: {comparison.chart(tasks, rows, png)}")


@app.command()
@_friendly
def card(reference: list[str] = typer.Option(..., "--reference", help="A published baseline (shipped name or YAML "
                                             "path), one per suite, in the table's order."),
         quantized: str = typer.Option(..., help="The quantized model whose published scores fill the second column "
                                       "(shipped references `<quantized>.<suite>`)."),
         recovery_format: str = typer.Option(".2f", help="Python format of the recovery column: '#.4g' as the "
                                             "Meta-Llama-3.1-70B-Instruct-FP8 card prints it, '.1f' as "
                                             "Llama-3.3-70B-Instruct-quantized.w8a8's.")
         ) -> None:
    """A reference card's accuracy table, regenerated from the published scores shipped with quantflow."""
    from components.card.render import published_table

    typer.echo(published_table(reference, quantized, recovery_format))


def _api_url() -> str:
    """PREFECT_API_URL, else the running stack's; one line saying how to get one when there is neither."""
    from prefect.settings import get_current_settings

    from components.settings import settings

    url = get_current_settings().api.url
    if not url and (stack := settings().stack()):
        url = stack.prefect_api_url
    if not url:
        raise ValueError("no Prefect server: start one with `quantflow server up --detach`, or set PREFECT_API_URL")
    return url


def _prefect_cli() -> str:
    import sys

    return str(Path(sys.executable).parent / "prefect")


def _checkout() -> Path:
    """The quantflow checkout this CLI runs from (an editable install): `prefect deploy` reads the entrypoints of
    infra/prefect.yaml relative to it, and a worker runs its flows, whatever directory the command is typed in."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "infra" / "prefect.yaml").is_file():
        raise ValueError(f"quantflow at {root} is not a checkout (no infra/prefect.yaml): run this command from a "
                         "git clone of quantflow installed with `pip install -e .` (make setup)")
    return root


# Prefect's own "start a worker" hint, after `work-pool create` and `deploy`: quantflow prints its own (`quantflow worker`)
_PREFECT_WORKER_HINT = re.compile(r"prefect worker start|start a worker|To execute flow runs from these deployments")


def _prefect_quietly(argv: list[str], env: dict, cwd: Path) -> None:
    """Run a prefect CLI command, its output passed on less Prefect's worker hint; exit 1 when it fails."""
    import subprocess

    proc = subprocess.Popen(argv, env={**env, "COLUMNS": "200"}, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    blank = False
    for line in proc.stdout:
        if _PREFECT_WORKER_HINT.search(line) or (blank and not line.strip()):
            continue
        blank = not line.strip()
        typer.echo(line, nl=False)
    if proc.wait():
        raise typer.Exit(1)


@app.command()
@_friendly
def deploy(prefect_file: Optional[Path] = typer.Option(None, help="Deployments to create (default: the checkout's "
                                                                   "infra/prefect.yaml)."),
           pool: str = typer.Option("quantflow-local", help="Process work pool to create if missing."),
           concurrency_limit: int | None = typer.Option(
               None, min=1, help="Flow runs the pool runs at once, across its workers: its GPUs (one variant each), "
                                 "plus one for a sweep's own run that waits for them. Unset: no limit.")) -> None:
    """Create the work pool (if missing) and deploy every deployment of the file to the Prefect server
    (PREFECT_API_URL, else the running `quantflow server up`), from any directory: the entrypoints are the checkout's."""
    root = _checkout()
    prefect_file = (prefect_file or root / "infra" / "prefect.yaml").resolve()
    if not prefect_file.is_file():
        raise ValueError(f"--prefect-file {prefect_file}: no such file (the default is {root / 'infra' / 'prefect.yaml'})")
    env = {**os.environ, "PREFECT_API_URL": _api_url()}
    limit = (["set-concurrency-limit", pool, str(concurrency_limit)] if concurrency_limit
             else ["clear-concurrency-limit", pool])
    for argv in ([_prefect_cli(), "--no-prompt", "work-pool", "create", pool, "--type", "process", "--overwrite"],
                 [_prefect_cli(), "--no-prompt", "work-pool", *limit],
                 [_prefect_cli(), "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)]):
        _prefect_quietly(argv, env, root)
    _install_automations()
    typer.echo(f"Start a worker: quantflow worker --pool {pool}")


@app.command()
@_friendly
def worker(pool: str = typer.Option("quantflow-local", help="Work pool to serve."),
           project_dir: Optional[Path] = typer.Option(None, help="Checkout whose flows the runs execute "
                                                                 "(QUANTFLOW_PROJECT_DIR of the deployments' pull step; "
                                                                 "default: the checkout this quantflow runs from).")) -> None:
    """A process worker for the deployments (runs what the Prefect UI launches) until Ctrl-C."""
    from components.settings import settings

    project = project_dir.resolve() if project_dir else _checkout()
    # the worker's home, as every quantflow command reads it here, is its runs' home (the deployments set none), and
    # Prefect's results go beside it (_prefect_defaults)
    env = {**os.environ, "PREFECT_API_URL": _api_url(), "QUANTFLOW_PROJECT_DIR": str(project),
           "QUANTFLOW_HOME": str(settings().home.expanduser().resolve())}
    os.execve(_prefect_cli(), [_prefect_cli(), "worker", "start", "--pool", pool], env)


def _install_automations() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from components.automations import ZOMBIE, ensure_zombie_automation

    with temporary_settings(updates={PREFECT_API_URL: _api_url()}):
        typer.echo(f"Automation {ZOMBIE}: {ensure_zombie_automation()} (a flow run whose heartbeats stop is marked CRASHED)")


@app.command()
@_friendly
def status(limit: int = typer.Option(10, help="How many recent runs.")) -> None:
    """Recent quantflow flow runs and their states, from the Prefect server."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async def runs():
        async with get_client() as client:
            flows = {f.id: f.name for f in await client.read_flows()}
            return flows, await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=limit)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: _api_url()}):
        flows, found = anyio.run(runs)
    for r in found:
        start = r.start_time.strftime("%Y-%m-%d %H:%M") if r.start_time else "-"
        typer.echo(f"{start}  {flows.get(r.flow_id, '?'):18} {r.name:24} {r.state_name or '-':10} {r.id}")


server = typer.Typer(help="The local stack: Prefect server and MLflow server on 127.0.0.1.")
app.add_typer(server, name="server")


@server.command("up")
@_friendly
def server_up(prefect_port: int = typer.Option(4200, envvar="QUANTFLOW_PREFECT_PORT"),
              mlflow_port: int = typer.Option(5000, envvar="QUANTFLOW_MLFLOW_PORT"),
              detach: bool = typer.Option(False, "--detach", help="Leave the servers running in the background "
                                                                  "(stop them with `quantflow server down`).")) -> None:
    """Start the Prefect server (API and dashboard, data under QUANTFLOW_HOME/stack) and the MLflow server on the home's
    MLflow store (QUANTFLOW_HOME/mlflow.db). While they run, every quantflow command (runs, deploy, worker, status,
    compare) uses them."""
    import time

    from components.local_stack import mlflow_server, prefect_server
    from components.settings import Stack, settings

    running = settings().stack()
    if running:
        typer.echo(f"Already running: Prefect UI {running.prefect_api_url.removesuffix('/api')}   MLflow UI {running.mlflow_url}")
        return
    procs = []
    try:
        proc, prefect_url = prefect_server(settings().path("stack", "prefect"), prefect_port, ui=True)
        procs.append(proc)
        # the home's own store ($QUANTFLOW_HOME/mlflow.db, mlartifacts), the one `quantflow run` records into when no
        # server runs: a variant recorded before `server up` is on the dashboard after it, and nothing is copied
        proc, mlflow_url = mlflow_server(settings().path(), port=mlflow_port,
                                         log=settings().path("stack") / "mlflow-server.log")
        procs.append(proc)
        stack = Stack(prefect_api_url=prefect_url, mlflow_url=mlflow_url, pids=[p.pid for p in procs])
        settings().stack_file.write_text(stack.model_dump_json())
        _install_automations()
        typer.echo(f"Prefect UI: {prefect_url.removesuffix('/api')}   MLflow UI: {mlflow_url}\n"
                   "quantflow commands use them while they run; other tools (prefect, mlflow) need:\n"
                   f"  export PREFECT_API_URL={prefect_url} QUANTFLOW_MLFLOW_TRACKING_URI={mlflow_url}")
        if detach:
            typer.echo("Stop them with: quantflow server down")
            procs = []  # they live on in their own sessions
            return
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        typer.echo("a server exited; see the logs under " + str(settings().path("stack")), err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        if procs:
            _stop_stack([p.pid for p in procs])


def _stop_stack(pids: list[int]) -> None:
    """TERM each server's process group, KILL what is left after 10 s; forget the stack."""
    import signal
    import time

    from components.settings import settings

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 10
        while sig == signal.SIGTERM and time.time() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
    settings().stack_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@server.command("down")
def server_down() -> None:
    """Stop the servers `quantflow server up --detach` started."""
    from components.settings import settings

    stack = settings().stack()
    if not stack:
        settings().stack_file.unlink(missing_ok=True)
        typer.echo("No local stack is running.")
        return
    _stop_stack(stack.pids)
    typer.echo("Stopped the Prefect and MLflow servers.")


@server.command("automations")
def server_automations() -> None:
    """Install (or bring up to date) quantflow's automations on the Prefect server at PREFECT_API_URL."""
    _install_automations()


@app.command()
def schemes() -> None:
    """List the named quantization schemes."""
    from components import recipes

    for name in recipes.names():
        s = recipes.load(name)
        calibration = "yes" if s.needs_calibration else "no"
        typer.echo(f"{name:12} W:{s.weights:5} A:{s.activations or '16-bit':7} calibration:{calibration:3}  "
                   f"vLLM on: {','.join(s.vllm_platforms)}")


@app.command("suites")
def list_suites() -> None:
    """List evaluation suites and their tasks."""
    from components.evaluation import suites

    for name in suites.names():
        s = suites.load(name)
        typer.echo(f"{name}: {s.description}")
        for t in s.tasks:
            typer.echo(f"  - {t.task:40} {t.metric},{t.filter}  fewshot={t.num_fewshot}  {t.label}")


@app.command()
def spec() -> None:
    """Print the default VariantSpec as YAML (a starting point for --spec)."""
    from components.specs import VariantSpec

    typer.echo(yaml.safe_dump(json.loads(VariantSpec().model_dump_json()), sort_keys=False))


if __name__ == "__main__":
    app()
