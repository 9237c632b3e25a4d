"""`python -m bench [--quick] [options]`: run the benchmark on the local stack.

Prints a table, writes ``results/bench/<timestamp>.json`` and PNG charts beside it, and (not
with ``--quick`` unless ``--docs`` is given) splices the summary into docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console

from bench.env import ROOT

SCENARIOS = ("baseline", "eos", "scale", "alo", "textbook", "http")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few thousand payments, under ~2 minutes (smoke run)")
    p.add_argument("--payments", type=int, help="payments per in-process burst (raw loop and textbook agent too)")
    p.add_argument("--workers", type=int,
                   help="exactly_once workers sharing the partitions in the scale scenario (default 2)")
    p.add_argument("--executors", type=int,
                   help="HTTP runs: gateway executors in processes of their own (default 0: inside the worker)")
    p.add_argument("--http-payments", type=int, help="payments per HTTP-gateway burst")
    p.add_argument("--latency-seconds", type=float, help="length of each open-loop latency run")
    p.add_argument("--recovery-k", type=int, help="payments in the table for the recovery runs (e.g. 1000000)")
    p.add_argument("--warmup-payments", type=int,
                   help="unmeasured exactly_once burst before the scenarios (default 10000, 0 with --quick; 0: none)")
    p.add_argument("--persistent-recovery", action=argparse.BooleanOptionalAction, default=None,
                   help="also restart with faust's rocksdb store, fresh and kept (default: yes, not with --quick)")
    p.add_argument("--gateway-latency-ms", type=float, action="append",
                   help="mean latency of the HTTP gateway runs (repeatable; default 50 and 200)")
    p.add_argument("--only", action="append", choices=SCENARIOS,
                   help="run only these scenarios (repeatable; recovery and the sink alone are part of eos)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench", help="folder for JSON and PNG results")
    p.add_argument("--docs", type=Path, default=None,
                   help="markdown file to splice the summary into (default docs/performance.md, not with --quick)")
    p.add_argument("--no-docs", action="store_true", help="do not touch the docs")
    return p.parse_args(argv)


def _client_env() -> None:
    """As `paystream` does: the local stack's addresses unless the environment says otherwise."""
    from paystream import stack as st

    if st.stack_dir().exists():
        for key, value in st.env_for_clients().items():
            os.environ.setdefault(key, value)


def _check_stack(bootstrap: str) -> str | None:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=8)
    except Exception as exc:
        return f"Kafka at {bootstrap} is not reachable ({exc}); start the stack: `paystream stack up`"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _client_env()
    from bench import report
    from bench.run import DEFAULT, QUICK, Bench
    from paystream.config import get_settings

    console = Console()
    if not console.is_terminal:
        console = Console(width=170)  # a log file: keep the tables readable
    settings = get_settings()
    problem = _check_stack(settings.kafka_bootstrap)
    if problem:
        console.print(f"[red]{problem}")
        return 2
    profile = QUICK if args.quick else DEFAULT
    changes: dict[str, object] = {}
    for name in ("payments", "http_payments", "latency_seconds", "recovery_k", "persistent_recovery",
                 "warmup_payments", "workers", "executors"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.gateway_latency_ms:
        changes["gateway_latencies_ms"] = tuple(args.gateway_latency_ms)
    if args.only:
        changes["scenarios"] = tuple(s for s in SCENARIOS if s in args.only)
    profile = dataclasses.replace(profile, **changes)  # type: ignore[arg-type]
    try:
        import rocksdict  # noqa: F401

        rocksdb = True
    except ImportError:
        rocksdb = False

    bench = Bench(settings, profile, args.out, console, rocksdb=rocksdb)
    data = bench.run().to_json()
    report.add_ratios(data)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    data["meta"]["command"] = command.strip()
    stem = args.out / bench.stamp
    report.write_json(stem.with_suffix(".json"), data)
    report.write_json(args.out / "latest.json", data)
    charts = report.write_charts(stem, data)
    console.rule("[bold]results")
    report.print_report(console, data)
    console.print(f"results: {stem.with_suffix('.json')}, charts: {', '.join(str(c) for c in charts)}; "
                  f"worker and sink logs: {bench.log_dir}")
    docs = args.docs if args.docs is not None else (None if args.quick else ROOT / "docs" / "performance.md")
    if docs is not None and not args.no_docs:
        text = docs.read_text() if docs.exists() else "# Performance\n"
        docs.write_text(report.splice(text, report.markdown_summary(data, data["meta"]["command"])))
        console.print(f"summary written to {docs}")
    return 1 if data["errors"] else 0
