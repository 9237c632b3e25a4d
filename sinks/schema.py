"""What the migrations produce, as stable text: the reference ``sinks/expected_schema.txt``.

A test applies every migration to a fresh database and compares ``describe_schema`` with the
committed reference, so a migration that changes the schema without updating the reference
(or a hand edit of the reference) fails. After adding a migration, regenerate it with::

    python -m sinks.schema > sinks/expected_schema.txt

(against the Postgres of ``PAYSTREAM_POSTGRES_DSN``; it migrates a throwaway database and drops it).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

EXPECTED = Path(__file__).resolve().parent / "expected_schema.txt"

COLUMNS = """
SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default, is_identity
FROM information_schema.columns WHERE table_schema = 'public'
ORDER BY table_name, column_name
"""

CONSTRAINTS = """
SELECT rel.relname, con.conname, con.contype, pg_get_constraintdef(con.oid, true)
FROM pg_constraint con
JOIN pg_class rel ON rel.oid = con.conrelid
JOIN pg_namespace ns ON ns.oid = rel.relnamespace
WHERE ns.nspname = 'public'
ORDER BY rel.relname, con.conname
"""

INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY tablename, indexname
"""

_CONSTRAINT_KINDS = {"p": "PRIMARY KEY", "u": "UNIQUE", "c": "CHECK", "f": "FOREIGN KEY", "x": "EXCLUDE"}


def describe_schema(conn: psycopg.Connection) -> str:
    """Tables, columns (type, nullability, default), constraints and indexes of ``public``, sorted."""
    lines: list[str] = []
    table = None
    for name, column, dtype, length, nullable, default, identity in conn.execute(COLUMNS):
        if name != table:
            lines.append(f"table {name}")
            table = name
        kind = f"{dtype}({length})" if length else dtype
        extra = " NOT NULL" if nullable == "NO" else ""
        extra += " IDENTITY" if identity == "YES" else ""
        extra += f" DEFAULT {default}" if default is not None else ""
        lines.append(f"  column {column} {kind}{extra}")
    for name, conname, contype, definition in conn.execute(CONSTRAINTS):
        lines.append(f"constraint {name}.{conname} {_CONSTRAINT_KINDS.get(contype, contype)}: {definition}")
    for name, indexname, indexdef in conn.execute(INDEXES):
        lines.append(f"index {name}.{indexname}: {indexdef}")
    return "\n".join(lines) + "\n"


@contextmanager
def scratch_database(dsn: str, prefix: str = "ps_scratch") -> Iterator[str]:
    """A new empty database on the server of ``dsn``, dropped afterwards; yields its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrated_schema(dsn: str) -> str:
    """Apply every migration to a scratch database on ``dsn``'s server and describe the result."""
    from sinks.migrate import migrate

    with scratch_database(dsn, "ps_schema") as scratch:
        migrate(scratch)
        with psycopg.connect(scratch) as conn:
            return describe_schema(conn)


if __name__ == "__main__":
    from paystream.config import get_settings

    print(migrated_schema(get_settings().postgres_dsn), end="")
