"""Logging: JSON lines, with the card-data guard as the last line of defence (I6)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

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


def _redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string (seen in mode): keep its parts, redacted
            message = f"{record.msg} {record.args!r}"
        # An empty tuple, not None: mode's formatter turns None into (None,) and formats again.
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    factory._paystream_redacting = True  # type: ignore[attr-defined]
    return factory


def install_redaction() -> None:
    """Redact card numbers in every log record when it is created, whatever handler or
    formatter prints it later: faust (mode) replaces the root handlers with its own when the
    worker starts, so a formatter alone would not cover its log lines (I6). Idempotent."""
    current = logging.getLogRecordFactory()
    if not getattr(current, "_paystream_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(current))


def configure(level: int = logging.INFO) -> None:
    install_redaction()
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log record, a JSON line like any other
    handler = logging.StreamHandler()
    handler.setFormatter(GuardedJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def dict_config(level: str | int = "info") -> dict[str, Any]:
    """The worker's logging as a :func:`logging.config.dictConfig` dictionary, for faust's
    ``logging_config`` setting: when the worker starts, mode replaces the root logger's handlers
    with the ones this names, so faust's, mode's and aiokafka's records come out as the same
    JSON lines as ours (stderr, like ``configure``) instead of mode's coloured text format."""
    name = {"CRIT": "CRITICAL"}.get(level.upper(), level.upper()) if isinstance(level, str) else None
    level_name = logging.getLevelName(name) if name is not None else level
    if not isinstance(level_name, int):
        raise ValueError(f"unknown log level {level!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.GuardedJsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level_name, "handlers": ["json"]},
    }
