"""The worker's logs: every line one JSON object (faust's, mode's and aiokafka's included, no
banner), and no card number in any of them (I6)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from paystream.logs import dict_config

ROOT = Path(__file__).resolve().parents[3]
PANS = ("4242 4242 4242 4242", "4111111111111111", "5555555555554444")

# A real worker run through faust's command line, as `paystream worker` does after prepare():
# Kafka is a closed port, so faust starts, logs the connection error and stops at once. The
# hook prints to stdout and stderr (mode redirects both into logging) and logs through a faust
# logger, each with a card number.
WORKER_SCRIPT = textwrap.dedent("""
    import logging, sys
    import faust
    from paystream.config import Settings
    from paystream.logs import configure
    from paystream.worker import use_json_logging
    from streams.app import create_app

    configure()
    app = create_app(Settings(kafka_bootstrap="127.0.0.1:9", web_port=int(sys.argv[1]), datadir=sys.argv[2]))
    original = faust.Worker.on_execute

    async def on_execute(self):
        print("stray print 4111111111111111")
        print("stray stderr 5555555555554444", file=sys.stderr)
        logging.getLogger("faust.test").warning("card 4242 4242 4242 4242 in a faust log")
        return await original(self)

    faust.Worker.on_execute = on_execute
    sys.argv = use_json_logging(app, "info")
    app.main()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"a worker log line is not JSON: {line!r}")
        assert isinstance(entry, dict) and {"ts", "level", "logger", "msg"} <= entry.keys(), line
        out.append(entry)
    return out


def test_a_real_worker_run_logs_json_lines_only_and_redacts_card_numbers(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("PAYSTREAM_")}
    proc = subprocess.run([sys.executable, str(script), str(_free_port()), str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=90, env=env, cwd=tmp_path)
    entries = _json_lines(proc.stdout) + _json_lines(proc.stderr)
    everything = proc.stdout + proc.stderr
    for pan in PANS:
        assert pan not in everything and pan.replace(" ", "") not in everything
    loggers = {str(e["logger"]) for e in entries}
    assert {"faust.worker", "aiokafka", "mode.redirect", "faust.test"} <= loggers, loggers
    messages = [str(e["msg"]) for e in entries]
    assert any("[^Worker]: Starting..." in m for m in messages)  # chaos/scenarios.py counts "[^Worker]: Ready" too
    assert sum("[REDACTED-PAN]" in m for m in messages) == 3
    assert any(e["level"] == "ERROR" and "127.0.0.1" in str(e["msg"]) for e in entries)  # the Kafka error
    assert "ƒaµS†" not in everything  # faust's banner is off


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.setLogRecordFactory(factory)


def test_faust_worker_logging_setup_uses_the_json_formatter(restore_logging: None, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    import faust

    from paystream.config import Settings
    from paystream.worker import use_json_logging
    from streams.app import create_app

    app = create_app(Settings(kafka_bootstrap="127.0.0.1:9"))
    argv = use_json_logging(app, "warning")
    assert argv[argv.index("worker") - 1] == "--quiet" and argv[-2:] == ["--loglevel", "warning"]
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)  # the handler's stream is resolved when mode configures it
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False, stdout=io.StringIO())
    worker._setup_logging()  # what mode does when the worker starts
    logging.getLogger("faust.transport").warning("key %s", "4242424242424242")
    logging.getLogger("faust.transport").info("below the level")
    worker.log.error("crashed")
    (first, second) = _json_lines(out.getvalue())
    assert first["msg"] == "key [REDACTED-PAN]" and first["level"] == "WARNING"
    assert second["msg"] == "[^Worker]: crashed" and second["logger"] == "faust.worker"


def test_dict_config_levels() -> None:
    assert dict_config("info")["root"]["level"] == logging.INFO
    assert dict_config("CRIT")["root"]["level"] == logging.CRITICAL
    assert dict_config(logging.DEBUG)["root"]["level"] == logging.DEBUG
    with pytest.raises(ValueError):
        dict_config("loud")
