"""An independent checker of paystream's invariants I1-I7, from the outside.

It shares nothing with the code it checks but the ``avro/*.avsc`` files: it decodes the
Confluent wire format itself (fastavro, writer schemas fetched from the registry over HTTP),
reads Kafka with a plain confluent-kafka consumer, asks the simulated gateway's ledger over
HTTP (httpx) and queries Postgres with psycopg. Nothing here imports paystream, agents,
streams, sinks, tables or gateway_clients.

What it reads, from a *window* (the end offsets of every topic when a scenario started, see
``snapshot_offsets``) to the end of each topic:

* ``payment.requests`` (read_committed): every message. A message is a *command* when it
  decodes with a registered ``PaymentCommand`` schema; anything else must end in the
  dead-letter topic (or, when it decodes with another registered schema and names a payment,
  as a ``CommandRejected`` without causation for that payment).
* ``payment.events`` (read_committed), ``payment.deadletter`` (read_committed),
  the gateway's ``GET /v1/ledger``, Postgres (``payment_events``, ``payments``, ``pg_dump``),
  every other topic's raw bytes (read_uncommitted: aborted data is stored too), the ledger's
  charges of the window's payments (what paystream sent to the gateway) and the log files it
  is given, for card numbers.

The invariants, precisely as checked (ARCHITECTURE.md states them in words):

I1  Per payment, at most one *successful* charge in the gateway ledger. A charge is successful
    when money was captured (``amount_captured > 0``, refunds do not undo a double charge) or
    it is an authorization still holding money (``status == "authorized"``). A voided
    (``canceled``) authorization, a decline, a stored 5xx and an unfinished 3-D Secure
    (``requires_action``) are not. The one exception to "refunds do not undo": an *orphan
    charge* (money under an authorization key paystream gave up on) that paystream refunded in
    full, as the ledger itself shows it: succeeded refunds with paystream's orphan refund ids
    (``orphan_<attempt>_<n>``) add up to the captured amount. A voided orphan is ``canceled``.
    Both are counted in ``extra["orphans released"]`` (information).
I2  Every command that was not dead-lettered has exactly one event with
    ``causation_command_id == command_id`` whose type is in ``TERMINAL[command type]``
    (written out below, not imported). Messages repeating a command id count as one command.
    Also: no input (command, notification, reconciliation) is applied twice, i.e. per
    (payment, causation, event type) there is at most one event.
I3  ``0 <= refunded <= captured <= authorized <= amount`` on the totals of every event and on
    every ``payments`` row of the window's payments.
I4  Every message on ``payment.requests`` has an outcome: a terminal event by its command id, a
    ``CommandRejected``, or a dead letter whose headers ``ps_source_topic``,
    ``ps_source_partition``, ``ps_source_offset`` point at it.
I5  Per payment, in log order, ``sequence`` is 1, 2, 3, ... (a payment created in the window
    starts at 1); ``event_id`` is unique; every event decodes.
I6  No card number in any topic but ``payment.requests`` (where the hostile input itself is;
    ``payment.deadletter`` included: the issue counts a card number anywhere in topics as a
    failure, so poison holding one must be redacted or kept out of the topic), in the charges
    paystream created at the gateway, in Postgres (``pg_dump --data-only``) or in the given
    logs. A card number is a Luhn-valid run of 13-19 digits (single spaces or dashes allowed
    between digit groups, every span of whole groups checked, an unbroken run longer than 19
    digits is an identifier) that starts like a card of a payment network (first digit 2-6).
    The first-digit rule keeps epoch milliseconds (13 digits starting with 1) out; a run inside
    a hexadecimal token of 20+ characters (a uuid or hash), the fraction of a decimal number
    ("0.27239120300009745") and a date-time stamp ("20261126-182512") are not counted either.
    Findings are reported masked.
I7  ``payment_events`` holds exactly the window's events of the window's payments (no missing,
    no extra, same sequence, type, causation and status), and each ``payments`` row equals the
    last event that carries a status (status, amounts, currency, ``last_sequence``).

Beyond I1-I7 it compares the final state of each payment with the gateway's ledger
("ledger mismatches": e.g. the gateway captured money for a payment paystream says failed, or
refunded more than paystream reports, or finished a 3-D Secure payment paystream still shows
as ``requires_action``).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import re
import struct
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import httpx
import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

AVRO_DIR = Path(__file__).resolve().parent.parent / "avro"
REQUESTS, EVENTS, DEADLETTER = "payment.requests", "payment.events", "payment.deadletter"
COMMAND_RECORD = "io.paystream.commands.PaymentCommand"
EVENT_RECORD = "io.paystream.events.PaymentEvent"

# Which event types end each command type (I2), written out here rather than imported so the
# checker does not trust the code it checks.
TERMINAL: dict[str, frozenset[str]] = {
    "CreatePayment": frozenset({"PaymentSucceeded", "PaymentAuthorized", "PaymentRequiresAction", "PaymentFailed",
                                "PaymentCanceled", "PaymentOutcomeUnknown", "CommandRejected"}),
    "CapturePayment": frozenset({"PaymentSucceeded", "PaymentCanceled", "PaymentOutcomeUnknown", "CommandRejected"}),
    "CancelPayment": frozenset({"PaymentCanceled", "PaymentSucceeded", "PaymentFailed", "PaymentOutcomeUnknown",
                                "CommandRejected"}),
    "RefundPayment": frozenset({"RefundProcessed", "RefundFailed", "PaymentOutcomeUnknown", "CommandRejected"}),
    "AddPaymentMethod": frozenset({"PaymentMethodAdded", "CommandRejected"}),
    "RemovePaymentMethod": frozenset({"PaymentMethodRemoved", "CommandRejected"}),
    "ErasePaymentMethod": frozenset({"PaymentMethodRemoved", "CommandRejected"}),
    "ReleasePayment": frozenset({"PaymentSucceeded", "PaymentAuthorized", "PaymentRequiresAction", "PaymentFailed",
                                 "PaymentCanceled", "PaymentOutcomeUnknown", "CommandRejected"}),
    "RejectPayment": frozenset({"PaymentFailed", "CommandRejected"}),
}
# FraudDecision is terminal by its fields: an active (shadow=false) review ends a CreatePayment
# (a human decides later); allow/block and shadow decisions are progress.
FRAUD_REVIEW_ENDS = frozenset({"CreatePayment"})
ONLY_REJECTION = frozenset({"CommandRejected"})  # a command type the checker does not know

# Final payment statuses and what the gateway must show for them (ledger mismatches).
MONEY_MOVED = frozenset({"succeeded", "partially_refunded", "refunded", "disputed", "dispute_won", "dispute_lost"})
UNRESOLVED = frozenset({"processing", "unknown", "requires_action"})


# --------------------------------------------------------------------------- Kafka reading


@dataclass(frozen=True, slots=True)
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace") if v is not None else None
        return None


Offsets = dict[str, dict[int, int]]


def snapshot_offsets(bootstrap: str) -> Offsets:
    """The end offset of every partition of every topic: the start of a check window."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=15)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-snap-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    out: Offsets = {}
    try:
        for name, topic in md.topics.items():
            if name.startswith("__"):
                continue
            out[name] = {}
            for p in topic.partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=15)
                out[name][p] = high
    finally:
        consumer.close()
    return out


def list_topics(bootstrap: str) -> list[str]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=15)
    return sorted(n for n in md.topics if not n.startswith("__"))


def read_topic(bootstrap: str, topic: str, since: Mapping[int, int] | None, *, committed: bool = True,
               idle_s: float = 5.0, deadline_s: float = 180.0) -> tuple[list[Msg], bool]:
    """Every message of ``topic`` from ``since`` (offset per partition; 0 when absent) to the end
    offsets of now. Returns the messages and whether every partition was read to its end (with
    read_committed an open transaction holds the end back until it commits or aborts)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"chaos-check-{uuid.uuid4()}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed" if committed else "read_uncommitted",
        "enable.partition.eof": False, "fetch.max.bytes": 52428800,
    })
    out: list[Msg] = []
    try:
        md = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if md is None or md.error is not None:
            return out, True
        ends: dict[int, int] = {}
        tps = []
        for p in md.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            start = max((since or {}).get(p, 0), low)
            if start < high:
                ends[p] = high
                tps.append(TopicPartition(topic, p, start))
        if not tps:
            return out, True
        consumer.assign(tps)
        pending = set(ends)
        deadline = time.monotonic() + deadline_s
        last_progress, last_positions = time.monotonic(), {}
        while pending and time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.5):
                if m.error() is not None:
                    continue
                p, off = m.partition(), m.offset()
                if off < ends.get(p, 0):
                    out.append(Msg(topic, p, off, m.key(), m.value(), tuple(m.headers() or ())))
            # Positions move past aborted records and transaction markers too: that is progress.
            positions = {tp.partition: tp.offset
                         for tp in consumer.position([TopicPartition(topic, p) for p in pending])}
            pending = {p for p in pending if positions[p] < ends[p]}
            if positions != last_positions:
                last_progress, last_positions = time.monotonic(), positions
            elif time.monotonic() - last_progress > idle_s:
                break
        out.sort(key=lambda m: (m.partition, m.offset))
        complete = not pending
        return out, complete
    finally:
        consumer.close()


# --------------------------------------------------------------------------- Avro


class Undecodable(Exception):
    pass


class Schemas:
    """Writer schemas by id from the registry's Confluent-compatible API; the reader schemas
    are the ``.avsc`` files."""

    def __init__(self, registry_url: str, avro_dir: Path = AVRO_DIR) -> None:
        self.url = registry_url.rstrip("/")
        self.http = httpx.Client(timeout=10)
        self._by_id: dict[int, Any] = {}
        self.trailing = 0
        self.readers = {
            COMMAND_RECORD: fastavro.parse_schema(json.loads((avro_dir / "payment_command.avsc").read_text())),
            EVENT_RECORD: fastavro.parse_schema(json.loads((avro_dir / "payment_event.avsc").read_text())),
        }

    def writer(self, schema_id: int) -> Any:
        if schema_id not in self._by_id:
            r = self.http.get(f"{self.url}/schemas/ids/{schema_id}")
            if r.status_code == 404 or (r.status_code >= 400 and r.status_code < 500):
                self._by_id[schema_id] = None
            else:
                r.raise_for_status()
                try:
                    self._by_id[schema_id] = fastavro.parse_schema(json.loads(r.json()["schema"]))
                except Exception:
                    self._by_id[schema_id] = None
        return self._by_id[schema_id]

    def decode(self, data: bytes | None, *, strict: bool = True) -> tuple[str, dict[str, Any]]:
        """(record name of the writer schema, value); read with the ``.avsc`` as the reader
        schema when the writer is one of ours. Raises Undecodable; with ``strict`` also for
        bytes left over after the record (``self.trailing`` counts them otherwise)."""
        if data is None or len(data) < 5 or data[0] != 0:
            raise Undecodable("not Confluent-framed Avro")
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer = self.writer(schema_id)
        if writer is None:
            raise Undecodable(f"unknown schema id {schema_id}")
        name = writer.get("name") if isinstance(writer, dict) else None
        reader = self.readers.get(name) if isinstance(name, str) else None
        buf = io.BytesIO(data[5:])
        try:
            value = fastavro.schemaless_reader(buf, writer, reader, return_record_name=True)
        except Exception as exc:
            raise Undecodable(f"{type(exc).__name__}") from None
        if buf.tell() != len(data) - 5:
            if strict:
                raise Undecodable("trailing bytes after the record")
            self.trailing += 1
        if not isinstance(value, dict):
            raise Undecodable("not a record")
        return str(name), value

    def close(self) -> None:
        self.http.close()


def _union(value: Any) -> tuple[str | None, Any]:
    """fastavro's (record name, value) for a union of records; the short name."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return value[0].rsplit(".", 1)[-1], value[1]
    return None, value


# --------------------------------------------------------------------------- card numbers

_RUN = re.compile(rb"(?<![0-9])[0-9](?:[ -]?[0-9]){12,}(?![0-9])")
_GROUPS = re.compile(rb"[0-9]+")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_UUID_BYTES = re.compile(rb"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = b"0123456789abcdefABCDEF"


def _hex_context(data: bytes, start: int, end: int) -> bool:
    """Whether [start, end) is part of a machine identifier: inside a UUID, a hex run of 32+
    characters with a letter (a hash), or a run of 20+ hex characters (no dashes) with hex
    letters on both sides of the digits. Dashes do not
    extend the run: ``cmd-3530111333300000-02c4d8`` is a card number in an id, not an id."""
    for m in _UUID_BYTES.finditer(data, max(0, start - 36), min(len(data), end + 36)):
        if m.start() <= start and end <= m.end():
            return True
    lo = start
    while lo > 0 and data[lo - 1:lo] in _HEX and start - lo < 80:
        lo -= 1
    hi = end
    while hi < len(data) and data[hi:hi + 1] in _HEX and hi - end < 80:
        hi += 1
    letters = b"abcdefABCDEF"
    if hi - lo >= 32 and any(c in letters for c in data[lo:hi]):
        return True  # a hash (a SHA-256 fingerprint may end in 13 digits)
    return (hi - lo >= 20 and any(c in letters for c in data[lo:start])
            and any(c in letters for c in data[end:hi]))


def find_card_numbers(data: bytes) -> list[str]:
    """Card numbers in ``data``, masked (``****1234`` and the digit count)."""
    return [f"****{digits[-4:]} ({len(digits)} digits)" for digits in card_numbers_in(data)]


def mask_pan(digits: str) -> str:
    """First six and last four digits (PCI DSS 3.4.1's most that may be shown), the rest masked."""
    return f"{digits[:6]}{'*' * (len(digits) - 10)}{digits[-4:]}"


def card_numbers_in(data: bytes) -> list[str]:
    """The card numbers in ``data`` (the digits, unmasked: mask before printing)."""
    found: list[str] = []
    # A UUID is one token: its digits never join the bytes around it. In Avro's binary form an
    # event id is followed by the next field's length byte, which can be an ASCII digit
    # ("...-94c4-578723729655" + "0": a Luhn-valid 13-digit run across the boundary).
    data = _UUID_BYTES.sub(lambda m: b"x" * len(m.group()), data)
    for run in _RUN.finditer(data):
        groups = [g.group().decode() for g in _GROUPS.finditer(run.group())]
        if len(groups) == 1 and len(groups[0]) > 19:
            continue  # an unbroken run longer than a PAN is an identifier
        if _hex_context(data, run.start(), run.end()):
            continue
        if len(groups) == 2 and len(groups[0]) == 8 and len(groups[1]) == 6 and groups[0][:2] in ("19", "20"):
            continue  # a date-time stamp (YYYYMMDD-HHMMSS), never how a card number is grouped
        if run.start() >= 2 and data[run.start() - 1:run.start()] in (b".", b",") and \
                data[run.start() - 2:run.start() - 1].isdigit():
            continue  # the fraction of a decimal number ("runtime=0.27239120300009745")
        for i in range(len(groups)):
            digits = ""
            for j in range(i, len(groups)):
                digits += groups[j]
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and digits[0] in "23456" and luhn(digits):
                    found.append(digits)
                    break
    return found


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    scenario: str = ""
    commands_sent: int = 0  # by the driver (not read by the checker)
    messages: int = 0  # on payment.requests in the window
    commands: int = 0  # of which decodable PaymentCommands
    results: int = 0  # messages with an outcome (terminal event, rejection or dead letter)
    payments: int = 0
    events: int = 0
    dead_letters: int = 0
    double_charges: list[str] = field(default_factory=list)  # I1
    missing_terminal: list[str] = field(default_factory=list)  # I2
    duplicate_terminal: list[str] = field(default_factory=list)  # I2
    applied_twice: list[str] = field(default_factory=list)  # I2 (inputs)
    amount_violations: list[str] = field(default_factory=list)  # I3
    lost: list[str] = field(default_factory=list)  # I4
    sequence_gaps: list[str] = field(default_factory=list)  # I5
    duplicate_event_ids: list[str] = field(default_factory=list)  # I5
    bad_events: list[str] = field(default_factory=list)  # I5: undecodable events
    card_numbers: list[str] = field(default_factory=list)  # I6
    pg_mismatches: list[str] = field(default_factory=list)  # I7
    ledger_mismatches: list[str] = field(default_factory=list)  # beyond I1-I7
    unresolved: int = 0  # payments still processing/unknown/requires_action (information)
    incomplete_reads: list[str] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)  # scenario counters (kills, forged accepted...)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def dup_or_missing(self) -> int:
        return (len(self.missing_terminal) + len(self.duplicate_terminal) + len(self.applied_twice)
                + len(self.duplicate_event_ids) + len(self.bad_events))

    def counts(self) -> dict[str, int]:
        return {
            "commands sent": self.commands_sent,
            "results": self.results,
            "double charges": len(self.double_charges),
            "lost commands": len(self.lost),
            "dup/missing events": self.dup_or_missing,
            "sequence gaps": len(self.sequence_gaps),
            "I3 violations": len(self.amount_violations),
            "postgres mismatches": len(self.pg_mismatches),
            "card numbers": len(self.card_numbers),
            "ledger mismatches": len(self.ledger_mismatches),
        }

    def failures(self) -> dict[str, list[str]]:
        """The invariant violations (every list must be empty)."""
        return {
            "I1 double charges": self.double_charges,
            "I2 missing terminal": self.missing_terminal,
            "I2 duplicate terminal": self.duplicate_terminal,
            "I2 input applied twice": self.applied_twice,
            "I3 amounts": self.amount_violations,
            "I4 lost": self.lost,
            "I5 sequence": self.sequence_gaps,
            "I5 duplicate event_id": self.duplicate_event_ids,
            "I5 undecodable event": self.bad_events,
            "I6 card numbers": self.card_numbers,
            "I7 postgres": self.pg_mismatches,
            "ledger mismatches": self.ledger_mismatches,
            "incomplete reads": self.incomplete_reads,
        }

    @property
    def ok(self) -> bool:
        return not any(self.failures().values())

    def summary_line(self) -> str:
        c = self.counts()
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.extra.items()))
        return (f"{self.scenario:<14} sent={c['commands sent']} results={c['results']} "
                f"double_charges={c['double charges']} lost={c['lost commands']} "
                f"dup_or_missing={c['dup/missing events']} gaps={c['sequence gaps']} "
                f"i3={c['I3 violations']} pg_mismatches={c['postgres mismatches']} "
                f"card_numbers={c['card numbers']} ledger_mismatches={c['ledger mismatches']} "
                f"unresolved={self.unresolved} {extra}".rstrip())

    def details(self, limit: int = 10) -> str:
        lines = []
        for name, items in self.failures().items():
            if items:
                lines.append(f"  {name}: {len(items)}")
                lines.extend(f"    - {i}" for i in items[:limit])
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "ok": self.ok, "counts": self.counts(), "extra": self.extra,
                "messages": self.messages, "commands": self.commands, "payments": self.payments,
                "events": self.events, "dead_letters": self.dead_letters, "unresolved": self.unresolved,
                "seconds": round(self.seconds, 1),
                "failures": {k: v[:50] for k, v in self.failures().items() if v}, "notes": self.notes}


# --------------------------------------------------------------------------- the check


@dataclass
class CheckConfig:
    bootstrap: str
    registry_url: str
    dsn: str
    simgw_url: str
    since: Offsets
    logs: Sequence[Path] = ()
    avro_dir: Path = AVRO_DIR
    pg_wait_s: float = 120.0  # how long to wait for the sink to store the window's events
    read_idle_s: float = 5.0
    scan_pg_dump: bool = True
    # Lines of ``pg_dump`` that held card numbers before the window (``pg_card_lines`` at its
    # start): reported as a note, not charged to this window. None: every line counts.
    pg_baseline: set[str] | None = None


@dataclass
class _Event:
    msg: Msg
    value: dict[str, Any]
    type: str
    body: dict[str, Any]
    totals: dict[str, Any] | None

    @property
    def payment_id(self) -> str:
        return str(self.value["payment_id"])


def _decode_events(schemas: Schemas, msgs: Iterable[Msg], report: Report) -> list[_Event]:
    out = []
    for m in msgs:
        try:
            name, value = schemas.decode(m.value)
        except Undecodable as exc:
            report.bad_events.append(f"{EVENTS}[{m.partition}]@{m.offset}: {exc}")
            continue
        if name != EVENT_RECORD:
            report.bad_events.append(f"{EVENTS}[{m.partition}]@{m.offset}: written with schema {name}")
            continue
        etype, body = _union(value.get("event"))
        _, totals = _union(value.get("totals"))
        out.append(_Event(m, value, etype or "?", body if isinstance(body, dict) else {},
                          totals if isinstance(totals, dict) else None))
    return out


def _i3(t: Mapping[str, Any]) -> bool:
    return 0 <= t["refunded"] <= t["captured"] <= t["authorized"] <= t["amount"]


def check(cfg: CheckConfig, scenario: str = "") -> Report:
    t0 = time.monotonic()
    report = Report(scenario=scenario)
    schemas = Schemas(cfg.registry_url, cfg.avro_dir)
    try:
        _check(cfg, schemas, report)
    finally:
        schemas.close()
    report.seconds = time.monotonic() - t0
    return report


def _read(cfg: CheckConfig, topic: str, report: Report, committed: bool = True) -> list[Msg]:
    msgs, complete = read_topic(cfg.bootstrap, topic, cfg.since.get(topic), committed=committed,
                                idle_s=cfg.read_idle_s)
    if not complete:
        report.incomplete_reads.append(f"{topic}: not read to its end offsets (open transaction?)")
    return msgs


def _check(cfg: CheckConfig, schemas: Schemas, report: Report) -> None:
    requests = _read(cfg, REQUESTS, report)
    event_msgs = _read(cfg, EVENTS, report)
    dead_msgs = _read(cfg, DEADLETTER, report)
    report.messages, report.dead_letters = len(requests), len(dead_msgs)

    events = _decode_events(schemas, event_msgs, report)
    report.events = len(events)
    by_payment: dict[str, list[_Event]] = defaultdict(list)
    for ev in events:
        by_payment[ev.payment_id].append(ev)

    # ---- dead letters by the source they point at
    dead_by_source: Counter[tuple[str, int, int]] = Counter()
    for d in dead_msgs:
        try:
            src = (d.header("ps_source_topic") or "", int(d.header("ps_source_partition") or -1),
                   int(d.header("ps_source_offset") or -1))
        except ValueError:
            report.notes.append(f"dead letter {d.partition}@{d.offset} has malformed source headers")
            continue
        dead_by_source[src] += 1
    for src, n in dead_by_source.items():
        if n > 1 and src[0] == REQUESTS:
            report.duplicate_terminal.append(f"{src[0]}[{src[1]}]@{src[2]} dead-lettered {n} times")

    # ---- requests: classify every message, find its outcome (I4) and its terminal (I2)
    terminal_by_cause: dict[str, list[_Event]] = defaultdict(list)
    any_by_cause: dict[str, list[_Event]] = defaultdict(list)
    rejections_without_cause: Counter[str] = Counter()
    for ev in events:
        cause = ev.value.get("causation_command_id")
        if cause:
            any_by_cause[cause].append(ev)
        elif ev.type == "CommandRejected":
            rejections_without_cause[ev.payment_id] += 1

    commands: dict[str, tuple[str, str, Msg]] = {}  # command_id -> (type, payment_id, first message)
    created_in_window: set[str] = set()
    dead_lettered_ids: set[str] = set()
    for m in requests:
        where = f"{REQUESTS}[{m.partition}]@{m.offset}"
        dead = dead_by_source.get((REQUESTS, m.partition, m.offset), 0) > 0
        try:
            # Not strict: a record followed by stray bytes is still a command the workers can
            # read (and do); it must have an outcome like any other.
            name, value = schemas.decode(m.value, strict=False)
        except Undecodable as exc:
            if dead:
                report.results += 1
            else:
                report.lost.append(f"{where}: undecodable ({exc}) and not in {DEADLETTER}")
            continue
        cid = value.get("command_id") if isinstance(value.get("command_id"), str) else None
        pid = value.get("payment_id") if isinstance(value.get("payment_id"), str) else None
        ctype = None
        if name == COMMAND_RECORD:
            report.commands += 1
            ctype, _ = _union(value.get("command"))
            if ctype == "CreatePayment" and pid:
                created_in_window.add(pid)
        if dead:
            report.results += 1
            if cid:
                dead_lettered_ids.add(cid)
            continue
        if cid:
            if cid not in commands:
                commands[cid] = (ctype or "?", pid or "", m)
            if any_by_cause.get(cid):
                report.results += 1
            else:
                report.lost.append(f"{where}: command {cid} ({ctype}) for {pid!r}: no event and no dead letter")
            continue
        if pid and rejections_without_cause[pid] > 0:
            rejections_without_cause[pid] -= 1
            report.results += 1
            continue
        report.lost.append(f"{where}: no command id, no CommandRejected for {pid!r}, not dead-lettered")

    if schemas.trailing:
        report.notes.append(f"{schemas.trailing} request(s) carried bytes after the Avro record "
                            "(read as commands; a stricter decoder would dead-letter them)")

    # I2: exactly one terminal per command id (repeats of an id are one command)
    for cid, (ctype, pid, _msg) in commands.items():
        if cid in dead_lettered_ids and not any_by_cause.get(cid):
            continue
        terminal = TERMINAL.get(ctype, ONLY_REJECTION)
        ends = [e for e in any_by_cause.get(cid, []) if e.type in terminal or _fraud_review_ends(ctype, e)]
        terminal_by_cause[cid] = ends
        if not ends and any_by_cause.get(cid):
            types = ",".join(e.type for e in any_by_cause[cid])
            report.missing_terminal.append(f"{ctype} {cid} of {pid}: events {types} but no terminal")
        elif len(ends) > 1:
            types = ",".join(f"{e.type}#{e.value['sequence']}" for e in ends)
            report.duplicate_terminal.append(f"{ctype} {cid} of {pid}: {len(ends)} terminal events ({types})")

    # I2 (inputs): no (payment, causation, type) twice
    seen: Counter[tuple[str, str, str]] = Counter()
    for ev in events:
        cause = ev.value.get("causation_command_id")
        if cause:
            # A verdict publishes the active and the shadow FraudDecision under one causation.
            kind = f"{ev.type}(shadow)" if ev.type == "FraudDecision" and ev.body.get("shadow") else ev.type
            seen[(ev.payment_id, cause, kind)] += 1
    for (pid, cause, etype), n in seen.items():
        if n > 1:
            report.applied_twice.append(f"{pid}: {n}x {etype} caused by {cause}")

    # ---- I3 and I5 per payment
    ids: Counter[str] = Counter(str(e.value["event_id"]) for e in events)
    report.duplicate_event_ids.extend(f"event_id {i} x{n}" for i, n in ids.items() if n > 1)
    for pid, evs in by_payment.items():
        seqs = [int(e.value["sequence"]) for e in evs]
        start = 1 if pid in created_in_window else seqs[0]
        expected = list(range(start, start + len(seqs)))
        if seqs != expected:
            report.sequence_gaps.append(f"{pid}: sequences {_compact(seqs)} (expected {_compact(expected)})")
        for e in evs:
            if e.totals is not None and not _i3(e.totals):
                report.amount_violations.append(f"{pid} seq {e.value['sequence']} {e.type}: {e.totals}")
    report.payments = len(created_in_window)

    # ---- I1 and the ledger (and I6 on what paystream sent to the gateway)
    last_status = {pid: _last_with_status(evs) for pid, evs in by_payment.items()}
    _check_ledger(cfg, report, set(by_payment) | created_in_window, last_status, created_in_window)

    # ---- I7 and Postgres I3
    _check_postgres(cfg, report, events, by_payment, created_in_window, last_status)

    # ---- I6
    _scan_card_numbers(cfg, report)


def _fraud_review_ends(ctype: str, e: _Event) -> bool:
    if e.type != "FraudDecision" or ctype not in FRAUD_REVIEW_ENDS:
        return False
    return e.body.get("decision") == "review" and not e.body.get("shadow")


def _compact(seqs: list[int]) -> str:
    return str(seqs) if len(seqs) <= 12 else f"{seqs[:6]}...{seqs[-4:]} ({len(seqs)})"


def _last_with_status(evs: list[_Event]) -> _Event | None:
    for e in reversed(evs):
        if e.value.get("status") is not None:
            return e
    return None


ORPHAN_REFUND_ID = re.compile(r"^orphan_\d+_\d+$")  # paystream's refunds of orphan charges
ORPHAN_VOID_KEY = re.compile(r"-authorize-\d+-void(-\d+)?$")  # paystream's voids of orphan charges


def orphan_refunded(charge: Mapping[str, Any]) -> bool:
    """A captured charge paystream refunded in full as an orphan, per the ledger's own refund rows."""
    captured = int(charge.get("amount_captured") or 0)
    back = sum(int(r.get("amount") or 0) for r in charge.get("refunds") or []
               if r.get("status") == "succeeded" and ORPHAN_REFUND_ID.match(str(r.get("refund_id") or "")))
    return captured > 0 and back >= captured and int(charge.get("amount_refunded") or 0) >= captured


def orphan_voided(charge: Mapping[str, Any]) -> bool:
    return charge.get("status") == "canceled" and any(
        ORPHAN_VOID_KEY.search(str(k)) for k in charge.get("idempotency_keys") or [])


def successful(charge: Mapping[str, Any]) -> bool:
    if orphan_refunded(charge):
        return False  # an orphan charge whose money went back: really, in the ledger
    return int(charge.get("amount_captured") or 0) > 0 or charge.get("status") == "authorized"




def _check_ledger(cfg: CheckConfig, report: Report, in_window: set[str],
                  last_status: Mapping[str, _Event | None], payments: set[str]) -> None:
    r = httpx.get(f"{cfg.simgw_url.rstrip('/')}/v1/ledger", timeout=60)
    r.raise_for_status()
    charges: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in r.json()["data"]:
        if c.get("payment_id") in in_window:
            charges[c["payment_id"]].append(c)
            # What paystream sent to the gateway is published too (I6).
            for pan in find_card_numbers(json.dumps(c).encode()):
                report.card_numbers.append(f"gateway ledger charge {c.get('id')}: {pan}")
    released = sum(1 for cs in charges.values() for c in cs if orphan_refunded(c) or orphan_voided(c))
    if released:
        report.extra["orphans released"] = released
    for pid, cs in charges.items():
        ok = [c for c in cs if successful(c)]
        if len(ok) > 1:
            report.double_charges.append(
                f"{pid}: {len(ok)} successful charges " + ", ".join(
                    f"{c['id']}({c['status']}, captured {c['amount_captured']}, keys {c['idempotency_keys']})"
                    for c in ok))
    for pid in payments:
        last = last_status.get(pid)
        if last is None:
            continue
        status = last.value["status"]
        ok = [c for c in charges.get(pid, []) if successful(c)]
        t = last.totals or {}
        if status == "requires_action":
            # The customer's action is over at the gateway (its webhook went out), yet the
            # payment still waits for it.
            done = [c for c in charges.get(pid, []) if c.get("status") not in ("requires_action", None)]
            if done:
                report.ledger_mismatches.append(f"{pid}: paystream requires_action vs gateway {_brief(done)}")
            else:
                report.unresolved += 1
            continue
        if status in UNRESOLVED:
            report.unresolved += 1
            continue
        if status in MONEY_MOVED:
            if len(ok) != 1 or ok[0]["amount_captured"] != t.get("captured") or \
                    ok[0]["amount_refunded"] != t.get("refunded"):
                report.ledger_mismatches.append(f"{pid}: paystream {status} {t} vs gateway {_brief(ok)}")
        elif status == "requires_capture":
            if len(ok) != 1 or ok[0]["status"] != "authorized" or ok[0]["amount_authorized"] != t.get("authorized"):
                report.ledger_mismatches.append(f"{pid}: paystream {status} {t} vs gateway {_brief(ok)}")
        elif status in ("failed", "canceled") and ok:
            report.ledger_mismatches.append(f"{pid}: paystream {status} but gateway holds {_brief(ok)}")


def _brief(charges: list[dict[str, Any]]) -> str:
    return "[" + ", ".join(f"{c['id']} {c['status']} auth={c['amount_authorized']} cap={c['amount_captured']} "
                           f"ref={c['amount_refunded']}" for c in charges) + "]"


def _check_postgres(cfg: CheckConfig, report: Report, events: list[_Event], by_payment: Mapping[str, list[_Event]],
                    created: set[str], last_status: Mapping[str, _Event | None]) -> None:
    window_ids = {str(e.value["event_id"]) for e in events}
    deadline = time.monotonic() + cfg.pg_wait_s
    stored = 0
    with psycopg.connect(cfg.dsn, autocommit=True, connect_timeout=10) as conn:
        while True:  # the sink is asynchronous: give it time to catch up
            row = conn.execute("SELECT count(*) FROM payment_events WHERE event_id = ANY(%s)",
                               (list(window_ids),)).fetchone()
            stored = int(row[0]) if row else 0
            if stored >= len(window_ids) or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        pids = list(by_payment)
        rows = conn.execute(
            "SELECT event_id, payment_id, sequence, event_type, causation_command_id, status "
            "FROM payment_events WHERE payment_id = ANY(%s)", (pids,)).fetchall()
        prow = conn.execute(
            "SELECT payment_id, status, currency, amount, authorized, captured, refunded, last_sequence "
            "FROM payments WHERE payment_id = ANY(%s)", (pids,)).fetchall()
    pg = {r[0]: r for r in rows}
    for e in events:
        eid = str(e.value["event_id"])
        r = pg.get(eid)
        if r is None:
            report.pg_mismatches.append(f"{e.payment_id} seq {e.value['sequence']} {e.type}: event {eid} not stored")
            continue
        want = (e.payment_id, int(e.value["sequence"]), e.type, e.value.get("causation_command_id"),
                e.value.get("status"))
        if tuple(r[1:]) != want:
            report.pg_mismatches.append(f"{eid}: stored {tuple(r[1:])} != event {want}")
    for eid, r in pg.items():
        if eid not in window_ids and r[1] in created:
            report.pg_mismatches.append(f"{r[1]} seq {r[2]} {r[3]}: stored event {eid} is not in {EVENTS}")
    rows_by_pid = {r[0]: r for r in prow}
    for pid in created:
        last = last_status.get(pid)
        r = rows_by_pid.get(pid)
        if last is None:
            if r is not None:
                report.pg_mismatches.append(f"{pid}: payments row without any status-bearing event")
            continue
        if r is None:
            report.pg_mismatches.append(f"{pid}: no payments row (last event seq {last.value['sequence']})")
            continue
        t = last.totals or {}
        want_row = (last.value["status"], t.get("currency"), t.get("amount"), t.get("authorized"),
                    t.get("captured"), t.get("refunded"), int(last.value["sequence"]))
        got = (r[1], (r[2] or "").strip() or None, r[3], r[4], r[5], r[6], int(r[7]))
        if got != want_row:
            report.pg_mismatches.append(f"{pid}: payments row {got} != last event {want_row}")
    for r in prow:
        amount, authorized, captured, refunded = r[3], r[4], r[5], r[6]
        if not (0 <= refunded <= captured <= authorized and (amount is None or authorized <= amount)):
            report.amount_violations.append(f"postgres payments {r[0]}: {r[3:7]}")
    if stored < len(window_ids):
        report.notes.append(f"sink stored {stored} of {len(window_ids)} window events after {cfg.pg_wait_s:.0f}s")


def _scan_card_numbers(cfg: CheckConfig, report: Report) -> None:
    for topic in list_topics(cfg.bootstrap):
        if topic == REQUESTS:
            continue  # the hostile input itself carries card numbers
        msgs, _ = read_topic(cfg.bootstrap, topic, cfg.since.get(topic), committed=False, idle_s=cfg.read_idle_s)
        for m in msgs:
            for part, data in (("key", m.key), ("value", m.value)):
                for pan in find_card_numbers(data or b""):
                    report.card_numbers.append(f"topic {topic}[{m.partition}]@{m.offset} {part}: {pan}")
            for hk, hv in m.headers:
                for pan in find_card_numbers(hv or b""):
                    report.card_numbers.append(f"topic {topic}[{m.partition}]@{m.offset} header {hk}: {pan}")
    for path in cfg.logs:
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        for line_no, line in enumerate(data.splitlines(), 1):
            for pan in find_card_numbers(line):
                report.card_numbers.append(f"log {path}:{line_no}: {pan}")
    if cfg.scan_pg_dump:
        dump = pg_dump(cfg.dsn)
        if dump is None:
            report.notes.append("pg_dump failed: Postgres not scanned for card numbers")
        else:
            before = 0
            for line_no, line in enumerate(dump.splitlines(), 1):
                pans = find_card_numbers(line)
                if pans and cfg.pg_baseline is not None and _line_key(line) in cfg.pg_baseline:
                    before += 1
                    continue
                for pan in pans:
                    report.card_numbers.append(f"pg_dump line {line_no}: {pan} in {line[:40]!r}...")
            if before:
                report.notes.append(f"{before} Postgres row(s) held card numbers before this window "
                                    "(an earlier run's leak, not counted here)")


def _line_key(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def pg_card_lines(dsn: str) -> set[str]:
    """Keys of the ``pg_dump`` lines holding card numbers now (a window's baseline)."""
    dump = pg_dump(dsn) or b""
    return {_line_key(line) for line in dump.splitlines() if find_card_numbers(line)}


def pg_dump(dsn: str) -> bytes | None:
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), reverse=True) or ["pg_dump"]
    try:
        r = subprocess.run([binaries[0], "--data-only", "--no-owner", f"--dbname={dsn}"], capture_output=True,
                           timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None
