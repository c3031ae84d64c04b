"""components/orphans.py: a command's ledger is taken as abandoned only once its process is gone (no server needed)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from components.orphans import Ledger, abandoned

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from components.orphans import Ledger

    ledger = Ledger(Path(sys.argv[1]), "api-a")
    ledger.add("11111111-1111-1111-1111-111111111111")
    print("ready", flush=True)
    time.sleep(600)
''')


def test_a_ledger_is_abandoned_only_when_its_process_is_gone(tmp_path):
    folder = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert abandoned(folder, "api-a") == [], "a live command's runs are not touched (concurrent runs)"
        mine = Ledger(folder, "api-a")  # this process's own: alive
        os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the kernel drops the lock
        proc.wait(30)
        assert abandoned(folder, "api-b") == [], "another API's ledgers are left for a command that reports there"
        [(path, data, fd)] = abandoned(folder, "api-a")
        os.close(fd)
        assert data["pid"] == proc.pid and data["flow_runs"] == ["11111111-1111-1111-1111-111111111111"]
        assert path != mine.path
        mine.close()
        mine.close()  # twice is once
        assert not mine.path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
