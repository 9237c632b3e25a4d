"""EXPLAIN the HTTP edge's history queries on millions of generated rows (docs/performance.md).

    python -m bench.history_explain [--payments 2000000] [--customers 100000] [--plans]

Creates a scratch database on the Postgres of ``PAYSTREAM_POSTGRES_DSN``, applies the
migrations, fills ``payments`` (``--payments`` rows over ``--customers`` customers, creation
times spread over one year and ``payment_events`` (three events for every fourth payment) with
``generate_series``; one customer in ten payments is ``cus_big``, a customer with a long
history), ANALYZEs, then runs ``EXPLAIN (ANALYZE, BUFFERS)`` on exactly the SQL the
edge sends (``paystream.web.queries.payments_query`` and ``HISTORY_SQL``) and prints, per query,
the index it uses, the rows, the buffers touched and the time. The database is dropped at the
end. Nothing is asserted on times: the plan (an index scan, no sort, no
sequential scan) is what matters; the times are this machine's.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from paystream.config import get_settings
from paystream.web.queries import HISTORY_SQL, PageKey, payments_query
from sinks.migrate import migrate
from sinks.schema import scratch_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAGE = 50

FILL_PAYMENTS = """
INSERT INTO payments (payment_id, order_id, customer_id, status, currency, amount, authorized, captured, refunded,
                      gateway, gateway_ref, last_sequence, created_at, updated_at)
SELECT 'pay_' || lpad(i::text, 9, '0'), 'ord_' || lpad(i::text, 9, '0'),
       CASE WHEN i %% 10 = 0 THEN 'cus_big' ELSE 'cus_' || lpad((hashint %% %(customers)s)::text, 7, '0') END,
       (ARRAY['succeeded','failed','refunded','requires_capture'])[1 + i %% 4], 'USD', 1000 + i %% 5000,
       CASE WHEN i %% 4 = 1 THEN 0 ELSE 1000 + i %% 5000 END,
       CASE WHEN i %% 4 IN (0, 2) THEN 1000 + i %% 5000 ELSE 0 END,
       CASE WHEN i %% 4 = 2 THEN 1000 + i %% 5000 ELSE 0 END,
       'simulated', 'simpay_' || i, 3, ts, ts
FROM (SELECT i, abs(hashint4(i)::bigint) AS hashint,
             %(t0)s::timestamptz + (i::float8 / %(n)s) * interval '365 days' AS ts
      FROM generate_series(1, %(n)s) AS i) AS g
"""

FILL_EVENTS = """
INSERT INTO payment_events (event_id, payment_id, sequence, event_type, occurred_at, causation_command_id, status,
                            payload, kafka_partition, kafka_offset)
SELECT 'evt_' || i || '_' || s, 'pay_' || lpad(i::text, 9, '0'), s,
       (ARRAY['PaymentCreated','PaymentAuthorized','PaymentSucceeded'])[s],
       %(t0)s::timestamptz + (i::float8 / %(n)s) * interval '365 days' + s * interval '1 second',
       'cmd_' || i, (ARRAY['processing','requires_capture','succeeded'])[s],
       jsonb_build_object('payment_id', 'pay_' || i, 'sequence', s), i %% 12, i * 3 + s
FROM generate_series(1, %(n)s, 4) AS i, generate_series(1, 3) AS s
"""


def fill(conn: psycopg.Connection, n: int, customers: int) -> dict[str, float]:
    took = {}
    for name, statement in (("payments", FILL_PAYMENTS), ("payment_events", FILL_EVENTS)):
        t = time.monotonic()
        conn.execute(statement, {"n": n, "customers": customers, "t0": T0})
        took[name] = time.monotonic() - t
    t = time.monotonic()
    conn.execute("ANALYZE payments")
    conn.execute("ANALYZE payment_events")
    took["analyze"] = time.monotonic() - t
    return took


def busiest_customer(conn: psycopg.Connection) -> tuple[str, int]:
    row = conn.execute("SELECT customer_id, count(*) FROM payments GROUP BY 1 ORDER BY 2 DESC LIMIT 1").fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def explain(conn: psycopg.Connection, sql: str, params: list[Any]) -> dict[str, Any]:
    plan_rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + sql, params).fetchall()
    text = "\n".join(r[0] for r in plan_rows)
    indexes = sorted(set(re.findall(r"Index (?:Only )?Scan using (\w+)", text))
                     | set(re.findall(r"Bitmap Index Scan on (\w+)", text)))
    removed = sum(int(x) for x in re.findall(r"Rows Removed by Filter: (\d+)", text))
    top_buffers = next((line for line in text.splitlines() if "Buffers:" in line), "")  # the top node's
    hit = sum(int(x) for x in re.findall(r"hit=(\d+)", top_buffers))
    read = sum(int(x) for x in re.findall(r"read=(\d+)", top_buffers))
    ms = float(re.search(r"Execution Time: ([0-9.]+) ms", text).group(1))  # type: ignore[union-attr]
    rows = int(re.search(r"actual time=[0-9.]+\.\.[0-9.]+ rows=(\d+)", text).group(1))  # type: ignore[union-attr]
    return {"indexes": indexes, "seq_scan": "Seq Scan" in text, "sort": re.search(r"\bSort\b", text) is not None,
            "rows": rows, "removed": removed, "buffers": hit + read, "ms": ms, "plan": text}


def cases(conn: psycopg.Connection, n: int) -> list[tuple[str, str, list[Any]]]:
    customer, _ = busiest_customer(conn)
    mid = T0 + timedelta(days=180)
    out = []

    def listing(label: str, **kw: Any) -> None:
        sql, params = payments_query(kw.get("order_id"), kw.get("customer_id"), kw.get("created_from"),
                                     kw.get("created_to"), kw.get("after"))
        out.append((label, sql, [*params, PAGE + 1]))

    listing("customer with a long history, first page", customer_id=customer)
    first = conn.execute(*_page_end(customer)).fetchone()
    assert first is not None
    listing("same customer, page 2 (cursor)", customer_id=customer, after=PageKey(first[0], first[1]))
    deep_c = conn.execute("SELECT created_at, payment_id FROM payments WHERE customer_id = %s "
                          "ORDER BY created_at, payment_id OFFSET %s LIMIT 1", [customer, n // 20]).fetchone()
    assert deep_c is not None
    listing(f"same customer, page {n // 20 // PAGE + 1} (cursor)", customer_id=customer,
            after=PageKey(deep_c[0], deep_c[1]))
    small = conn.execute("SELECT customer_id FROM payments WHERE customer_id <> 'cus_big' LIMIT 1").fetchone()
    assert small is not None
    listing("a typical customer", customer_id=small[0])
    listing("customer + 30-day range", customer_id=customer, created_from=mid, created_to=mid + timedelta(days=30))
    listing("order", order_id=f"ord_{n // 2:09d}")
    listing("time range (1 day), first page", created_from=mid, created_to=mid + timedelta(days=1))
    day = conn.execute("SELECT count(*) FROM payments WHERE created_at >= %s AND created_at < %s",
                       [mid, mid + timedelta(days=1)]).fetchone()
    assert day is not None
    deep = conn.execute("SELECT created_at, payment_id FROM payments WHERE created_at >= %s "
                        "ORDER BY created_at, payment_id OFFSET %s LIMIT 1", [mid, day[0] // 2]).fetchone()
    assert deep is not None
    listing(f"time range (1 day), page {day[0] // 2 // PAGE + 1} (cursor)", created_from=mid,
            created_to=mid + timedelta(days=1), after=PageKey(deep[0], deep[1]))
    listing("time range from only (open end)", created_from=mid)
    out.append(("history of a payment", HISTORY_SQL, ["pay_000000001"]))
    return out


def _page_end(customer: str) -> tuple[str, list[Any]]:
    return ("SELECT created_at, payment_id FROM payments WHERE customer_id = %s ORDER BY created_at, payment_id "
            f"OFFSET {PAGE - 1} LIMIT 1", [customer])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=2_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--plans", action="store_true", help="print every full plan")
    args = parser.parse_args()
    dsn = get_settings().postgres_dsn
    with scratch_database(dsn, "ps_history_explain") as scratch:
        migrate(scratch)
        with psycopg.connect(scratch, autocommit=True) as conn:
            took = fill(conn, args.payments, args.customers)
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
                      for t in ("payments", "payment_events")}
            customer, per_customer = busiest_customer(conn)
            print(f"# {counts['payments']:,} payments ({args.customers:,} customers, busiest {customer} with "
                  f"{per_customer} payments), {counts['payment_events']:,} payment_events; filled in "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in took.items()))
            print(f"# Postgres {conn.execute('SHOW server_version').fetchone()[0]}, page size {PAGE}")  # type: ignore[index]
            print("| query | index used | seq scan | sort | rows | removed by filter | buffers | ms |")
            print("|---|---|---|---|---|---|---|---|")
            for label, sql, params in cases(conn, args.payments):
                conn.execute(sql, params).fetchall()  # warm the cache once, as a live edge would be
                e = explain(conn, sql, params)
                yes = {True: "yes", False: "no"}
                print(f"| {label} | {', '.join(e['indexes']) or '-'} | {yes[e['seq_scan']]} | {yes[e['sort']]} | "
                      f"{e['rows']} | {e['removed']} | {e['buffers']} | {e['ms']:.2f} |")
                if args.plans:
                    print(e["plan"])


if __name__ == "__main__":
    main()
