"""Polling helper shared by the integration tests."""

from __future__ import annotations

import time
from typing import Any


def wait_for(check: Any, timeout: float, what: str) -> Any:
    """``check()``'s first truthy value, polled every 0.3 s; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
