"""The benchmark run: sessions of worker + sink on clean topics, each measuring one thing.

Order of a run (every figure comes from the same run, on the same broker):

1. ``baseline``  — raw confluent-kafka consume → decode → encode → produce over the same
   commands, at_least_once and exactly_once.
2. ``eos``       — one worker, in-process simulated gateway (zero gateway latency: our own
   overhead), exactly_once: burst throughput, open-loop latency at 25/50/75 % of that
   maximum, then the sink alone, then recovery of a worker with K payments in its table.
3. ``alo``       — the same worker with at_least_once: burst throughput and latency at the
   eos session's 50 % rate (same load).
4. ``textbook``  — the same payment pipeline as a textbook faust agent (bench/textbook.py: one
   message at a time, an awaited gateway call and an awaited send per event, at_least_once),
   over the same burst as eos: the second baseline, paystream ÷ textbook.
5. ``http``      — the worker against a simulated gateway over HTTP at 50 ms then 200 ms mean
   latency: burst throughput against the serialised bound ``partitions × 1000 / latency``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bench import env as benv
from bench.baseline import BASELINE_IN, BASELINE_OUT, run_baseline
from bench.load import (
    CommandFactory,
    CommandSender,
    TerminalWatcher,
    open_loop,
    pg_connect,
    pg_event_count,
    pg_terminal_count,
    pg_terminal_stored_at,
    wait_pg,
)
from bench.stats import (
    answered_at,
    latencies_from,
    open_loop_rates,
    rate,
    ratio,
    serialised_bound,
    steady_rate,
    summarize,
)
from paystream.config import Settings


@dataclass(frozen=True)
class Profile:
    name: str
    payments: int  # burst size of the in-process throughput runs (and the baseline)
    http_payments: int  # burst size of each HTTP-gateway run
    latency_seconds: float  # length of each open-loop run
    latency_fractions: tuple[float, ...]
    recovery_k: int  # payments in the table when the worker restarts with empty local state
    gateway_latencies_ms: tuple[float, ...] = (50.0, 200.0)
    scenarios: tuple[str, ...] = ("baseline", "eos", "scale", "alo", "textbook", "http")
    workers: int = 2  # exactly_once workers sharing the partitions in the scale scenario
    executors: int = 0  # gateway executors of the HTTP runs in processes of their own (0: inside the worker)
    persistent_recovery: bool = True  # also restart with faust's rocksdb store (when rocksdict is installed)
    # An unmeasured exactly_once burst before everything else: the first session after a broker
    # start ran ~20 % slower (the broker's JIT), which penalised whichever scenario came first.
    warmup_payments: int = 0


QUICK = Profile("quick", payments=1_000, http_payments=500, latency_seconds=3, latency_fractions=(0.25, 0.5, 0.75),
                recovery_k=5_000, persistent_recovery=False)
DEFAULT = Profile("default", payments=20_000, http_payments=5_000, latency_seconds=20,
                  latency_fractions=(0.25, 0.5, 0.75), recovery_k=100_000, warmup_payments=10_000)


@dataclass
class Results:
    meta: dict[str, Any]
    throughput: list[dict[str, Any]] = field(default_factory=list)
    baseline: list[dict[str, Any]] = field(default_factory=list)
    textbook: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    recovery: list[dict[str, Any]] = field(default_factory=list)
    sink: list[dict[str, Any]] = field(default_factory=list)
    startup: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("meta", "throughput", "baseline", "textbook", "latency", "recovery",
                                              "sink", "startup", "errors", "notes")}


class Bench:
    def __init__(self, settings: Settings, profile: Profile, out_dir: Path, console: Console,
                 rocksdb: bool) -> None:
        self.s = settings
        self.p = profile
        self.console = console
        self.stamp = time.strftime("%Y%m%dT%H%M%S")
        self.out_dir = out_dir
        self.log_dir = out_dir / f"{self.stamp}-logs"
        self.data_dir = benv.stack_data_dir() / "bench" / self.stamp
        self.rocksdb = rocksdb
        self.factory = CommandFactory()
        self.sender = CommandSender(settings)
        self.results = Results(meta={})
        self.burst_messages: list[tuple[bytes, bytes]] = []
        self.progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]:>9}"), TimeElapsedColumn(), console=console)
        self.base_env = dict(os.environ)
        self._session = 0

    # -------------------------------------------------------------- helpers

    def say(self, msg: str) -> None:
        self.console.log(msg)

    def _task(self, description: str, total: int) -> tuple[TaskID, Callable[[int], None]]:
        task = self.progress.add_task(description, total=total, rate="")
        started = time.monotonic()

        def tick(done: int) -> None:
            elapsed = time.monotonic() - started
            self.progress.update(task, completed=min(done, total),
                                 rate=f"{done / elapsed:,.0f}/s" if elapsed > 0.5 else "")
        return task, tick

    def _app_id(self, name: str) -> str:
        self._session += 1
        return f"{benv.BENCH_TOPIC_PREFIX}-{self.stamp.lower()}-{self._session}-{name}"

    @contextmanager
    def scenario(self, name: str) -> Iterator[None]:
        load0 = benv.loadavg()
        t0 = time.monotonic()
        self.console.rule(f"[bold]{name}")
        try:
            yield
        except Exception as exc:
            self.results.errors.append({"scenario": name, "error": f"{type(exc).__name__}: {exc}",
                                        "trace": traceback.format_exc(limit=6)})
            self.console.print(f"[red]{name} failed: {type(exc).__name__}: {exc}")
        finally:
            self.say(f"{name}: {time.monotonic() - t0:.1f}s, load average {load0} → {benv.loadavg()}")

    def _start_session(self, name: str, **overrides: str) -> tuple[str, dict[str, str]]:
        """Clean topics and tables; the environment for this session's worker and sink."""
        app_id = self._app_id(name)
        benv.reset_kafka(self.s, app_id)
        benv.truncate_sink_tables(self.s)
        env = benv.paystream_env(
            self.base_env, app_id=app_id, sink_group=f"{app_id}-sink",
            datadir=str(self.data_dir / app_id), **overrides,
        )
        return app_id, env

    def _probe(self, watcher: TerminalWatcher, phase: str, worker: benv.Proc, timeout: float) -> float | None:
        """Send one payment and wait for its terminal event; seconds from the worker's start."""
        key, value = self.sender.encode(self.factory.create(phase, 0))
        self.sender.send_raw(key, value)
        self.sender.flush()
        if not watcher.wait_for(phase, 1, timeout, alive=worker.alive):
            why = "the worker exited" if not worker.alive() else f"no answer in {timeout:.0f}s"
            self.say(f"[red]{phase}: {why}; worker log:\n{worker.tail()}")
            return None
        return watcher.terminal_at[key.decode()] - worker.started

    def _ready_worker(self, name: str, env: dict[str, str], watcher: TerminalWatcher, phase: str,
                      start: Callable[[str, dict[str, str], Path], benv.Proc] = benv.start_worker,
                      measured: bool = True) -> tuple[benv.Proc, float]:
        """Start a worker and wait for its first payment; a worker that stays silent is
        restarted once (a first start right after the broker came up was seen to hang)."""
        for attempt in (1, 2):
            worker = start(name if attempt == 1 else f"{name}-retry", env, self.log_dir)
            startup = self._probe(watcher, phase, worker, timeout=90 if attempt == 1 else 180)
            if startup is not None:
                if measured:
                    self.results.startup.append({"name": f"worker start, empty state ({name})",
                                                 "seconds": round(startup, 2), "attempt": attempt})
                self.say(f"{name} ready: first payment answered {startup:.1f}s after start")
                return worker, startup
            worker.stop()
            self.results.notes.append(f"{name}: no answer to its first payment (attempt {attempt}); "
                                      f"log {worker.log}")
        raise benv.BenchError(f"{name} never answered its first payment")

    def _burst_messages(self, phase: str, n: int) -> list[tuple[bytes, bytes]]:
        return [self.sender.encode(self.factory.create(phase, i)) for i in range(n)]

    def _shared_burst(self) -> list[tuple[bytes, bytes]]:
        """The one burst the raw loop, the exactly_once session and the textbook agent all get
        (same payments, same bytes), made by whichever of them runs first."""
        if not self.burst_messages:
            self.burst_messages = self._burst_messages("tpeos", self.p.payments)
        return self.burst_messages

    def _throughput(self, label: str, phase: str, n: int, watcher: TerminalWatcher, worker: benv.Proc | benv.ProcGroup,
                    pg_before: int, extra: dict[str, Any], messages: list[tuple[bytes, bytes]] | None = None,
                    postgres: bool = True) -> dict[str, Any]:
        """A burst of ``n`` encoded commands into a ready worker; payments/s to terminal events
        and (``postgres``: a sink runs beside the worker) to Postgres rows."""
        msgs = messages or self._burst_messages(phase, n)
        task, tick = self._task(f"{label}: terminal events", n)
        cpu0 = worker.cpu_seconds()
        t0 = time.time()
        produce_s = self.sender.burst(msgs)
        ok = watcher.wait_for(phase, n, timeout=max(180.0, n / 20), tick=tick, alive=worker.alive)
        cpu1 = worker.cpu_seconds()
        self.progress.remove_task(task)
        pids = [k.decode() for k, _ in msgs]
        seen = sorted(watcher.terminal_at[p] for p in pids if p in watcher.terminal_at)
        t_last = seen[-1] if seen else time.time()
        row: dict[str, Any] = {
            "name": label, "payments": n, "answered": len(seen), "produce_s": round(produce_s, 3),
            "seconds": round(t_last - t0, 3), "per_s": round(rate(len(seen), t_last - t0), 1),
            "answered_at_s": answered_at(seen, t0), "steady_per_s": steady_rate(seen),
            "outcomes": dict(sorted(Counter(watcher.terminal_type[p] for p in pids
                                            if p in watcher.terminal_type).items())), **extra,
        }
        if cpu0 is not None and cpu1 is not None and seen:
            # The worker's CPU per answered payment over the burst (a robust figure on a shared machine).
            row["worker_cpu_ms"] = round(1000 * (cpu1 - cpu0) / len(seen), 3)
        if not ok:
            row["error"] = f"only {len(seen)} of {n} answered"
            if not worker.alive():
                row["error"] += f"; worker exited:\n{worker.tail()}"
        if not postgres:
            self.say(f"{label}: {row['answered']}/{n} payments in {row['seconds']}s = {row['per_s']}/s "
                     f"(steady {row['steady_per_s']}/s; worker CPU {row.get('worker_cpu_ms', '-')} ms/payment; "
                     f"burst produced in {produce_s:.2f}s; "
                     f"answered by: {row['answered_at_s']})")
            return row
        with pg_connect(self.s) as conn:
            task, tick = self._task(f"{label}: Postgres rows", n)
            reached, _ = wait_pg(conn, pg_terminal_count, pg_before + len(seen), timeout=max(120.0, n / 20),
                                 tick=lambda c: tick(c - pg_before))
            self.progress.remove_task(task)
            stored = pg_terminal_stored_at(conn, pids)
        if stored:
            t_pg = max(stored.values())
            row["pg_seconds"] = round(t_pg - t0, 3)
            row["pg_per_s"] = round(rate(len(stored), t_pg - t0), 1)
        if not reached:
            row.setdefault("error", f"only {len(stored)} rows reached Postgres")
        self.say(f"{label}: {row['answered']}/{n} payments in {row['seconds']}s = {row['per_s']}/s "
                 f"(steady {row['steady_per_s']}/s; Postgres {row.get('pg_per_s', '-')}/s; "
                 f"worker CPU {row.get('worker_cpu_ms', '-')} ms/payment; "
                 f"burst produced in {produce_s:.2f}s; answered by: {row['answered_at_s']})")
        return row

    def _latency(self, label: str, phase: str, rate_per_s: float, fraction: float | None, watcher: TerminalWatcher,
                 worker: benv.Proc, pg_before: int, extra: dict[str, Any]) -> dict[str, Any]:
        count = max(10, int(rate_per_s * self.p.latency_seconds))
        task, tick = self._task(f"{label}: sending at {rate_per_s:g}/s", count)
        intended = open_loop(self.sender, self.factory, phase, rate_per_s, count, on_tick=tick)
        self.progress.remove_task(task)
        task, tick = self._task(f"{label}: answers", count)
        watcher.wait_for(phase, count, timeout=60 + count / max(rate_per_s, 1), tick=tick, alive=worker.alive)
        self.progress.remove_task(task)
        terminal_ms, missing = latencies_from(intended, watcher.terminal_at)
        with pg_connect(self.s) as conn:
            wait_pg(conn, pg_terminal_count, pg_before + count - missing, timeout=60)
            stored = pg_terminal_stored_at(conn, list(intended))
        pg_ms, pg_missing = latencies_from(intended, stored)
        t_sum, p_sum = summarize(terminal_ms), summarize(pg_ms)
        # where a terminal event's time went: until the worker applied the command (fetch, queue,
        # batch) and from then until a read_committed consumer saw it (commit wait, commit, fetch)
        applied_ms, visible_ms = watcher.halves(intended)
        a_sum, v_sum = summarize(applied_ms), summarize(visible_ms)
        row = {
            "name": label, "rate_per_s": rate_per_s, "fraction_of_max": fraction, "sent": count,
            "unanswered": missing, "missing_rows": pg_missing,
            "terminal": t_sum.to_json() if t_sum else None, "postgres": p_sum.to_json() if p_sum else None,
            "to_applied": a_sum.to_json() if a_sum else None, "applied_to_visible": v_sum.to_json() if v_sum else None,
            **extra,
        }
        if t_sum:
            pct = t_sum.percentiles_ms
            self.say(f"{label}: {count} at {rate_per_s:g}/s → terminal p50 {pct['p50']} ms, p99 {pct['p99']} ms"
                     + (f"; Postgres p50 {p_sum.percentiles_ms['p50']} ms" if p_sum else "")
                     + (f"; to applied p50/p99 {a_sum.percentiles_ms['p50']}/{a_sum.percentiles_ms['p99']} ms"
                        if a_sum else "")
                     + (f", then visible p50/p99 {v_sum.percentiles_ms['p50']}/{v_sum.percentiles_ms['p99']} ms"
                        if v_sum else ""))
        return row

    # -------------------------------------------------------------- scenarios

    def run_baseline(self) -> None:
        with self.scenario("baseline: raw confluent-kafka loop"):
            benv.delete_topics(self.s, [BASELINE_IN, BASELINE_OUT])
            benv.create_topics(self.s, [BASELINE_IN, BASELINE_OUT], self.s.partitions)
            self.sender.burst(self._shared_burst(), topic=BASELINE_IN)
            for guarantee in ("at_least_once", "exactly_once"):
                task, tick = self._task(f"baseline {guarantee}", len(self.burst_messages))
                res = run_baseline(self.s, len(self.burst_messages), guarantee, self.s.commit_interval_s, tick=tick)
                self.progress.remove_task(task)
                self.results.baseline.append({"guarantee": guarantee, "messages": res.messages,
                                              "seconds": round(res.seconds, 3), "per_s": round(res.per_s, 1)})
                self.say(f"baseline {guarantee}: {res.messages} in {res.seconds:.2f}s = {res.per_s:,.0f} msg/s")
            benv.delete_topics(self.s, [BASELINE_IN, BASELINE_OUT])

    def run_warmup(self) -> None:
        """An exactly_once burst nobody measures, so the broker (its JIT, its page cache) is as
        warm for the first measured scenario as for the last. Its rate goes to the JSON's meta."""
        n = self.p.warmup_payments
        with self.scenario(f"warm-up: {n:,} payments, exactly_once, not measured"):
            _, env = self._start_session("warmup", processing_guarantee="exactly_once", simgw_in_process="true")
            watcher = TerminalWatcher(self.s, from_beginning=True)
            worker: benv.Proc | None = None
            try:
                worker, _ = self._ready_worker("worker-warmup", env, watcher, "probewarmup", measured=False)
                row = self._throughput("warm-up exactly_once", "warmup", n, watcher, worker, 0, {}, postgres=False)
                self.results.meta["warmup"] = {"payments": n, "per_s": row["per_s"],
                                               "worker_cpu_ms": row.get("worker_cpu_ms")}
            finally:
                if worker is not None:
                    worker.stop()
                watcher.close()

    def run_inprocess(self, guarantee: str, eos_max: float | None) -> float | None:
        """One session with the in-process gateway; returns the burst throughput."""
        short = "eos" if guarantee == "exactly_once" else "alo"
        max_rate: float | None = None
        with self.scenario(f"{short}: in-process gateway, {guarantee}"):
            app_id, env = self._start_session(short, processing_guarantee=guarantee, simgw_in_process="true")
            watcher = TerminalWatcher(self.s, from_beginning=True)
            worker: benv.Proc | None = None
            sink: benv.Proc | None = None
            try:
                sink = benv.start_sink(f"sink-{short}", env, self.log_dir)
                worker, _ = self._ready_worker(f"worker-{short}", env, watcher, f"probe{short}")
                extra = {"guarantee": guarantee, "gateway": "in-process", "gateway_latency_ms": 0}
                pg_before = 1
                messages = self._shared_burst() if short == "eos" else None
                row = self._throughput(f"paystream {guarantee}", f"tp{short}", self.p.payments, watcher, worker,
                                       pg_before, extra, messages)
                self.results.throughput.append(row)
                pg_before += row["answered"]
                max_rate = row["per_s"] or None
                if short == "eos" and max_rate:
                    fractions = open_loop_rates(max_rate, self.p.latency_fractions)
                else:
                    fractions = [(0.5, round((eos_max or max_rate or 100) * 0.5, 1))]
                for fraction, r in fractions:
                    phase = f"lat{short}{int(fraction * 100)}"
                    lrow = self._latency(f"{guarantee} @ {fraction:.0%} of eos max", phase, r, fraction, watcher,
                                         worker, pg_before, extra)
                    self.results.latency.append(lrow)
                    pg_before += lrow["sent"] - lrow["unanswered"]
                if short == "eos":
                    sink.stop()
                    self._sink_alone(env, watcher.events)
                    worker.stop()
                    watcher.close()
                    self._recovery(app_id, env)
            finally:
                for proc in (worker, sink):
                    if proc is not None:
                        proc.stop()
                watcher.close()
        return max_rate

    def run_scale(self, n: int) -> None:
        """The exactly_once burst of ``run_inprocess`` (the same payments, the same bytes) into
        ``n`` workers of one app sharing its partitions, each with its own web port and local
        state: how far one machine's throughput grows with workers (CPU per payment summed
        over the workers). Started one after the other, each ready (partitions assigned, tables
        recovered) before the next, then probed on every partition so the group has settled."""
        with self.scenario(f"scale: {n} exactly_once workers, in-process gateway"):
            _, env = self._start_session("scale", processing_guarantee="exactly_once", simgw_in_process="true")
            watcher = TerminalWatcher(self.s, from_beginning=True)
            procs: list[benv.Proc] = []
            try:
                procs.append(benv.start_sink("sink-scale", env, self.log_dir))
                workers: list[benv.Proc] = []
                for i in range(n):
                    port = int(env.get("PAYSTREAM_WEB_PORT", self.s.web_port)) if i == 0 else benv.free_port()
                    wenv = {**env, "PAYSTREAM_WEB_PORT": str(port),
                            "PAYSTREAM_DATADIR": f"{env['PAYSTREAM_DATADIR']}-{i}"}
                    worker = benv.start_worker(f"worker-scale-{i}", wenv, self.log_dir)
                    workers.append(worker)
                    procs.append(worker)
                    if benv.wait_ready(port, worker, 120) is None:
                        raise benv.BenchError(f"worker-scale-{i} never became ready; log:\n{worker.tail()}")
                group = benv.ProcGroup("workers-scale", workers)
                probes = 8 * self.s.partitions  # payment ids hash over every partition
                self._probe_many(watcher, "probescale", probes, group)
                extra = {"guarantee": "exactly_once", "gateway": "in-process", "gateway_latency_ms": 0, "workers": n}
                # the burst of the one-worker session, its payment ids included ("tpeos"): a new app, new topics
                row = self._throughput(f"paystream exactly_once, {n} workers", "tpeos", self.p.payments, watcher,
                                       group, probes, extra, self._shared_burst())
                self.results.throughput.append(row)
            finally:
                for proc in procs:
                    proc.stop()
                watcher.close()

    def _probe_many(self, watcher: TerminalWatcher, phase: str, count: int, proc: benv.Proc | benv.ProcGroup) -> None:
        """``count`` payments of ``phase``, all answered (raises otherwise)."""
        self.sender.burst(self._burst_messages(phase, count))
        if not watcher.wait_for(phase, count, 120, alive=proc.alive):
            raise benv.BenchError(f"{phase}: {watcher.terminal_by_phase.get(phase, 0)} of {count} probes answered")

    def _sink_alone(self, env: dict[str, str], events: int) -> None:
        """Rows/s of the sink alone: a fresh consumer group over every event of the session."""
        benv.truncate_sink_tables(self.s)
        sink_env = {**env, "PAYSTREAM_SINK_GROUP": f"{env['PAYSTREAM_APP_ID']}-sink-alone"}
        sink = benv.start_sink("sink-alone", sink_env, self.log_dir)
        try:
            first: float | None = None
            first_rows = 0
            task, tick = self._task("sink alone: rows", events)
            with pg_connect(self.s) as conn:
                deadline = time.monotonic() + max(120.0, events / 50)
                n = 0
                while time.monotonic() < deadline and sink.alive():
                    n = pg_event_count(conn)
                    tick(n)
                    if n and first is None:
                        first, first_rows = time.time(), n
                    if n >= events:
                        break
                    time.sleep(0.1)
            t_done = time.time()
            self.progress.remove_task(task)
            row = {"name": "sink alone", "events": events, "rows": n,
                   "seconds_from_start": round(t_done - sink.started, 2),
                   "per_s": round(rate(n - first_rows, t_done - first), 1) if first else 0.0,
                   "per_s_from_start": round(rate(n, t_done - sink.started), 1)}
            if n < events:
                row["error"] = f"only {n} of {events} rows"
            self.results.sink.append(row)
            self.say(f"sink alone: {n} event rows, {row['per_s']}/s once writing "
                     f"({row['per_s_from_start']}/s including its start-up)")
        finally:
            sink.stop()

    # -------------------------------------------------------------- recovery

    def _changelogs(self, app_id: str) -> dict[str, str]:
        names = benv.admin(self.s).list_topics(timeout=10).topics
        return {t[len(app_id) + 1:-len("-changelog")]: t for t in names
                if t.startswith(app_id + "-") and t.endswith("-changelog")}

    def _read_topic(self, topic: str) -> list[Any]:
        c = Consumer({"bootstrap.servers": self.s.kafka_bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex}",
                      "isolation.level": "read_committed", "enable.auto.commit": False,
                      "auto.offset.reset": "earliest"})
        try:
            md = c.list_topics(topic, timeout=10).topics[topic]
            ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
            c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
            out: list[Any] = []
            left = {p for p, high in ends.items() if high > 0}
            deadline = time.monotonic() + 120
            while left and time.monotonic() < deadline:
                for msg in c.consume(5000, 0.5):
                    if msg.error() is not None:
                        continue
                    out.append(msg)
                    if (msg.offset() or 0) >= ends[msg.partition() or 0] - 1:
                        left.discard(msg.partition() or 0)
                # transaction markers take offsets too: a partition is done once its position reaches the end
                for tp in c.position([TopicPartition(topic, p) for p in list(left)]):
                    if tp.offset >= ends[tp.partition]:
                        left.discard(tp.partition)
            return out
        finally:
            c.close()

    def _grow_changelogs(self, app_id: str, target: int) -> int:
        """Bring the payments table to ``target`` keys by cloning real changelog entries under new
        ids (payments and idempotency tables alike); returns the number of payments it now has."""
        logs = self._changelogs(app_id)
        payments_topic = logs.get("payments")
        if payments_topic is None:
            raise benv.BenchError(f"no payments changelog among {sorted(logs.values())}")
        entries = [m for m in self._read_topic(payments_topic) if m.value() is not None]
        keys = {m.key() for m in entries}
        have = len(keys)
        missing = target - have
        if missing <= 0:
            return have
        sample = entries[-1]
        sample_pid = sample.key().decode().strip('"')
        sample_cid: str | None = None
        idem_topic = logs.get("idempotency")
        idem_sample = None
        if idem_topic:
            for m in reversed(self._read_topic(idem_topic)):
                if m.value() is not None and sample_pid.encode() in m.value():
                    idem_sample = m
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        sample_cid = json.loads(m.value())["command_id"]
                    break
        # No compression: faust's consumer (aiokafka) reads lz4/zstd only with extra packages.
        producer = Producer({"bootstrap.servers": self.s.kafka_bootstrap, "linger.ms": 20,
                             "partitioner": "murmur2_random", "queue.buffering.max.messages": 2_000_000})
        task, tick = self._task("recovery: cloning table entries", missing)
        for i in range(missing):
            pid = f"clone_{i:07d}_{uuid.uuid4().hex[:8]}".encode()
            for topic, msg, old_cid in ((payments_topic, sample, sample_cid), (idem_topic, idem_sample, sample_cid)):
                if topic is None or msg is None:
                    continue
                key, value = msg.key(), msg.value()
                key, value = key.replace(sample_pid.encode(), pid), value.replace(sample_pid.encode(), pid)
                if old_cid:
                    cid = f"cmd-{pid.decode()}".encode()
                    key, value = key.replace(old_cid.encode(), cid), value.replace(old_cid.encode(), cid)
                while True:
                    try:
                        producer.produce(topic, key=key, value=value)
                        break
                    except BufferError:
                        producer.poll(0.05)
            if i % 1000 == 0:
                producer.poll(0)
                tick(i)
        if producer.flush(300) != 0:
            raise benv.BenchError("cloned changelog entries not delivered")
        self.progress.remove_task(task)
        return have + missing

    def _recovery(self, app_id: str, env: dict[str, str]) -> None:
        """Restart the session's worker with empty local state: first with the payments the
        session made (the fixed cost of a restart), then with the table grown to K payments;
        with rocksdb also with the local state kept."""
        have = self._grow_changelogs(app_id, 0)
        self._restart(app_id, env, "memory store, empty local state (session's own payments)", "memory://",
                      "fresh", have, 0)
        k = self._grow_changelogs(app_id, self.p.recovery_k)
        self.say(f"recovery: the payments table now holds {k:,} payments")
        runs: list[tuple[str, str, str]] = [("memory store, empty local state", "memory://", "fresh")]
        if self.rocksdb and self.p.persistent_recovery:
            runs += [("rocksdb store, empty local state", "rocksdb://", "fresh"),
                     ("rocksdb store, local state kept", "rocksdb://", "kept")]
        elif not self.p.persistent_recovery:
            self.results.notes.append("restarts with the rocksdb store skipped in this profile (--persistent-recovery)")
        else:
            self.results.notes.append("rocksdict is not installed: recovery measured with the memory store only")
        for n, (label, store, local) in enumerate(runs, start=1):
            self._restart(app_id, env, label, store, local, k, n if local == "fresh" else n - 1)

    def _restart(self, app_id: str, env: dict[str, str], label: str, store: str, local: str, k: int,
                 datadir_no: int) -> None:
        datadir = str(self.data_dir / f"{app_id}-recovery-{datadir_no}")
        n = len(self.results.recovery)
        watcher = TerminalWatcher(self.s)
        worker = benv.start_worker(f"worker-recovery-{n}", {**env, "PAYSTREAM_STORE": store,
                                                            "PAYSTREAM_DATADIR": datadir}, self.log_dir)
        timeout = max(300.0, k / 500)
        try:
            port = int(env.get("PAYSTREAM_WEB_PORT", self.s.web_port))
            ready = benv.wait_ready(port, worker, timeout)
            took = self._probe(watcher, f"rec{n}", worker, timeout=timeout)
        finally:
            worker.stop()
            watcher.close()
        recovered = round(ready - worker.started, 2) if ready else None
        self.results.recovery.append({"name": label, "store": store, "local_state": local, "payments": k,
                                      "seconds_to_ready": recovered,
                                      "seconds_to_first_answer": round(took, 2) if took else None})
        self.say(f"recovery, {k:,} payments, {label}: /ready after {recovered} s, "
                 f"first payment answered after {took:.1f}s" if took else f"[red]recovery, {label}: no answer")

    # -------------------------------------------------------------- textbook faust agent

    def run_textbook(self) -> None:
        """The second baseline: the same burst as the exactly_once session, through the same
        payment logic written as a textbook faust agent (bench/textbook.py), on clean topics.
        A sink persists its events to Postgres, as beside every paystream session, so both
        bursts share the CPUs with the same pipeline (until session 10 it ran alone, 9-10 %
        faster: the ratio erred against paystream)."""
        with self.scenario("textbook: faust agent, one message at a time"):
            _, env = self._start_session("textbook", processing_guarantee="at_least_once", simgw_in_process="true")
            watcher = TerminalWatcher(self.s, from_beginning=True)
            worker: benv.Proc | None = None
            sink: benv.Proc | None = None
            try:
                sink = benv.start_sink("sink-textbook", env, self.log_dir)
                worker, _ = self._ready_worker("textbook", env, watcher, "probetextbook", start=benv.start_textbook)
                messages = self._shared_burst()
                extra = {"guarantee": "at_least_once", "gateway": "in-process", "gateway_latency_ms": 0}
                row = self._throughput("textbook faust agent", "tpeos", len(messages), watcher, worker, 1, extra,
                                       messages)
                row["events"] = watcher.events_by_phase.get("tpeos", 0)
                succeeded = row["outcomes"].get("PaymentSucceeded", 0)
                if succeeded != len(messages):
                    row.setdefault("error", f"{succeeded} of {len(messages)} payments reached PaymentSucceeded "
                                            f"(terminal events: {row['outcomes']})")
                if "error" in row:
                    self.results.errors.append({"scenario": "textbook", "error": row["error"].splitlines()[0]})
                self.results.textbook.append(row)
            finally:
                for proc in (worker, sink):
                    if proc is not None:
                        proc.stop()
                watcher.close()

    # -------------------------------------------------------------- HTTP gateway

    def run_http(self) -> None:
        with self.scenario("http: simulated gateway over HTTP"):
            port = benv.free_port()
            lat = self.p.gateway_latencies_ms
            n_exec = self.p.executors
            _, env = self._start_session("http", processing_guarantee="exactly_once", simgw_in_process="false",
                                         simgw_url=f"http://127.0.0.1:{port}",
                                         gateway_executor_in_worker="false" if n_exec else "true")
            with benv.running(benv.start_simgw(port, lat[0], lat[0] / 10, self.log_dir)) as procs:
                watcher = TerminalWatcher(self.s, from_beginning=True)
                try:
                    procs.append(benv.start_sink("sink-http", env, self.log_dir))
                    executors = [benv.start_executor(f"executor-http-{i}", env, self.log_dir) for i in range(n_exec)]
                    procs.extend(executors)
                    worker_proc, _ = self._ready_worker("worker-http", env, watcher, "probehttp")
                    procs.append(worker_proc)
                    # the CPU per payment counts the executors' processes with the worker's
                    worker: benv.Proc | benv.ProcGroup = worker_proc
                    if executors:
                        worker = benv.ProcGroup("worker-http+executors", [worker_proc, *executors])
                    pg_before = 1
                    for ms in lat:
                        benv.set_simgw_latency(port, ms, ms / 10)
                        bound = serialised_bound(self.s.partitions, ms)
                        extra = {"guarantee": "exactly_once", "gateway": "HTTP", "gateway_latency_ms": ms,
                                 "serialised_bound_per_s": round(bound, 1), "separate_executors": n_exec}
                        label = f"paystream HTTP gateway {ms:g} ms" + (f", {n_exec} executor(s) apart"
                                                                        if n_exec else "")
                        row = self._throughput(label, f"tph{int(ms)}",
                                               self.p.http_payments, watcher, worker, pg_before, extra)
                        row["x_serialised_bound"] = round(ratio(row["per_s"], bound) or 0, 1)
                        self.results.throughput.append(row)
                        pg_before += row["answered"]
                finally:
                    watcher.close()

    # -------------------------------------------------------------- all

    def run(self) -> Results:
        self.results.meta = {
            "timestamp": self.stamp, "profile": self.p.name, "params": {
                "payments": self.p.payments, "http_payments": self.p.http_payments,
                "latency_seconds": self.p.latency_seconds, "latency_fractions": list(self.p.latency_fractions),
                "recovery_k": self.p.recovery_k, "gateway_latencies_ms": list(self.p.gateway_latencies_ms),
                "persistent_recovery": self.p.persistent_recovery and self.rocksdb,
                "partitions": self.s.partitions, "commit_interval_s": self.s.commit_interval_s,
                "gateway_batch_size": self.s.gateway_batch_size, "sink_batch_size": self.s.sink_batch_size,
                "warmup_payments": self.p.warmup_payments, "workers": self.p.workers,
                "scenarios": list(self.p.scenarios),
            },
            "machine": benv.machine_facts(), "kafka_bootstrap": self.s.kafka_bootstrap,
        }
        t0 = time.monotonic()
        benv.prepare_stack(self.s)
        with self.progress:
            if self.p.warmup_payments > 0:
                self.run_warmup()
            if "baseline" in self.p.scenarios:
                self.run_baseline()
            eos_max = None
            if "eos" in self.p.scenarios:
                eos_max = self.run_inprocess("exactly_once", None)
            if "scale" in self.p.scenarios and self.p.workers > 1:
                self.run_scale(self.p.workers)
            if "alo" in self.p.scenarios:
                self.run_inprocess("at_least_once", eos_max)
            if "textbook" in self.p.scenarios:
                self.run_textbook()
            if "http" in self.p.scenarios:
                self.run_http()
        busy = benv.hand_back(self.s)
        self.say("stack handed back: payment topics recreated empty, the benchmark's topics, sink rows and "
                 "consumer groups gone" + (f" (still in use, kept: {', '.join(busy)})" if busy else ""))
        self.results.meta["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.results.meta["duration_s"] = round(time.monotonic() - t0, 1)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.results
