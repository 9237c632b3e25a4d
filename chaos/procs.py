"""paystream processes (workers, sinks) started, killed and restarted by the chaos driver.

Every process runs in its own session and is stopped by its pid (its process group), never
by name. Logs go to one file per process under the run folder; the checker scans them (I6).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One paystream CLI process (``python -m paystream.cli ...``)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.args, self.env = name, args, env
        self.log = logdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.alive:
            return
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"\n===== chaos: start #{self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "paystream.cli", *self.args], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, start_new_session=True)
        self.starts += 1

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group: no shutdown hooks, no flush, as a crash."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)

    def stop(self, timeout: float = 45.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if not self.alive or self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def exit_summary(self) -> str | None:
        """When it died on its own: its exit code and the last lines of its log."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = self.log.read_text(errors="replace").splitlines()[-15:] if self.log.exists() else []
        return f"{self.name} exited with {self.proc.returncode}:\n    " + "\n    ".join(tail)


def worker(index: int, env: dict[str, str], logdir: Path, *, gateway_timeout_s: float | None = None,
           loglevel: str = "info") -> Proc:
    port = free_port()
    wenv = {**env, "PAYSTREAM_DATADIR": str(logdir / f"worker-{index}-data"), "PAYSTREAM_WEB_PORT": str(port),
            "PYTHONUNBUFFERED": "1"}
    if gateway_timeout_s is not None:
        wenv["PAYSTREAM_GATEWAY_TIMEOUT_S"] = str(gateway_timeout_s)
    p = Proc(f"worker-{index}", ["worker", "--loglevel", loglevel], wenv, logdir)
    p.web_port = port  # type: ignore[attr-defined]
    return p


def sink(index: int, env: dict[str, str], logdir: Path) -> Proc:
    senv = {**env, "PAYSTREAM_SINK_METRICS_PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    return Proc(f"sink-{index}", ["sink"], senv, logdir)
