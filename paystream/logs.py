"""Logging: JSON lines, with the card-data guard as the last line of defence (I6)."""

from __future__ import annotations

import json
import logging
import time

from paystream.core.sensitive import redact


class GuardedJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(message),
        }
        for key in ("payment_id", "command_id", "correlation_id"):
            if hasattr(record, key):
                entry[key] = redact(str(getattr(record, key)))
        return json.dumps(entry)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(GuardedJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
