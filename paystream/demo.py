"""`make demo`: the main job end to end on the local stack, shown to a person.

Starts a worker and the sink, sends a mix of payments through Kafka as the Order Service
would (approvals, declines, 3-D Secure, manual captures, partial refunds, a duplicate, an
invalid command), follows payment.events live, then prints what happened, read back from
payment.events and from Postgres, and writes a chart.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.live import Live
from rich.table import Table

from paystream.client import CommandProducer, EventReader, command, create_payment, event_type
from paystream.config import Settings
from paystream.core.events import TERMINAL_EVENTS
from paystream.core.money import Money, format_money
from paystream.stack import stack_dir

console = Console()
TOKENS = [
    ("tok_visa", 10), ("tok_mastercard", 4), ("tok_decline_insufficient_funds", 2), ("tok_decline_card_declined", 1),
    ("tok_decline_expired_card", 1), ("tok_decline_fraud", 1), ("tok_3ds", 1),
]
CURRENCIES = [("USD", (500, 25_000)), ("EUR", (500, 20_000)), ("JPY", (300, 30_000)), ("KWD", (1_000, 90_000))]
TERMINAL = set().union(*TERMINAL_EVENTS.values())


def _spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    logs = stack_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"demo-{name}.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "paystream.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def _wait_ready(settings: Settings, worker: subprocess.Popen[bytes], timeout: float = 180) -> None:
    """Until the worker's /ready says its partitions are assigned and its tables recovered."""
    import httpx

    t0 = time.monotonic()
    with console.status("waiting for the worker to be ready (partitions assigned, tables recovered) …"):
        while time.monotonic() - t0 < timeout:
            if worker.poll() is not None:
                raise SystemExit("the worker exited; see .stack/logs/demo-worker.log")
            try:
                if httpx.get(f"http://127.0.0.1:{settings.web_port}/ready", timeout=2).status_code == 200:
                    console.print(f"worker ready in {time.monotonic() - t0:.1f}s")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    raise SystemExit("the worker did not become ready; see .stack/logs/demo-worker.log")


def _complete_3ds(settings: Settings, payment_id: str) -> None:
    """Play the customer: pass the 3-D Secure challenge at the simulated gateway, which then
    sends paystream a signed webhook (verified by the HTTP edge, applied by the agent)."""
    import httpx

    ledger = httpx.get(f"{settings.simgw_url}/v1/ledger", timeout=5).json()["data"]
    for charge in ledger:
        if charge.get("payment_id") == payment_id:
            httpx.post(f"{settings.simgw_url}/v1/payments/{charge['id']}/authenticate", json={"success": True},
                       timeout=5)


def _plan(count: int, rng: random.Random) -> list[dict[str, Any]]:
    weights = [w for _, w in TOKENS]
    plan = []
    for i in range(count):
        token = rng.choices([t for t, _ in TOKENS], weights)[0]
        currency, (lo, hi) = CURRENCIES[i % len(CURRENCIES)]
        manual = token in ("tok_visa", "tok_mastercard") and rng.random() < 0.3
        plan.append({"payment_id": f"demo_{uuid.uuid4().hex[:12]}", "token": token, "currency": currency,
                     "amount": rng.randint(lo, hi), "manual": manual})
    return plan


def run_demo(settings: Settings, count: int = 40) -> int:
    rng = random.Random(7)
    env = {**os.environ, "PAYSTREAM_DATADIR": str(stack_dir() / "demo-worker"), "PYTHONUNBUFFERED": "1"}
    console.rule("[bold]paystream demo")
    console.print("starting a worker and the Postgres sink …")
    worker = _spawn("worker", ["worker", "--loglevel", "warn"], env)
    sink = _spawn("sink", ["sink"], env)
    try:
        _wait_ready(settings, worker)
        return _run(settings, count, rng, worker)
    finally:
        for proc in (worker, sink):
            proc.terminate()
        for proc in (worker, sink):
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        console.print(f"worker and sink stopped; logs in {stack_dir() / 'logs'}; "
                      "`make stack-down` stops the stack")


def _run(settings: Settings, count: int, rng: random.Random, worker: subprocess.Popen[bytes]) -> int:
    producer = CommandProducer(settings)
    reader = EventReader(settings, from_end=True)
    plan = _plan(count, rng)
    by_id = {p["payment_id"]: p for p in plan}
    sent_at: dict[str, float] = {}
    expected: set[str] = set()
    t0 = time.monotonic()

    def send(cmd: dict[str, Any]) -> None:
        producer.send(cmd)
        sent_at[cmd["command_id"]] = time.monotonic()
        expected.add(cmd["command_id"])

    for p in plan:
        send(create_payment(p["payment_id"], amount=p["amount"], currency=p["currency"], token=p["token"],
                            capture_method="manual" if p["manual"] else "automatic", origin="demo"))
    # A sender retrying a command (same command_id): acknowledged, no new events.
    dup = create_payment(plan[0]["payment_id"], amount=plan[0]["amount"], currency=plan[0]["currency"],
                         token=plan[0]["token"], capture_method="manual" if plan[0]["manual"] else "automatic")
    # An invalid command: a negative amount is rejected with a reason, not lost.
    bad = create_payment(f"demo_bad_{uuid.uuid4().hex[:6]}", amount=-100, currency="USD", origin="demo")
    send(bad)
    producer.flush()

    events: list[dict[str, Any]] = []
    terminal_at: dict[str, float] = {}
    followups_sent: set[str] = set()
    status: dict[str, str] = {}
    deadline = time.monotonic() + 120
    table = Table.grid()
    with Live(table, console=console, refresh_per_second=8) as live:
        while time.monotonic() < deadline and (len(terminal_at) < len(expected) or _awaiting_3ds(status)):
            for ev in reader.poll(0.3):
                pid = ev["payment_id"]
                if pid not in by_id and pid != bad["payment_id"]:
                    continue
                events.append(ev)
                status[pid] = ev.get("status") or status.get(pid, "")
                etype = event_type(ev)
                cause = ev.get("causation_command_id")
                if etype in TERMINAL and cause in expected and cause not in terminal_at:
                    terminal_at[cause] = time.monotonic()
                if etype == "PaymentRequiresAction":
                    _complete_3ds(settings, pid)
                planned = by_id.get(pid)
                if planned is None or pid in followups_sent:
                    continue
                # Follow-ups once a payment is settled: capture manual ones (some partially), refund some.
                if etype == "PaymentAuthorized" and planned["manual"]:
                    amount = planned["amount"] if rng.random() < 0.5 else planned["amount"] // 2
                    send(command(pid, "CapturePayment", {"amount": amount, "currency": None}, origin="demo"))
                    followups_sent.add(pid)
                elif etype == "PaymentSucceeded" and not planned["manual"] and rng.random() < 0.4:
                    send(command(pid, "RefundPayment", {"refund_id": f"re_{uuid.uuid4().hex[:8]}",
                                                        "amount": planned["amount"] // 3, "currency": None,
                                                        "reason": None},
                                 origin="demo"))
                    followups_sent.add(pid)
                if pid == plan[0]["payment_id"] and dup["command_id"] not in sent_at:
                    producer.send(dup)
                    sent_at[dup["command_id"]] = time.monotonic()
            producer.flush()
            counts = Counter(s or "rejected" for s in status.values())  # a rejected command has no status
            grid = Table(title=f"live: {len(terminal_at)}/{len(expected)} commands answered, "
                               f"{len(events)} events", show_header=True)
            for k in sorted(counts):
                grid.add_column(k)
            grid.add_row(*[str(counts[k]) for k in sorted(counts)])
            live.update(grid)
            if worker.poll() is not None:
                console.print("[red]the worker exited; see .stack/logs/demo-worker.log")
                return 1
    if not console.is_terminal:
        console.print()  # Live's last frame ends without a newline when the output is a file or a pipe
    elapsed = time.monotonic() - t0
    missing = expected - set(terminal_at)
    latencies = sorted((terminal_at[c] - sent_at[c]) * 1000 for c in terminal_at)
    _summary(settings, plan, bad["payment_id"], events, latencies, elapsed, missing)
    _chart(plan, status, latencies)
    return 1 if missing else 0


def _awaiting_3ds(status: dict[str, str]) -> bool:
    return any(s == "requires_action" for s in status.values())


def _summary(settings: Settings, plan: list[dict[str, Any]], bad_pid: str, events: list[dict[str, Any]],
             latencies: list[float], elapsed: float, missing: set[str]) -> None:
    final: dict[str, dict[str, Any]] = {}
    for ev in events:
        final[ev["payment_id"]] = ev
    table = Table(title="payments by final status (from payment.events)")
    for col in ("status", "payments", "amounts (per currency)", "example decline / reason"):
        table.add_column(col)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in plan:
        last = final.get(p["payment_id"])
        groups[last.get("status", "?") if last else "no result"].append(p)
    for st, ps in sorted(groups.items()):
        sums: Counter[str] = Counter()
        for p in ps:
            sums[p["currency"]] += p["amount"]
        reasons = {final[p["payment_id"]]["event"][1].get("decline_code") for p in ps if p["payment_id"] in final}
        table.add_row(st, str(len(ps)), ", ".join(format_money(Money(a, c)) for c, a in sorted(sums.items())),
                      ", ".join(sorted(r for r in reasons if r)))
    bad = [ev for ev in events if ev["payment_id"] == bad_pid]
    if bad:
        table.add_row("rejected command", "1", "-100 USD", bad[0]["event"][1]["reason"])
    console.print(table)

    ids = [p["payment_id"] for p in plan]
    time.sleep(1.5)  # let the sink catch up with the last batch
    with psycopg.connect(settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM payments WHERE payment_id = ANY(%s)", (ids,)).fetchone()
        stored = conn.execute("SELECT count(*) FROM payment_events WHERE payment_id = ANY(%s)", (ids,)).fetchone()
        mism = conn.execute(
            "SELECT count(*) FROM payments p JOIN (SELECT payment_id, max(sequence) s FROM payment_events "
            "GROUP BY payment_id) e USING (payment_id) WHERE p.payment_id = ANY(%s) AND p.last_sequence <> e.s",
            (ids,)).fetchone()
    n_events = sum(1 for ev in events if ev["payment_id"] in set(ids))
    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    t2 = Table(title="what was checked")
    t2.add_column("check")
    t2.add_column("result")
    t2.add_row("commands answered (terminal event or rejection)",
               f"{len(latencies)} of {len(latencies) + len(missing)}")
    t2.add_row("events on payment.events (read_committed)", str(n_events))
    t2.add_row("events stored in Postgres (exactly once)", f"{stored[0] if stored else 0}")
    t2.add_row("payments rows in Postgres", f"{rows[0] if rows else 0} of {len(ids)}")
    t2.add_row("rows behind their last event", f"{mism[0] if mism else '?'}")
    t2.add_row("command → result latency p50 / p95 / max",
               f"{pct(0.5):.0f} / {pct(0.95):.0f} / {max(latencies, default=0):.0f} ms")
    t2.add_row("wall time", f"{elapsed:.1f} s")
    console.print(t2)
    console.print("look closer: `paystream status <payment_id>`, `paystream tail --from-beginning`, "
                  f"`psql {_without_password(settings.postgres_dsn)}`")


def _without_password(dsn: str) -> str:
    """The DSN to show a person: any password replaced (the demo's stack has none)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:****@", dsn)


def _chart(plan: list[dict[str, Any]], status: dict[str, str], latencies: list[float],
           out: Path = Path("results") / "demo.png") -> Path | None:
    """A PNG: payments by final status, and the command → result latency histogram."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("no chart: matplotlib is not installed (`pip install -e '.[bench]'`; `make demo` does)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = Counter(status.get(p["payment_id"], "no result") for p in plan)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(list(counts), list(counts.values()), color="#4c72b0")
    a.set_title("payments by final status")
    a.set_ylabel("payments")
    a.tick_params(axis="x", rotation=30)
    b.hist(latencies, bins=20, color="#55a868")
    b.set_title("command → result latency (ms)")
    b.set_xlabel("ms")
    b.set_ylabel("commands")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    console.print(f"chart: {out}")
    return out
