"""Chaos scenarios: sustained payment traffic through the real stack while something breaks.

Each scenario starts its own workers and sink (subprocesses, logs under the run folder), takes
a snapshot of every topic's end offsets (the check window), drives traffic, injects its fault,
waits until every command it sent has its result (and unknown outcomes are resolved), then
runs the independent checker (``chaos.checker``) over the window.

==============  ============================================================================
scenario        what breaks
==============  ============================================================================
worker-kill     one worker, SIGKILLed at random moments (20 times in the full run), restarted
rebalance       three workers in one group, each SIGKILLed and restarted in turn under load
kafka-kill      the Kafka broker SIGKILLed mid-run and restarted
postgres-stop   Postgres stopped for 60 s mid-run (the sink must catch up)
gateway-faults  simulated gateway: 10 % 5xx, 5 % timeouts, 5 % responses lost after the
                charge, 2 % 30 s stalls; workers' gateway timeout 3 s (unknown outcomes,
                resolved by the reconciler)
webhooks        3-D Secure payments completed at the gateway; every webhook delivered three
                times, shuffled, with forged, tampered, stale and future-dated copies mixed in
poison          10,000 fuzzed messages on payment.requests amid normal traffic
==============  ============================================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos import procs
from chaos.checker import EVENTS, CheckConfig, Report, check, pg_card_lines, snapshot_offsets
from chaos.fuzz import Fuzzer
from chaos.relay import WebhookRelay
from chaos.traffic import CommandProducer, EventWatcher, Traffic, command, create_body

NO_FAULTS = {"error_5xx_rate": 0.0, "timeout_rate": 0.0, "response_lost_rate": 0.0, "stall_rate": 0.0,
             "stall_ms": 1000.0, "hang_ms": 30000.0}
GATEWAY_FAULTS = {"error_5xx_rate": 0.10, "timeout_rate": 0.05, "response_lost_rate": 0.05, "stall_rate": 0.02,
                  "stall_ms": 30000.0, "hang_ms": 30000.0}


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    full_payments: int
    short_payments: int
    rate: float  # new payments per second
    inject: Callable[[Run], None] | None = None
    workers: int = 1
    three_ds_share: float = 0.0
    fault_token_share: float = 0.0
    fuzz_full: int = 0
    fuzz_short: int = 0
    gateway_timeout_s: float | None = None
    relay_mode: str = "once"
    kills_full: int = 0
    kills_short: int = 0
    outage_full_s: float = 60.0
    outage_short_s: float = 20.0


@dataclass
class Run:
    """One scenario run: processes, traffic, injections, counters."""

    scenario: Scenario
    payments: int
    short: bool
    outdir: Path
    seed: int = 1
    env: dict[str, str] = field(default_factory=dict)
    workers: list[procs.Proc] = field(default_factory=list)
    sinks: list[procs.Proc] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    traffic_started: float = 0.0
    traffic_seconds: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    expected_down: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bump(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.extra[key] = self.extra.get(key, 0) + n

    def note(self, text: str) -> None:
        with self.lock:
            self.notes.append(text)
        log(f"[{self.scenario.name}] {text}")

    def at_fraction(self, fraction: float) -> None:
        """Sleep until ``fraction`` of the traffic period has passed."""
        target = self.traffic_started + fraction * self.traffic_seconds
        while time.monotonic() < target and not self.done.is_set():
            time.sleep(0.2)

    def live_ports(self) -> list[int]:
        return [w.web_port for w in self.workers if w.alive]  # type: ignore[attr-defined]

    def kill_worker(self, w: procs.Proc, restart_after: float) -> None:
        self.expected_down.add(w.name)
        w.kill()
        self.bump("worker_kills")
        time.sleep(restart_after)
        w.start()
        self.expected_down.discard(w.name)


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- injections


def inject_worker_kills(run: Run) -> None:
    kills = run.scenario.kills_short if run.short else run.scenario.kills_full
    rng = random.Random(run.seed + 11)
    # Random moments over the traffic period, at least a few seconds apart so a restarted
    # worker is sometimes killed again during its recovery and sometimes while processing.
    gap = min(6.0, 0.8 * run.traffic_seconds / max(kills, 1))
    times: list[float] = []
    while len(times) < kills:
        t = rng.uniform(0.05, 0.95) * run.traffic_seconds
        if all(abs(t - o) >= gap for o in times):
            times.append(t)
        elif len(times) > 0 and rng.random() < 0.01:
            gap *= 0.9
    for t in sorted(times):
        run.at_fraction(t / run.traffic_seconds)
        if run.done.is_set():
            break
        run.kill_worker(run.workers[0], restart_after=rng.uniform(0.0, 2.0))


def _ready_count(w: procs.Proc) -> int:
    """How often the worker's log says faust's worker is ready (one per successful start)."""
    try:
        return w.log.read_text(errors="replace").count("[^Worker]: Ready")
    except OSError:
        return 0


def inject_rebalance(run: Run) -> None:
    """Kill each worker in turn; the next kill only once the previous one is back (ready)."""
    for i, w in enumerate(run.workers):
        run.at_fraction(0.12 + 0.28 * i)
        if run.done.is_set():
            break
        before = _ready_count(w)
        run.note(f"killing {w.name} (pid {w.pid}) for a rebalance")
        t0 = time.monotonic()
        run.kill_worker(w, restart_after=3.0)
        while _ready_count(w) <= before and time.monotonic() - t0 < 300 and not run.done.is_set():
            time.sleep(0.5)
        run.note(f"{w.name} back (worker ready) {time.monotonic() - t0:.0f}s after the kill")


def inject_kafka_kill(run: Run) -> None:
    from paystream.stack import SERVICES

    run.at_fraction(0.35)
    kafka = SERVICES["kafka"]
    pid = kafka.pid()
    if pid is None:
        run.note("kafka has no pid: not killed")
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and kafka.pid() is not None:
        time.sleep(0.2)
    run.bump("broker_kills")
    run.note(f"kafka (pid {pid}) SIGKILLed; restarting in 5 s")
    time.sleep(5)
    t0 = time.monotonic()
    kafka.up()
    run.note(f"kafka back after {time.monotonic() - t0:.1f}s")


def inject_postgres_stop(run: Run) -> None:
    from paystream.stack import SERVICES

    outage = run.scenario.outage_short_s if run.short else run.scenario.outage_full_s
    run.at_fraction(0.3)
    pg = SERVICES["postgres"]
    pg.down()
    run.bump("postgres_outage_s", int(outage))
    run.note(f"postgres stopped for {outage:.0f}s")
    time.sleep(outage)
    pg.up()
    run.note("postgres back")


def inject_poison(run: Run, fuzzer: Fuzzer, count: int) -> None:
    if count <= 0:
        return
    per_tick = max(1, count // max(1, int(run.traffic_seconds * 5)))
    sent = 0
    for _ in fuzzer.send(count):
        sent += 1
        if sent % per_tick == 0:
            time.sleep(0.2)
    run.bump("poison_sent", sent)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("worker-kill", "one worker SIGKILLed at random moments and restarted", 2000, 150, 6.0,
             inject_worker_kills, kills_full=20, kills_short=2),
    Scenario("rebalance", "three workers, each SIGKILLed and restarted in turn under load", 2000, 150, 6.0,
             inject_rebalance, workers=3),
    Scenario("kafka-kill", "the Kafka broker SIGKILLed mid-run and restarted", 2000, 150, 6.0, inject_kafka_kill),
    Scenario("postgres-stop", "Postgres stopped for 60 s mid-run (short run: 20 s)", 2000, 150, 6.0,
             inject_postgres_stop),
    Scenario("gateway-faults", "gateway 5xx 10 %, timeouts 5 %, lost responses 5 %, 30 s stalls 2 %", 2000, 150,
             6.0, None, fault_token_share=0.03, gateway_timeout_s=3.0),
    Scenario("webhooks", "3-D Secure payments; webhooks x3 shuffled, with forged/tampered/stale copies",
             1000, 120, 5.0, None, three_ds_share=0.4, relay_mode="hostile"),
    Scenario("poison", "fuzzed messages on payment.requests amid normal traffic", 1000, 100, 6.0, None,
             fuzz_full=10_000, fuzz_short=600),
]}


# --------------------------------------------------------------------------- running


def stack_env() -> dict[str, str]:
    from paystream import stack

    bad = {k: v for k, v in stack.status().items() if v != "healthy"}
    if bad:
        log(f"bringing the stack up (not healthy: {bad})")
        stack.up()
    return {**os.environ, **stack.env_for_clients()}


def _migrate(env: dict[str, str]) -> None:
    import subprocess

    subprocess.run([sys.executable, "-m", "paystream.cli", "db", "migrate"], env=env, cwd=procs.ROOT, check=True,
                   capture_output=True, timeout=120)


def _simgw(env: dict[str, str], faults: dict[str, float]) -> None:
    httpx.post(f"{env['PAYSTREAM_SIMGW_URL']}/admin/faults", json=faults, timeout=10).raise_for_status()


def _wait_ready(run: Run, watcher: EventWatcher, producer: CommandProducer, prefix: str, timeout: float) -> float:
    """Ready means: a probe payment sent now gets its terminal event."""
    t0 = time.monotonic()
    cmd = command(f"{prefix}-probe-{uuid.uuid4().hex[:6]}", "CreatePayment",
                  create_body(1000, "USD", "tok_visa", False))
    producer.send(cmd)
    producer.flush(30)
    while time.monotonic() - t0 < timeout:
        if cmd["command_id"] in watcher.causations:
            return time.monotonic() - t0
        for w in run.workers:
            if not w.alive:
                raise RuntimeError(w.exit_summary() or f"{w.name} died")
        time.sleep(0.3)
    raise RuntimeError(f"workers not ready after {timeout:.0f}s; see {run.outdir}")


def run_scenario(name: str, *, payments: int | None = None, short: bool = False, outdir: Path | None = None,
                 seed: int = 1, env: dict[str, str] | None = None, progress: bool = True) -> Report:
    sc = SCENARIOS[name]
    n = payments if payments is not None else (sc.short_payments if short else sc.full_payments)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    if outdir is None:
        from paystream.stack import stack_dir

        outdir = stack_dir() / "chaos" / f"{stamp}-{name}"
    outdir.mkdir(parents=True, exist_ok=True)
    run = Run(sc, n, short, outdir, seed)
    run.env = dict(env) if env is not None else stack_env()
    _migrate(run.env)
    bootstrap, registry = run.env["PAYSTREAM_KAFKA_BOOTSTRAP"], run.env["PAYSTREAM_SCHEMA_REGISTRY_URL"]
    prefix = f"cx{stamp[4:8]}{stamp[9:]}-{name[:4]}"
    rng = random.Random(seed)
    log(f"[{name}] {sc.summary}: {n} payments{' (short)' if short else ''}; logs in {outdir}")

    since = snapshot_offsets(bootstrap)
    pg_baseline = pg_card_lines(run.env["PAYSTREAM_POSTGRES_DSN"])
    producer = CommandProducer(bootstrap, registry)
    traffic = Traffic(producer, prefix, rng, three_ds_share=sc.three_ds_share, fault_token_share=sc.fault_token_share)
    relay_port = int(run.env.get("PAYSTREAM_WEB_PORT", "6066"))
    from paystream.stack import simgw_webhook_secret

    relay = WebhookRelay(relay_port, run.live_ports, simgw_webhook_secret(), mode=sc.relay_mode, seed=seed)
    auth_http = httpx.Client(timeout=10)
    authenticate: list[tuple[float, str]] = []
    auth_lock = threading.Lock()

    def on_event(value: dict[str, Any], etype: str) -> None:
        if etype == "PaymentRequiresAction" and value["payment_id"].startswith(prefix):
            _, body = value["event"]
            if body.get("gateway_ref"):
                with auth_lock:
                    authenticate.append((time.monotonic() + rng.uniform(0.2, 2.0), body["gateway_ref"]))

    watcher = EventWatcher(bootstrap, registry, since.get(EVENTS, {}), prefix, on_event)
    stop_supervisor = threading.Event()
    report: Report | None = None
    try:
        if sc.gateway_timeout_s is not None:
            _simgw(run.env, GATEWAY_FAULTS)
        relay.start()
        watcher.start()
        run.sinks = [procs.sink(0, run.env, outdir)]
        run.workers = [procs.worker(i, run.env, outdir, gateway_timeout_s=sc.gateway_timeout_s)
                       for i in range(sc.workers)]
        for p in [*run.sinks, *run.workers]:
            p.start()
        ready = _wait_ready(run, watcher, producer, prefix, 240)
        log(f"[{name}] {len(run.workers)} worker(s) ready in {ready:.1f}s")

        def supervise() -> None:
            """A process that exits without our hand is a finding: note it, restart it."""
            while not stop_supervisor.wait(1.0):
                for p in [*run.workers, *run.sinks]:
                    if p.name in run.expected_down or p.alive or p.proc is None:
                        continue
                    summary = p.exit_summary() or p.name
                    run.bump("unexpected_exits")
                    run.note(f"UNEXPECTED EXIT: {summary}")
                    p.start()

        threading.Thread(target=supervise, daemon=True, name="chaos-supervisor").start()

        run.traffic_seconds = n / sc.rate
        run.traffic_started = time.monotonic()
        injectors: list[threading.Thread] = []
        if sc.inject is not None:
            injectors.append(threading.Thread(target=sc.inject, args=(run,), daemon=True, name="chaos-inject"))
        fuzz_count = sc.fuzz_short if short else sc.fuzz_full
        fuzzer = None
        if fuzz_count:
            from chaos.traffic import Registry

            # NUL characters and huge fields wedge every sink of the stack for good today
            # (findings F2, F4 in docs/reliability.md): kept out of the short run that
            # `make test` does on the shared stack; the full run sends them.
            fuzzer = Fuzzer(producer, Registry(registry), prefix, random.Random(seed + 3), wedging=not short)
            injectors.append(threading.Thread(target=inject_poison, args=(run, fuzzer, fuzz_count), daemon=True))
        for t in injectors:
            t.start()

        last_print = 0.0

        def show(phase: str) -> None:
            nonlocal last_print
            if not progress or time.monotonic() - last_print < 3.0:
                return
            last_print = time.monotonic()
            alive = sum(1 for w in run.workers if w.alive)
            log(f"[{name}] {phase} t={time.monotonic() - run.traffic_started:5.0f}s payments={traffic.payments} "
                f"commands={len(traffic.commands)} answered={watcher.answered(traffic.commands)} "
                f"events={watcher.events} workers={alive}/{len(run.workers)} "
                + " ".join(f"{k}={v}" for k, v in sorted(run.extra.items()))
                + (f" webhooks={dict(relay.counts)}" if relay.counts else ""))

        def run_auth() -> None:
            now = time.monotonic()
            with auth_lock:
                due = [a for a in authenticate if a[0] <= now]
                authenticate[:] = [a for a in authenticate if a[0] > now]
            for _, ref in due:
                ok = rng.random() < 0.8
                try:
                    auth_http.post(f"{run.env['PAYSTREAM_SIMGW_URL']}/v1/payments/{ref}/authenticate",
                                   json={"success": ok})
                    run.bump("3ds_authenticated" if ok else "3ds_failed")
                except httpx.HTTPError as exc:
                    run.note(f"authenticate {ref} failed: {exc}")

        # ---- traffic
        while traffic.payments < n:
            due = run.traffic_started + traffic.payments / sc.rate
            while time.monotonic() < due:
                traffic.sched.run_due()
                run_auth()
                show("traffic")
                time.sleep(0.01)
            traffic.new_payment()
        while len(traffic.sched) or authenticate:
            traffic.sched.run_due()
            run_auth()
            show("follow-ups")
            time.sleep(0.05)
        producer.flush(300)
        for t in injectors:
            while t.is_alive():
                run_auth()
                show("injecting")
                t.join(0.5)
        producer.flush(300)

        # ---- drain: every command answered, then webhooks delivered and unknown outcomes
        # resolved (bounded: an outcome that never resolves is left to the checker to report)
        answer_deadline = time.monotonic() + (420 if short else 1200)
        while time.monotonic() < answer_deadline and watcher.answered(traffic.commands) < len(traffic.commands):
            run_auth()
            show("draining")
            time.sleep(0.5)
        settle_deadline = time.monotonic() + (150 if short else 600)
        quiet_since, last_events = time.monotonic(), -1
        while time.monotonic() < settle_deadline:
            run_auth()
            show("settling")
            if watcher.events != last_events:
                last_events, quiet_since = watcher.events, time.monotonic()
            settled = watcher.unresolved() == 0 and relay.idle() and not authenticate
            if settled and time.monotonic() - quiet_since > (8 if fuzzer else 3):
                break
            time.sleep(0.5)
        unanswered = len(traffic.commands) - watcher.answered(traffic.commands)
        if unanswered or watcher.unresolved():
            waiting = set(watcher.open_unknown) | {
                p for p, st in watcher.last_status.items() if st in ("unknown", "processing", "requires_action")}
            run.note(f"drain ended with {unanswered} command(s) unanswered and {watcher.unresolved()} payment(s) "
                     f"still waiting (processing/unknown/requires_action or an unknown refund): "
                     f"{sorted(p for p in waiting if p.startswith(prefix))[:8]}")
        run.done.set()

        log(f"[{name}] traffic done ({traffic.payments} payments, {len(traffic.commands)} commands); checking")
        logs = [p.log for p in [*run.workers, *run.sinks]]
        report = check(CheckConfig(bootstrap, registry, run.env["PAYSTREAM_POSTGRES_DSN"],
                                   run.env["PAYSTREAM_SIMGW_URL"], since, logs=logs, pg_baseline=pg_baseline),
                       scenario=name)
        report.commands_sent = producer.raw_sent
        report.extra.update(run.extra)
        report.extra["forged_accepted"] = relay.counts.get("forged_accepted", 0) if sc.relay_mode == "hostile" else 0
        if sc.relay_mode == "hostile":
            report.extra["webhooks_received"] = relay.counts.get("received", 0)
            report.extra["forged_sent"] = relay.counts.get("forged_sent", 0)
        if relay.counts.get("undelivered"):
            report.extra["webhooks_undelivered"] = relay.counts["undelivered"]
        if producer.errors:
            report.notes.append(f"producer refused {len(producer.errors)} message(s): {producer.errors[:3]}")
        report.notes.extend(run.notes)
        if fuzzer is not None:
            report.notes.append(f"poison kinds: {dict(sorted(fuzzer.kinds.items()))}")
        report.notes.append(f"traffic kinds: {dict(sorted(traffic.kinds.items()))}")
        report.notes.append(f"webhook deliveries (kind:HTTP status): {dict(sorted(relay.statuses.items()))}")
        return report
    finally:
        run.done.set()
        stop_supervisor.set()
        for p in [*run.workers, *run.sinks]:
            run.expected_down.add(p.name)
            p.stop()
        watcher.stop()
        relay.stop()
        auth_http.close()
        if sc.gateway_timeout_s is not None:
            with contextlib.suppress(httpx.HTTPError):
                _simgw(run.env, NO_FAULTS)
        if report is not None:
            (outdir / "report.json").write_text(json.dumps(
                {**report.to_json(), "payments": n, "short": short,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


def table(reports: list[Report]) -> str:
    cols = ["commands sent", "results", "double charges", "lost commands", "dup/missing events", "sequence gaps",
            "I3 violations", "postgres mismatches", "card numbers", "ledger mismatches"]
    head = ["scenario", *cols, "ok"]
    rows = [[r.scenario, *(str(r.counts()[c]) for c in cols), "yes" if r.ok else "NO"] for r in reports]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
