"""I6 as a scan of everything a test run leaves behind: every Kafka topic (aborted transactional
records included), every Postgres database of the stack and every log file, searched for card
numbers with the chaos checker's finder (``chaos.checker.card_numbers_in``), which shares no
code with paystream's own guard (``paystream.core.sensitive``).

Findings name the place (topic/partition/offset and part, database/table/dump line, file/line)
and show the number masked (first six, last four).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import psycopg
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chaos.checker import Schemas, card_numbers_in, mask_pan, pg_dump, read_topic

# Topics not scanned, and why. Everything else is, internal topics (``__consumer_offsets``,
# ``__transaction_state``) included.
EXCLUDED_TOPICS: dict[str, str] = {
    # The command topic is the senders' input: tests (the guard's, the fuzzer's) put card numbers
    # there on purpose to see them rejected. paystream never copies bytes from it out unchecked:
    # a command is decoded into typed fields and guarded (sensitive_data_rejected) before anything
    # is derived from it, and poison goes to payment.deadletter, which *is* scanned (dead_letter in
    # agents/payments.py empties a value holding a card number and drops such a key).
    "payment.requests": "senders' commands (hostile input on purpose)",
}
# Scanned on purpose:
# * payment.webhooks: its only writer is paystream's HTTP edge (paystream/web/edge.py), which
#   produces a verified notification mapped to an Avro record only after its card-data guard
#   (a body with a card number is refused with 400 and never produced); no test or chaos
#   scenario produces to it directly (the fuzzer sends webhook-schema records to
#   payment.requests). A card number there is a leak past the edge's guard.
# * payment.deadletter: it does copy senders' bytes, but redacted when they hold a card number.
# * the gateway call/reply topics, the vault and audit topics, the fraud topics and every table
#   changelog: paystream writes them all.


@dataclass
class I6Report:
    findings: list[str] = field(default_factory=list)
    topics: dict[str, int] = field(default_factory=dict)  # topic -> records scanned
    # Card numbers in the excluded topics (the senders' input): not failures, but the proof that
    # the same reading and finding does see the card numbers the suite sent.
    in_senders_input: dict[str, int] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)  # topics not read to their end
    avro_records: int = 0
    raw_records: int = 0
    databases: dict[str, int] = field(default_factory=dict)  # database -> dump lines scanned
    dump_failures: list[str] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    log_lines: int = 0

    def summary(self) -> str:
        return (f"I6 scan: {sum(self.topics.values())} records in {len(self.topics)} topics "
                f"({self.avro_records} Avro-decoded, {self.raw_records} raw), "
                f"{sum(self.databases.values())} dump lines of {len(self.databases)} databases, "
                f"{self.log_lines} lines in {len(self.log_files)} log files: {len(self.findings)} card numbers "
                f"(senders' input, not counted: {self.in_senders_input})")


def _found(data: bytes) -> list[str]:
    return [mask_pan(d) for d in card_numbers_in(data)]


# --------------------------------------------------------------------------- Kafka


def _strings(value: Any) -> Iterator[bytes]:
    """The strings and bytes of a decoded Avro value (map keys included), each on its own so no
    two fields run together. Numbers are not searched: every long in paystream's schemas is an
    amount in minor units, a sequence, a count or an epoch timestamp, and a card number sent in a
    string field (the only way the guard lets one in) stays a string wherever it is copied."""
    if isinstance(value, str):
        yield value.encode("utf-8")
    elif isinstance(value, bytes | bytearray):
        yield bytes(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):  # arrays; (record name, value) for a union member
        for v in value:
            yield from _strings(v)


def _avro(schemas: Schemas, data: bytes) -> Any | None:
    """The record a Confluent-framed Avro message holds, read with its *writer* schema (so no field
    is dropped by a reader schema); None when ``data`` is not exactly one such record."""
    if len(data) < 5 or data[0] != 0:
        return None
    (schema_id,) = struct.unpack(">I", data[1:5])
    writer = schemas.writer(schema_id)
    if writer is None:
        return None
    buf = io.BytesIO(data[5:])
    try:
        value = fastavro.schemaless_reader(buf, writer, None, return_record_name=True)
    except Exception:
        return None
    return value if buf.tell() == len(data) - 5 else None


def _scan_bytes(schemas: Schemas, data: bytes, report: I6Report) -> list[str]:
    """Card numbers in a key or value: in the strings of its Avro record when it is one, else in
    its raw bytes (JSON, text, poison: digits are digits whatever the encoding around them)."""
    record = _avro(schemas, data)
    if record is not None:
        report.avro_records += 1
        return [pan for s in _strings(record) for pan in _found(s)]
    report.raw_records += 1
    return _found(data)


def all_topics(bootstrap: str) -> list[str]:
    return sorted(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15).topics)


def scan_kafka(bootstrap: str, registry_url: str, report: I6Report) -> None:
    schemas = Schemas(registry_url)
    try:
        for topic in all_topics(bootstrap):
            # read_uncommitted: an aborted transaction's records stay in the log, so count too.
            msgs, complete = read_topic(bootstrap, topic, None, committed=False, idle_s=10.0, deadline_s=600.0)
            excluded = topic in EXCLUDED_TOPICS
            if excluded:
                report.in_senders_input[topic] = 0
            else:
                report.topics[topic] = len(msgs)
                if not complete:
                    report.incomplete.append(topic)
            for m in msgs:
                where = f"topic {topic}[{m.partition}]@{m.offset}"
                found = [(f"{where} {part}", pan) for part, data in (("key", m.key), ("value", m.value))
                         for pan in _scan_bytes(schemas, data or b"", report)]
                found += [(f"{where} header {hk}", pan) for hk, hv in m.headers for pan in _found(hv or b"")]
                if excluded:
                    report.in_senders_input[topic] += len(found)
                else:
                    report.findings.extend(f"{place}: {pan}" for place, pan in found)
    finally:
        schemas.close()


# --------------------------------------------------------------------------- Postgres


def databases(dsn: str) -> list[str]:
    """Every database of the stack's server but the templates: paystream's, and any a test made
    (``db rebuild`` targets, migration scratch databases) and left behind."""
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate ORDER BY datname").fetchall()
    return [r[0] for r in rows]


def scan_postgres(dsn: str, report: I6Report) -> None:
    for db in databases(dsn):
        dump = pg_dump(make_conninfo(dsn, dbname=db))
        if dump is None:
            report.dump_failures.append(db)
            continue
        table = "-"
        lines = dump.splitlines()
        report.databases[db] = len(lines)
        for no, line in enumerate(lines, 1):
            if line.startswith(b"COPY "):  # COPY public.payments (payment_id, ...) FROM stdin;
                table = line.split()[1].decode("utf-8", "replace")
                continue
            for pan in _found(line):
                report.findings.append(f"postgres {db} table {table} (dump line {no}): {pan}")


def database_name(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", "paystream"))


# --------------------------------------------------------------------------- logs


def log_files(roots: Iterable[Path], *, every_file_under: Iterable[Path] = ()) -> list[Path]:
    """Log files under ``roots`` (``*.log``, rotated ``*.log.N`` and ``*.log.<date>`` included) and
    every file under ``every_file_under`` (a folder that holds only logs)."""
    out: set[Path] = set()
    for root in roots:
        if root.is_dir():
            out.update(p for p in root.rglob("*.log*") if p.is_file())
    for root in every_file_under:
        if root.is_dir():
            out.update(p for p in root.rglob("*") if p.is_file())
    return sorted(out)


def scan_logs(paths: Iterable[Path], report: I6Report) -> None:
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        report.log_files.append(path)
        lines = data.splitlines()
        report.log_lines += len(lines)
        for no, line in enumerate(lines, 1):
            for pan in _found(line):
                report.findings.append(f"log {path}:{no}: {pan}")
