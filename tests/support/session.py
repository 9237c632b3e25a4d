"""The session worker (tests/conftest.py's ``worker`` fixture) paused around tests that run
workers of their own under the same app id (chaos scenarios, fraud, two-worker edge tests)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def session_worker_running() -> bool:
    """Whether this pytest process has a paystream worker child (the session fixture's)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if b"paystream.cli" in cmdline and b"worker" in cmdline:
            return True
    return False


@contextlib.contextmanager
def session_worker_paused(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stop the session worker if it runs, and start it again (ready) afterwards."""
    session_worker = request.getfixturevalue("worker") if session_worker_running() else None
    if session_worker is not None:
        session_worker.stop()
    try:
        yield
    finally:
        if session_worker is not None:
            session_worker.start()
            session_worker.wait_ready()
