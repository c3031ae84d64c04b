"""Run a command that must not outlive the process that asked for it (`python tether.py PARENT_PID GRACE -- argv...`).

The temporary Prefect server a `quantflow run` starts lives in its own session (a terminal's Ctrl-C must reach the run,
not the server), so nothing stops it when the run is killed (SIGKILL of the run's process group, or of the run alone,
or the OOM killer): it would live on with PPID 1. This small parent leads the server's session, starts the server in
it and polls its own parent: once that is gone (reparented), it sends SIGTERM to the whole session's group (the server
and anything it spawned), then SIGKILL after GRACE seconds. A poll, not PR_SET_PDEATHSIG: that fires when the *thread*
that forked exits and only reaches one process; not a pipe: a forked worker of the run would keep it open.
It exits with the server's return code when the server ends on its own; SIGTERM and SIGINT sent to the group (by
`processes.stop`) reach the server, and this process waits for it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.2


def main(argv: list[str]) -> int:
    parent, grace, sep, *command = argv
    assert sep == "--" and command, "usage: tether.py PARENT_PID GRACE -- argv..."
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: None)  # a handler, not SIG_IGN: the server (a child) must not inherit ignoring them
    server = subprocess.Popen(command)
    while server.poll() is None:
        if os.getppid() != int(parent):  # the run is gone, however it died
            os.killpg(os.getpgrp(), signal.SIGTERM)
            try:
                server.wait(float(grace))
            except subprocess.TimeoutExpired:
                pass
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the server's own children too, and this process last
        time.sleep(POLL_S)
    return server.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
