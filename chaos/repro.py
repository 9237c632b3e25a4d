"""Minimal reproductions of the chaos findings (docs/reliability.md), one command each:

    python -m chaos repro nul-order-id      # F2: one NUL in an order id stops the sink for good
    python -m chaos repro huge-payment-id   # F4: a 3 KB payment id stops the sink for good
    python -m chaos repro kill-recovery     # F3: time from a worker SIGKILL to the next result

The first two leave the stack's sink group stuck on the bad record: run them on an isolated
stack (``eval "$(stack/isolated-env.sh 7)" && paystream stack up``), never the shared one.
Each prints what it observed and exits 1 while the bug is there, 0 once it is fixed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from chaos import procs
from chaos.checker import EVENTS, snapshot_offsets
from chaos.scenarios import _migrate, stack_env
from chaos.traffic import CommandProducer, EventWatcher, command, create_body


def _start(env: dict[str, str], logdir: Path) -> tuple[procs.Proc, procs.Proc]:
    w, s = procs.worker(0, env, logdir), procs.sink(0, env, logdir)
    w.start()
    s.start()
    return w, s


def _stored(dsn: str, payment_id: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM payment_events WHERE payment_id = %s", (payment_id,)).fetchone()
    return int(row[0]) if row else 0


def _sink_wedge(kind: str) -> int:
    if not os.environ.get("PAYSTREAM_STACK_DIR"):
        print("refusing: this reproduction wedges the stack's sink; run it on an isolated stack "
              "(eval \"$(stack/isolated-env.sh 7)\")", file=sys.stderr)
        return 2
    env = stack_env()
    _migrate(env)
    logdir = Path(tempfile.mkdtemp(prefix=f"chaos-repro-{kind}-"))
    since = snapshot_offsets(env["PAYSTREAM_KAFKA_BOOTSTRAP"])
    producer = CommandProducer(env["PAYSTREAM_KAFKA_BOOTSTRAP"], env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    watcher = EventWatcher(env["PAYSTREAM_KAFKA_BOOTSTRAP"], env["PAYSTREAM_SCHEMA_REGISTRY_URL"],
                           since.get(EVENTS, {}), "repro")
    watcher.start()
    w, s = _start(env, logdir)
    try:
        if kind == "nul-order-id":
            bad = f"repro-nul-{uuid.uuid4().hex[:8]}"
            cmd = command(bad, "CreatePayment", create_body(1000, "USD", "tok_visa", False, order_id="ord-\x00-1"))
        else:
            bad = "repro-huge-" + "p" * 3000
            cmd = command(bad, "CreatePayment", create_body(1000, "USD", "tok_visa", False))
        good = f"repro-after-{uuid.uuid4().hex[:8]}"
        producer.send(cmd)
        producer.send(command(good, "CreatePayment", create_body(1000, "USD", "tok_visa", False)))
        producer.flush(30)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and _stored(env["PAYSTREAM_POSTGRES_DSN"], good) == 0:
            time.sleep(2)
        stored_good = _stored(env["PAYSTREAM_POSTGRES_DSN"], good)
        print(f"events of the bad payment in Kafka: {sum(1 for c in watcher.causations if c == cmd['command_id'])}"
              f" terminal; sink alive: {s.alive}; events of the payment sent after it stored in Postgres: "
              f"{stored_good}; sink log: {s.log}")
        return 0 if stored_good > 0 else 1
    finally:
        w.stop()
        s.stop()
        watcher.stop()


def _kill_recovery() -> int:
    env = stack_env()
    logdir = Path(tempfile.mkdtemp(prefix="chaos-repro-kill-"))
    since = snapshot_offsets(env["PAYSTREAM_KAFKA_BOOTSTRAP"])
    producer = CommandProducer(env["PAYSTREAM_KAFKA_BOOTSTRAP"], env["PAYSTREAM_SCHEMA_REGISTRY_URL"])
    watcher = EventWatcher(env["PAYSTREAM_KAFKA_BOOTSTRAP"], env["PAYSTREAM_SCHEMA_REGISTRY_URL"],
                           since.get(EVENTS, {}), "repro")
    watcher.start()
    w = procs.worker(0, env, logdir)

    def probe(timeout: float) -> float | None:
        t0 = time.monotonic()
        cmd = command(f"repro-probe-{uuid.uuid4().hex[:8]}", "CreatePayment",
                      create_body(1000, "USD", "tok_visa", False))
        producer.send(cmd)
        producer.flush(30)
        while time.monotonic() - t0 < timeout:
            if cmd["command_id"] in watcher.causations:
                return time.monotonic() - t0
            time.sleep(0.2)
        return None

    try:
        w.start()
        first = probe(240)
        print(f"worker answers a probe {first:.1f}s after its start" if first else "worker never answered")
        w.kill()
        w.start()
        after = probe(300)
        print(f"after SIGKILL and an immediate restart, the next probe took {after:.1f}s" if after
              else "no answer within 300 s after the restart")
        return 0 if after is not None and after < 30 else 1
    finally:
        w.stop()
        watcher.stop()


REPROS = {"nul-order-id": lambda: _sink_wedge("nul-order-id"),
          "huge-payment-id": lambda: _sink_wedge("huge-payment-id"),
          "kill-recovery": _kill_recovery}
