"""``python -m chaos run <scenario|all> [--payments N] [--short]`` · ``python -m chaos list`` ·
``python -m chaos repro <finding>``."""

from __future__ import annotations

import argparse
import sys
import time

from chaos.scenarios import SCENARIOS, log, run_scenario, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the scenarios")
    run = sub.add_parser("run", help="run a scenario (or all) on the local stack and check the invariants")
    run.add_argument("scenario", choices=[*SCENARIOS, "all"])
    run.add_argument("--payments", type=int, default=None, help="payments per scenario (default: its full size)")
    run.add_argument("--short", action="store_true", help="the short sizes used by the integration test")
    run.add_argument("--seed", type=int, default=1)
    repro = sub.add_parser("repro", help="a minimal reproduction of a finding (docs/reliability.md)")
    repro.add_argument("finding", choices=["nul-order-id", "huge-payment-id", "kill-recovery"])
    args = parser.parse_args(argv)

    if args.cmd == "repro":
        from chaos.repro import REPROS

        return int(REPROS[args.finding]())

    if args.cmd == "list":
        for s in SCENARIOS.values():
            print(f"{s.name:<15} full {s.full_payments:>5} payments, short {s.short_payments:>4}: {s.summary}")
        return 0

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    reports = []
    t0 = time.monotonic()
    for name in names:
        report = run_scenario(name, payments=args.payments, short=args.short, seed=args.seed)
        reports.append(report)
        print(report.summary_line(), flush=True)
        details = report.details()
        if details:
            print(details, flush=True)
    print()
    size = f"{args.payments} payments each" if args.payments else ("short sizes" if args.short else "full sizes")
    print(f"chaos: {len(reports)} scenario(s) in {time.monotonic() - t0:.0f}s ({size})")
    print(table(reports))
    failed = [r.scenario for r in reports if not r.ok]
    if failed:
        log(f"invariant violations in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
