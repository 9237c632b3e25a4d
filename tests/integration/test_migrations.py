"""Migrations on a fresh database: they produce exactly the committed reference schema
(sinks/expected_schema.txt), a second run changes nothing, and concurrent runners apply each
migration once (advisory lock)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from sinks import migrate as migrations
from sinks.schema import EXPECTED, describe_schema, scratch_database


@pytest.fixture
def fresh_db(pg_dsn: str):
    with scratch_database(pg_dsn, "ps_mig_test") as dsn:
        yield dsn


def test_migrations_produce_the_reference_schema(fresh_db: str) -> None:
    applied = migrations.migrate(fresh_db)
    assert [m.version for m in applied] == [m.version for m in migrations.discover()]
    with psycopg.connect(fresh_db) as conn:
        actual = describe_schema(conn)
    assert actual == EXPECTED.read_text(), (
        "the migrations' schema differs from sinks/expected_schema.txt; if the change is intended, "
        "regenerate it: python -m sinks.schema > sinks/expected_schema.txt"
    )


def test_the_reference_holds_what_the_sink_and_the_edge_rely_on() -> None:
    text = EXPECTED.read_text()
    for line in (
        "constraint payment_events.payment_events_pkey PRIMARY KEY: PRIMARY KEY (event_id)",
        "constraint payment_transactions.payment_transactions_key_kind UNIQUE: UNIQUE (idempotency_key, kind)",
        "index payments.payments_gateway_ref: CREATE INDEX payments_gateway_ref ON public.payments "
        "USING btree (gateway, gateway_ref)",
        # the edge's history listings, keyset-paginated on (created_at, payment_id)
        "index payments.payments_customer_created: CREATE INDEX payments_customer_created ON public.payments "
        "USING btree (customer_id, created_at, payment_id)",
        "index payments.payments_created: CREATE INDEX payments_created ON public.payments "
        "USING btree (created_at, payment_id)",
    ):
        assert line in text


def test_describe_schema_sees_a_change(fresh_db: str) -> None:
    """The comparison can fail: one extra column shows up in the description."""
    migrations.migrate(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        before = describe_schema(conn)
        conn.execute("ALTER TABLE payment_transactions ADD COLUMN note TEXT")
        after = describe_schema(conn)
    assert after != before and "  column note text\n" in after


def test_migrate_is_idempotent(fresh_db: str) -> None:
    first = migrations.migrate(fresh_db)
    assert first
    with psycopg.connect(fresh_db) as conn:
        schema = describe_schema(conn)
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert migrations.migrate(fresh_db) == []
    with psycopg.connect(fresh_db) as conn:
        assert describe_schema(conn) == schema
        assert conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall() == rows
    assert rows == [(m.version, m.name) for m in migrations.discover()]


def test_concurrent_runners_apply_each_migration_once(fresh_db: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    # A slow first migration keeps the lock held while the second runner arrives; without the
    # advisory lock both would run it and the second CREATE TABLE would fail.
    for m in migrations.discover():
        sql = m.path.read_text()
        if m.version == 1:
            sql = "SELECT pg_sleep(1);\n" + sql
        (tmp_path / m.path.name).write_text(sql)
    real_discover = migrations.discover
    monkeypatch.setattr(migrations, "discover", lambda directory=tmp_path: real_discover(directory))

    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    started = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            started.wait()
            results[i] = [m.version for m in migrations.migrate(fresh_db)]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    all_versions = [m.version for m in real_discover()]
    assert sorted(results[0] + results[1]) == all_versions  # each applied by exactly one runner
    with psycopg.connect(fresh_db) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == all_versions
