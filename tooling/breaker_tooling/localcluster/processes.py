"""Start, find and stop the cluster's processes by the pid files they leave.

A pid file holds the pid and the process's start time (from /proc), so a stop after a
reboot or a pid reuse never signals a process this package did not start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from breaker.wait import WaitTimeout, wait_for
from breaker_tooling.localcluster.errors import ClusterError, log_tail


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, not yet reaped: gone as far as we are concerned
        _reap(pid)
        return None
    return fields[19]


@dataclass(frozen=True)
class Process:
    """One long-running component, known by name."""

    name: str
    run_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def log(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid if the process this file names is still the one running."""
        try:
            pid_text, started = self.pid_file.read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_text)
        return pid if _start_time(pid) == started else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, command: Sequence[str], env: dict[str, str] | None = None) -> int:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            log.write(f"\n$ {' '.join(command)}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    list(command),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.run_dir,
                    # Its own session: it outlives `cluster up`, and a Ctrl-C there
                    # does not reach it.
                    start_new_session=True,
                )
            except OSError as error:
                raise ClusterError(self.name, f"cannot start {command[0]}: {error}") from error
        started = _start_time(child.pid)
        self.pid_file.write_text(f"{child.pid} {started}\n")
        return child.pid

    def adopt(self, pid: int) -> None:
        """Name a process started elsewhere (the demo's operator, kept running), so that
        the cluster's stop stops it too."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{pid} {_start_time(pid)}\n")

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM, then SIGKILL after the timeout. True if something was stopped."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            _reap(pid)
            return self.pid() is None

        try:
            wait_for(gone, "the process to end", timeout, interval=0.05)
        except WaitTimeout:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            try:
                wait_for(gone, "the process to end", 10, interval=0.05)
            except WaitTimeout:
                raise ClusterError(self.name, f"pid {pid} survived SIGKILL for 10s") from None
        self.pid_file.unlink(missing_ok=True)
        return True

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        """Poll ``ready`` until it holds; fail with the log if the process dies or time runs out."""

        def alive() -> None:
            if not self.running():
                raise ClusterError(self.name, f"exited before {what}", self.log, log_tail(self.log))

        try:
            # Any failure of a readiness probe (a refused connection, an API error, a
            # command that fails) means "not yet"; the process dying does not.
            wait_for(ready, what, timeout, ignore=(Exception,), check=alive)
        except WaitTimeout:
            raise ClusterError(
                self.name, f"not {what} after {timeout:.0f}s", self.log, log_tail(self.log)
            ) from None


def _reap(pid: int) -> None:
    """Collect a child's exit status if it is ours, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
