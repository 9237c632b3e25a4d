"""Latency anatomy at fixed rates: one exactly_once worker (in-process gateway) and its sink,
open-loop runs at the given rates, and for each rate where an event's time went.

    python -m bench.rates --rates 10,300,600 --seconds 15 [--set producer_linger_ms=50 ...]

For each rate it prints, besides the event latency (command to terminal event seen by a
read_committed consumer), its two halves: until the worker applied the command (the event's
CreateTime, stamped by the worker's producer) and from there until it was visible (the commit
and the consumer's fetch); the worker's own batch metrics (``paystream_input_batch_seconds``:
how old the oldest input of a batch was when it started, how old an input was when the agent
sat idle waiting for it, the wait for a commit in progress, the time to apply; and the commits
with their two phases); and the CPU each process of the stack used per second of the run,
read from ``/proc`` (the worker, the sink, the broker, Postgres, this process).

It owns the stack's payment topics and sink tables while it runs, as ``python -m bench`` does:
run it on a stack of its own (``eval "$(stack/isolated-env.sh 4)"``). No figure here is a
throughput claim; it is for finding where latency goes, next to ``python -m bench``'s table.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from bench import env as benv
from bench.load import CommandFactory, CommandSender, TerminalWatcher, open_loop
from bench.stats import latencies_from, summarize
from paystream.config import get_settings

METRIC_LINE = re.compile(r"(paystream_(?:input_batch|commit|gc_pause)\S*?)(\{[^}]*\})? (\S+)")
PROCESS_NAMES = (("kafka.Kafka", "broker"), ("paystream.cli worker", "worker"), ("paystream.cli sink", "sink"),
                 ("postgres", "postgres"), ("bench.rates", "load + watcher"))


def worker_metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        m = METRIC_LINE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def process_cpu() -> dict[str, float]:
    """CPU seconds so far of the stack's processes, summed by role (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for pattern, role in PROCESS_NAMES:
            if pattern in cmdline:
                out[role] = out.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
                break
    return out


def phase_line(before: Mapping[str, float], after: Mapping[str, float]) -> str:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    parts = []
    batches = delta("paystream_input_batch_messages_count")
    parts.append(f"{batches:.0f} batches of {delta('paystream_input_batch_messages_sum') / max(batches, 1):.1f}")
    for phase in ("age", "fetch", "lock", "apply"):
        n = delta(f'paystream_input_batch_seconds_count{{phase="{phase}"}}')
        total = delta(f'paystream_input_batch_seconds_sum{{phase="{phase}"}}')
        parts.append(f"{phase} {1000 * total / max(n, 1):.1f} ms (×{n:.0f})")
    commits = delta('paystream_commit_seconds_count{phase="transactions"}')
    for phase in ("changelog", "transactions"):
        total = delta(f'paystream_commit_seconds_sum{{phase="{phase}"}}')
        parts.append(f"commit {phase} {1000 * total / max(commits, 1):.1f} ms")
    gcs = []
    for gen in ("0", "1", "2"):
        n = delta(f'paystream_gc_pause_seconds_count{{generation="{gen}"}}')
        if n:
            total = delta(f'paystream_gc_pause_seconds_sum{{generation="{gen}"}}')
            over = n - delta(f'paystream_gc_pause_seconds_bucket{{generation="{gen}",le="0.01"}}')
            gcs.append(f"gen{gen} {n:.0f}× {1000 * total / n:.1f} ms ({over:.0f} over 10 ms)")
    if gcs:
        parts.append("GC " + ", ".join(gcs))
    return f"{commits:.0f} commits; " + ", ".join(parts)


def pct(summary: Any) -> str:
    if summary is None:
        return "-"
    p = summary.percentiles_ms
    return f"{p['p50']:.0f} / {p['p99']:.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rates", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="10,300,600", help="comma-separated payments per second")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each measured run")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="unmeasured run at each rate first")
    p.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                   help="a worker setting (paystream.config name), e.g. producer_linger_ms=50")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    overrides = dict(item.split("=", 1) for item in args.set)

    s = get_settings()
    app_id = f"{benv.BENCH_TOPIC_PREFIX}-rates-{int(time.time())}"
    benv.reset_kafka(s, app_id)
    benv.truncate_sink_tables(s)
    env = benv.paystream_env(dict(os.environ), app_id=app_id, sink_group=f"{app_id}-sink",
                             datadir=f"{benv.ROOT}/results/rates/data/{app_id}", processing_guarantee="exactly_once",
                             simgw_in_process="true", **overrides)
    logs = benv.ROOT / "results" / "rates" / "logs"
    sink = benv.start_sink("rates-sink", env, logs)
    worker = benv.start_worker("rates-worker", env, logs)
    watcher = TerminalWatcher(s, from_beginning=True)
    sender, factory = CommandSender(s), CommandFactory()
    port = int(env.get("PAYSTREAM_WEB_PORT", s.web_port))
    try:
        key, value = sender.encode(factory.create("probe", 0))
        sender.send_raw(key, value)
        sender.flush()
        if not watcher.wait_for("probe", 1, 120, alive=worker.alive):
            print(f"the worker never answered its first payment; log:\n{worker.tail()}")
            return 1
        print(f"worker settings: {overrides or 'defaults'}")
        print("rate/s | event p50 / p99 ms | until applied | applied → visible | worker batches and commits")
        for i, rate in enumerate(rates):
            open_loop(sender, factory, f"warm{i}", rate, int(rate * args.warmup_seconds))
            time.sleep(1)
            m0, cpu0, t0 = worker_metrics(port), process_cpu(), time.monotonic()
            intended = open_loop(sender, factory, f"rate{i}", rate, max(1, int(rate * args.seconds)))
            cpu1, elapsed = process_cpu(), time.monotonic() - t0
            watcher.wait_for(f"rate{i}", len(intended), 60 + args.seconds, alive=worker.alive)
            m1 = worker_metrics(port)
            event_ms, missing = latencies_from(intended, watcher.terminal_at)
            applied_ms, visible_ms = watcher.halves(intended)
            print(f"{rate:g} | {pct(summarize(event_ms))} | {pct(summarize(applied_ms))} | "
                  f"{pct(summarize(visible_ms))} | {phase_line(m0, m1)}"
                  + (f" | {missing} unanswered" if missing else ""))
            cpu = ", ".join(f"{role} {100 * (cpu1[role] - cpu0.get(role, 0.0)) / elapsed:.0f} %"
                            for role in sorted(cpu1, key=lambda r: cpu0.get(r, 0.0) - cpu1[r]))
            print(f"    CPU (of one core): {cpu}", flush=True)
    finally:
        watcher.close()
        worker.stop()
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
