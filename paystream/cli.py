"""The `paystream` command: the local stack, the worker and the sink, schemas, migrations,
sending commands and looking at what happened. `paystream COMMAND --help` explains each."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import click

from paystream.config import get_settings


def _stop_on_signals() -> Callable[[], bool]:
    """SIGTERM/SIGINT ask a long-running loop (a sink, a rebuild) to stop at its next check."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop.is_set


@click.group(help=__doc__)
def main() -> None:
    # On a developer machine the local stack's addresses are the defaults; anything set in
    # the environment wins.
    from paystream import stack as st

    if st.stack_dir().exists():
        for key, value in st.env_for_clients().items():
            os.environ.setdefault(key, value)


# ------------------------------------------------------------------ settings


@main.command("config", help="Print the settings this process would run with (PAYSTREAM_* variables, defaults, "
                             "the local stack's addresses); secrets are shown as ********. docs/configuration.md "
                             "explains each.")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, variable → value")
def config_show(as_json: bool) -> None:
    from urllib.parse import urlsplit, urlunsplit

    from pydantic import SecretStr

    from paystream.web.settings import WebSettings

    def shown(value: object) -> object:
        if isinstance(value, SecretStr):
            return "********" if value.get_secret_value() else ""
        if isinstance(value, str) and "://" in value:  # a DSN or URL with a password: hide the password
            parts = urlsplit(value)
            if parts.password:
                netloc = f"{parts.username or ''}:********@{parts.hostname or ''}"
                netloc += f":{parts.port}" if parts.port else ""
                return urlunsplit(parts._replace(netloc=netloc))
        if isinstance(value, str) and "password=" in value:  # a key=value conninfo (TLS settings merged in)
            return re.sub(r"password=('(?:[^'\\]|\\.)*'|\S+)", "password=********", value)
        return value

    values: dict[str, object] = {}
    for model in (get_settings(), WebSettings()):
        prefix = model.model_config.get("env_prefix", "")
        for name in type(model).model_fields:
            values[f"{prefix}{name}".upper()] = shown(getattr(model, name))
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    width = max(map(len, values))
    for key, value in values.items():
        click.echo(f"{key:<{width}}  {'' if value is None else value}")


# ------------------------------------------------------------------ stack


@main.group(help="Install, start, stop and inspect the local stack (Kafka, registry, Postgres, stripe-mock, simgw).")
def stack() -> None:
    pass


@stack.command("up", help="Install what is missing and start every service (a healthy one is left alone).")
@click.argument("services", nargs=-1)
def stack_up(services: tuple[str, ...]) -> None:
    from paystream import stack as st

    try:
        st.up(list(services) or None)
    except st.StackError as exc:
        raise click.ClickException(str(exc)) from exc
    _setup()


@stack.command("down", help="Stop the services this stack started (by pid); data stays under .stack/.")
@click.argument("services", nargs=-1)
def stack_down(services: tuple[str, ...]) -> None:
    from paystream import stack as st

    st.down(list(services) or None)


@stack.command("status", help="Show each service: healthy, unhealthy or down.")
def stack_status() -> None:
    from paystream import stack as st

    bad = False
    for name, state in st.status().items():
        click.echo(f"{name:<12} {state:<10} {st.SERVICES[name].where}")
        bad |= state != "healthy"
    sys.exit(1 if bad else 0)


@stack.command("compose", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
               help="Run Docker Compose v2 (built from its Go module into the stack's bin/ on first use, which "
                    "takes minutes) with these arguments, e.g. `paystream stack compose config --quiet` validates "
                    "docker-compose.yml without a Docker engine. Or use `DOCKER_CONFIG=<stack>/docker docker compose`.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def stack_compose(args: tuple[str, ...]) -> None:
    from paystream import stack as st

    try:
        binary = st.install_compose()
    except (st.StackError, subprocess.CalledProcessError) as exc:
        raise click.ClickException(f"could not build docker compose: {exc}") from exc
    sys.exit(subprocess.run([str(binary), *args]).returncode)


def _setup() -> None:
    """Topics, schemas and migrations: idempotent, run after the stack is up."""
    from sinks.migrate import migrate
    from streams import topics
    from streams.avro import register_schemas, registry_client

    s = get_settings()
    created = topics.ensure_topics(s.kafka_connection(), s.app_id, s.partitions, settings=s.topic_settings())
    ids = register_schemas(registry_client(s.registry_conf()))
    applied = migrate(s.postgres_dsn)
    click.echo(f"[setup] topics created: {len(created)}; schemas: {ids}; migrations applied: {len(applied)}")


# ------------------------------------------------------------------ processes


@main.command(help="Run a worker (faust): the payment and gateway agents, the reconciler, the web edge.")
@click.option("--loglevel", default="info", show_default=True)
def worker(loglevel: str) -> None:
    from paystream.logs import configure
    from paystream.worker import run_worker

    configure()
    run_worker(get_settings(), loglevel)


@main.command("gateway-executor",
              help="Run a gateway executor on its own: it consumes the gateway-calls topic (the calls the payments "
                   "agent hands over: slow gateways, reconciliation) and replies through the gateway-replies "
                   "topic. For workers started with PAYSTREAM_GATEWAY_EXECUTOR_IN_WORKER=false; any number of "
                   "them share the calls' partitions.")
@click.option("--metrics-port", type=int, default=None, help="serve the gateway metrics on this port (/metrics)")
def gateway_executor(metrics_port: int | None) -> None:
    from paystream.logs import configure
    from paystream.worker import ExecutorConfigError, run_gateway_executor

    configure()
    try:
        run_gateway_executor(get_settings(), metrics_port)
    except ExecutorConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command(help="Run the Postgres sink: payment.events and gateway replies → Postgres, in its own consumer group.")
def sink() -> None:
    from paystream.logs import configure
    from sinks.postgres import EventSink, SinkStatus
    from sinks.server import start_server
    from streams import topics
    from streams.avro import codecs, registry_client

    configure()
    s = get_settings()
    stopping = _stop_on_signals()
    status = SinkStatus()
    server = start_server(status, s.sink_metrics_host, s.sink_metrics_port)
    try:
        codec = codecs(registry_client(s.registry_conf()))[topics.EVENTS]
        EventSink(s.kafka_connection(), s.postgres_dsn, codec, s.sink_group, s.sink_batch_size, s.sink_batch_wait_s,
                  replies_topic=topics.replies_history(s.app_id), status=status,
                  batch_linger_s=s.sink_batch_linger_s).run(stopping)
    finally:
        server.shutdown()


# ------------------------------------------------------------------ data


@main.group(help="Database commands.")
def db() -> None:
    pass


@db.command("migrate", help="Apply pending numbered migrations from sinks/migrations (advisory-locked).")
def db_migrate() -> None:
    from sinks.migrate import migrate

    applied = migrate(get_settings().postgres_dsn)
    click.echo(f"applied {len(applied)} migration(s): {[m.name for m in applied]}")


@db.command("rebuild", help="Rebuild a sink database from Kafka: create it if missing (it must be empty), apply "
                            "the migrations, replay payment.events, the gateway replies, the vault and the audit "
                            "topics from the beginning up to their end offsets at start, through the sinks' own "
                            "write path (docs/operations.md).")
@click.option("--dsn", default=None, help="Postgres DSN (default: PAYSTREAM_POSTGRES_DSN)")
@click.option("--database", default=None, help="database name, replacing the DSN's (created when missing)")
@click.option("--only", "only", default="events,methods,audit", show_default=True,
              help="sources to replay: events (payments, payment_events, refunds, payment_transactions), "
                   "methods (payment_methods, customer_gateway_tokens), audit (audit_log)")
@click.option("--force", is_flag=True, help="replay into a database that already holds rows (idempotent writes)")
@click.option("--allow-truncated", is_flag=True,
              help="go on when retention already deleted the beginning of a topic (the result misses it)")
@click.option("--batch-size", default=2000, show_default=True, help="messages per Postgres transaction")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def db_rebuild(dsn: str | None, database: str | None, only: str, force: bool, allow_truncated: bool,
               batch_size: int, as_json: bool) -> None:
    from sinks.rebuild import RebuildError, describe_end_offsets, rebuild, target_dsn

    s = get_settings()
    target = target_dsn(dsn or s.postgres_dsn, database)
    sources = [part.strip() for part in only.split(",") if part.strip()]
    stopping = _stop_on_signals()
    try:
        report = rebuild(bootstrap=s.kafka_connection(), registry_url=s.registry_conf(), dsn=target,
                         app_id=s.app_id, sources=sources, force=force, allow_truncated=allow_truncated,
                         batch_size=batch_size, stop=stopping)
    except RebuildError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"database": report.database, "created": report.created,
                               "migrations": report.migrations, "messages": report.messages,
                               "events": report.events, "replies": report.replies, "skipped": report.skipped,
                               "seconds": round(report.seconds, 3), "counts": report.counts,
                               "sources": {p.source: {"messages": p.messages, "seconds": round(p.seconds, 3)}
                                           for p in report.sources},
                               "end_offsets": describe_end_offsets(report)}))
    else:
        click.echo(report.summary())


@main.group(help="Schema registry commands.")
def schemas() -> None:
    pass


@schemas.command("register", help="Register avro/*.avsc under <topic>-value with BACKWARD_TRANSITIVE.")
def schemas_register() -> None:
    from streams.avro import register_schemas, registry_client

    click.echo(json.dumps(register_schemas(registry_client(get_settings().registry_conf())), indent=2))


@schemas.command("check", help="Fail when an .avsc is incompatible with what the registry holds.")
def schemas_check() -> None:
    from streams.avro import check_compatibility, registry_client

    result = check_compatibility(registry_client(get_settings().registry_conf()))
    for subject, ok in result.items():
        click.echo(f"{subject:<28} {'compatible' if ok else 'INCOMPATIBLE'}")
    if not all(result.values()):
        sys.exit(1)


@schemas.command("docs", help="Print docs/events.md (every record, field, type and doc) from avro/*.avsc.")
@click.option("--check", is_flag=True, help="exit 1 when docs/events.md differs from what it would print")
def schemas_docs(check: bool) -> None:
    from streams.avro_docs import DOC, render

    text = render()
    if check:
        if not DOC.exists() or DOC.read_text() != text:
            raise click.ClickException("docs/events.md is out of date: paystream schemas docs > docs/events.md")
        return
    click.echo(text, nl=False)


@main.group(help="Send commands to payment.requests (as the Order Service would).")
def send() -> None:
    pass


@send.command("create", help="Create a payment. Tokens: tok_visa (approve), tok_decline_insufficient_funds, ...")
@click.option("--amount", type=int, required=True, help="minor units, e.g. 1999 for 19.99 USD")
@click.option("--currency", default="USD", show_default=True)
@click.option("--token", default="tok_visa", show_default=True)
@click.option("--manual", is_flag=True, help="authorize only; capture later with `send capture`")
@click.option("--payment-id", default=None)
def send_create(amount: int, currency: str, token: str, manual: bool, payment_id: str | None) -> None:
    from paystream.client import CommandProducer, create_payment

    pid = payment_id or f"pay_{uuid.uuid4().hex[:16]}"
    p = CommandProducer(get_settings())
    cmd = create_payment(pid, amount=amount, currency=currency, token=token,
                         capture_method="manual" if manual else "automatic")
    p.send(cmd)
    p.flush()
    click.echo(json.dumps({"payment_id": pid, "command_id": cmd["command_id"]}))


def _simple(kind: str, payment_id: str, body: dict[str, object]) -> None:
    from paystream.client import CommandProducer, command

    p = CommandProducer(get_settings())
    cmd = command(payment_id, kind, body)
    p.send(cmd)
    p.flush()
    click.echo(json.dumps({"payment_id": payment_id, "command_id": cmd["command_id"]}))


@send.command("capture", help="Capture an authorized payment (all, or --amount for a partial capture).")
@click.argument("payment_id")
@click.option("--amount", type=int, default=None)
def send_capture(payment_id: str, amount: int | None) -> None:
    _simple("CapturePayment", payment_id, {"amount": amount, "currency": None})


@send.command("cancel", help="Cancel (void) a payment before capture.")
@click.argument("payment_id")
def send_cancel(payment_id: str) -> None:
    _simple("CancelPayment", payment_id, {"reason": "requested_by_customer"})


@send.command("refund", help="Refund a payment (all that is left, or --amount).")
@click.argument("payment_id")
@click.option("--amount", type=int, default=None)
def send_refund(payment_id: str, amount: int | None) -> None:
    _simple("RefundPayment", payment_id,
            {"refund_id": f"re_{uuid.uuid4().hex[:12]}", "amount": amount, "currency": None, "reason": None})


@send.command("release", help="Fraud review: release a payment held for review (it goes on to authorization).")
@click.argument("payment_id")
@click.option("--by", "by", default=None, help="the reviewer (default: $PAYSTREAM_ADMIN_ACTOR or the OS user)")
@click.option("--note", default=None)
def send_release(payment_id: str, by: str | None, note: str | None) -> None:
    _simple("ReleasePayment", payment_id, {"released_by": _admin_actor(by), "note": note})


@send.command("reject", help="Fraud review: reject a payment held for review (fails with fraud_suspected).")
@click.argument("payment_id")
@click.option("--by", "by", default=None, help="the reviewer (default: $PAYSTREAM_ADMIN_ACTOR or the OS user)")
@click.option("--reason", default=None)
def send_reject(payment_id: str, by: str | None, reason: str | None) -> None:
    _simple("RejectPayment", payment_id, {"rejected_by": _admin_actor(by), "reason": reason})


@main.group(help="Fraud checks: the blocklist (admin commands on <app_id>-fraud-admin, docs/fraud.md).")
def fraud() -> None:
    pass


def _blocklist(op: str, customer: str | None, fingerprint: str | None, email: str | None, actor: str | None,
               reason: str | None) -> None:
    from confluent_kafka import Producer

    from agents.fraud import admin_message
    from paystream.core.fraud import BlocklistCommandError
    from streams import topics

    given = [(k, v) for k, v in (("customer", customer), ("fingerprint", fingerprint), ("email", email)) if v]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --customer, --fingerprint, --email")
    kind, value = given[0]
    s = get_settings()
    command_id = f"adm-{uuid.uuid4().hex[:16]}"
    try:
        msg = admin_message({"command_id": command_id, "op": op, "kind": kind, "value": value,
                             "actor": _admin_actor(actor), "issued_at": time.time_ns() // 1_000_000,
                             "reason": reason})
    except BlocklistCommandError as exc:
        raise click.UsageError(str(exc)) from exc
    # murmur2 like the workers' producers, so the commands of one entry stay in one partition.
    producer = Producer(s.kafka_connection().librdkafka({"enable.idempotence": True,
                                                         "partitioner": "murmur2_random"}))
    producer.produce(topics.fraud_admin(s.app_id), key=msg.key, value=msg.value)
    if producer.flush(30) != 0:
        raise click.ClickException("the admin command could not be written to Kafka")
    click.echo(json.dumps({"command_id": command_id, "op": op, "key": msg.key.decode()}))


_BLOCK_OPTIONS = [
    click.option("--customer", default=None, help="a customer id"),
    click.option("--fingerprint", default=None, help="a card fingerprint"),
    click.option("--email", default=None, help="an e-mail address (sent hashed, SHA-256)"),
    click.option("--actor", default=None, help="who asks (default: $PAYSTREAM_ADMIN_ACTOR or the OS user)"),
    click.option("--reason", default=None),
]


def _with_block_options(f: Any) -> Any:
    for option in reversed(_BLOCK_OPTIONS):
        f = option(f)
    return f


@fraud.command("block", help="Put a customer, card fingerprint or e-mail on the blocklist.")
@_with_block_options
def fraud_block(customer: str | None, fingerprint: str | None, email: str | None, actor: str | None,
                reason: str | None) -> None:
    _blocklist("add", customer, fingerprint, email, actor, reason)


@fraud.command("unblock", help="Take a customer, card fingerprint or e-mail off the blocklist.")
@_with_block_options
def fraud_unblock(customer: str | None, fingerprint: str | None, email: str | None, actor: str | None,
                  reason: str | None) -> None:
    _blocklist("remove", customer, fingerprint, email, actor, reason)


@main.command(help="Show a payment's current row and its events, from Postgres.")
@click.argument("payment_id")
def status(payment_id: str) -> None:
    import psycopg

    with psycopg.connect(get_settings().postgres_dsn) as conn:
        row = conn.execute("SELECT status, currency, amount, authorized, captured, refunded, last_sequence "
                           "FROM payments WHERE payment_id = %s", (payment_id,)).fetchone()
        if row is None:
            raise click.ClickException(f"no payment {payment_id} in Postgres (yet)")
        click.echo(f"{payment_id}: {row[0]}  amount={row[2]} {row[1]} authorized={row[3]} captured={row[4]} "
                   f"refunded={row[5]} (sequence {row[6]})")
        for seq, etype, cause in conn.execute(
            "SELECT sequence, event_type, causation_command_id FROM payment_events WHERE payment_id = %s "
            "ORDER BY sequence", (payment_id,)):
            click.echo(f"  {seq:>3}  {etype:<24} caused by {cause}")


def event_line(value: dict[str, Any]) -> str:
    """One event of payment.events as a line a person reads: its time (UTC), the payment, its
    sequence number, the event, the payment's status after it, and the amounts in major units
    (captured and refunded only when there are any)."""
    from paystream.client import event_type
    from paystream.core.money import Money, format_money

    def money(amount: object, currency: str) -> str:
        try:
            return format_money(Money(int(amount), currency))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return f"{amount} {currency}"

    at = time.strftime("%H:%M:%S", time.gmtime(int(value.get("occurred_at") or 0) / 1000))
    status = value.get("status") or "-"
    line = f"{at} {value['payment_id']:<24} #{value['sequence']:<3} {event_type(value):<22} {status:<16}"
    totals = value.get("totals") or {}
    if isinstance(totals, (tuple, list)):  # the Avro union as decoded: (record name, fields)
        totals = totals[1]
    if totals:
        currency = str(totals.get("currency", ""))
        line += f" {money(totals.get('amount'), currency)}"
        for part in ("captured", "refunded"):
            if totals.get(part):
                line += f" {part} {money(totals[part], currency)}"
    return line.rstrip()


@main.command(help="Follow payment.events live (read_committed), one readable line per event: time (UTC), payment, "
                   "sequence, event, status after it, amounts. Starts at the newest event; Ctrl-C stops.")
@click.option("--from-beginning", is_flag=True, help="start at the oldest event the topic keeps instead of now")
def tail(from_beginning: bool) -> None:
    from paystream.client import EventReader

    reader = EventReader(get_settings(), from_end=not from_beginning)
    click.echo(f"following payment.events from {'the beginning' if from_beginning else 'now'} (Ctrl-C stops)",
               err=True)
    try:
        while True:
            for v in reader.poll(1.0):
                click.echo(event_line(v))
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()


# ------------------------------------------------------------------ audit and customers


def _run_json_sink(kind: str) -> None:
    import logging

    from paystream.logs import configure
    from sinks.audit import AuditSink
    from sinks.postgres import SinkStatus
    from sinks.server import start_server
    from sinks.vault import REGISTRY, JsonTopicSink, VaultSink
    from streams import topics

    configure()
    s = get_settings()
    stopping = _stop_on_signals()
    status = SinkStatus()
    sink: JsonTopicSink
    if kind == "audit":
        port = s.audit_sink_metrics_port
        sink = AuditSink(s.kafka_connection(), s.postgres_dsn, topics.audit(s.app_id), s.audit_sink_group,
                         status=status, batch_linger_s=s.sink_batch_linger_s)
    else:
        port = s.vault_sink_metrics_port
        sink = VaultSink(s.kafka_connection(), s.postgres_dsn, topics.vault(s.app_id), s.vault_sink_group,
                         status=status, batch_linger_s=s.sink_batch_linger_s)
    try:
        server = start_server(status, s.sink_metrics_host, port, registry=REGISTRY)
    except OSError as exc:  # a port taken on a developer machine must not stop the sink's work
        logging.getLogger("paystream.sink").warning("%s sink: no /metrics, /health, /ready on %s:%d (%s)", kind,
                                                    s.sink_metrics_host, port, exc)
        server = None
    try:
        sink.run(stopping)
    finally:
        if server is not None:
            server.shutdown()


def _admin_audit(action: str, resource: str, outcome: str, actor: str, detail: dict[str, object]) -> None:
    """An admin action's record on the audit topic (waits until Kafka has it)."""
    from confluent_kafka import Producer

    from paystream.security import audit as au
    from streams import topics

    s = get_settings()
    record = au.AuditRecord(audit_id=au.new_audit_id("admin"), occurred_at=time.time_ns() // 1_000_000,
                            actor=f"admin:{actor}", action=action, resource=resource, outcome=outcome,
                            origin=f"cli:{os.uname().nodename}", detail=detail)
    producer = Producer(s.kafka_connection().librdkafka({"enable.idempotence": True}))
    producer.produce(topics.audit(s.app_id), key=resource.encode(), value=au.encode_record(record))
    if producer.flush(30) != 0:
        raise click.ClickException("the audit record could not be written to Kafka")


def _admin_actor(actor: str | None) -> str:
    import getpass

    return actor or os.environ.get("PAYSTREAM_ADMIN_ACTOR") or getpass.getuser()


@main.group(help="The audit trail: its sink (audit topic → hash-chained audit_log) and verification.")
def audit() -> None:
    pass


@audit.command("sink", help="Run the audit sink: the audit topic → audit_log, one hash chain. /metrics, /health, "
                            "/ready on PAYSTREAM_AUDIT_SINK_METRICS_PORT (6071).")
def audit_sink() -> None:
    _run_json_sink("audit")


@audit.command("verify", help="Recompute the audit_log hash chain; exit 1 and name the first bad row.")
@click.option("--actor", default=None, help="who runs the check (default: the OS user)")
@click.option("--no-record", is_flag=True, help="do not add the check itself to the audit trail")
def audit_verify(actor: str | None, no_record: bool) -> None:
    from sinks.audit import verify

    report = verify(get_settings().postgres_dsn)
    if report.broken is None:
        click.echo(f"audit_log intact: {report.rows} rows, head #{report.head_seq} {report.head_hash[:16]}…")
    else:
        b = report.broken
        click.echo(f"audit_log BROKEN at row #{b.seq} ({b.problem}; audit_id {b.audit_id or '-'}); "
                   f"{report.rows} rows before it check out", err=True)
    if not no_record:
        _admin_audit("audit.verify", "audit_log", "success" if report.ok else "failure", _admin_actor(actor),
                     {"rows": report.rows, "head_seq": report.head_seq,
                      **({"broken_seq": report.broken.seq, "problem": report.broken.problem} if report.broken else {})})
    sys.exit(0 if report.ok else 1)


@main.group(help="Encryption keys of tokens at rest (docs/security.md 3.6/3.7).")
def keys() -> None:
    pass


@keys.command("reencrypt", help="After a key rotation: seal every token in customer_gateway_tokens that is not "
                                "under the current key again under it (same associated data), one transaction per "
                                "batch. Idempotent and restartable; rows it cannot open (unknown key id, not "
                                "decrypting) are left as they are and reported (exit 1). Audited (keys.reencrypt).")
@click.option("--dry-run", is_flag=True, help="only count the rows per key id; nothing is read or written")
@click.option("--batch-size", default=500, show_default=True, help="rows per Postgres transaction")
@click.option("--actor", default=None, help="who runs it (default: $PAYSTREAM_ADMIN_ACTOR or the OS user)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def keys_reencrypt(dry_run: bool, batch_size: int, actor: str | None, as_json: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agents.payments import load_keyring
    from paystream.security.crypto import CryptoError
    from sinks.reencrypt import key_counts_text, reencrypt_tokens

    s = get_settings()
    who = _admin_actor(actor)
    try:
        ring = load_keyring(s)
    except CryptoError as exc:
        raise click.ClickException(f"encryption keys: {exc}") from exc
    if ring is None:
        raise click.ClickException("no encryption keys configured (PAYSTREAM_ENCRYPTION_KEYS[_FILE])")
    if batch_size < 1:
        raise click.UsageError("--batch-size must be at least 1")
    stopping = _stop_on_signals()
    console = Console(stderr=True)
    with Progress(TextColumn("re-encrypting tokens"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=as_json, disable=dry_run) as bar:
        task = bar.add_task("tokens", total=None)
        report = reencrypt_tokens(s.postgres_dsn, ring, batch_size=batch_size, dry_run=dry_run,
                                  on_total=lambda n: bar.update(task, total=n),
                                  progress=lambda n: bar.advance(task, n), stop=stopping)
    detail: dict[str, object] = {"current_key_id": ring.current, "dry_run": dry_run, "rows_by_key": report.before,
                                 "reencrypted": report.reencrypted, "failed": len(report.failed),
                                 "pending": max(report.pending, 0), "stopped": report.stopped}
    _admin_audit("keys.reencrypt", "customer_gateway_tokens", "success" if dry_run or report.ok else "failure",
                 who, detail)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    elif dry_run:
        click.echo(f"rows per key id: {key_counts_text(report.before, ring.current)}; "
                   f"{sum(n for k, n in report.before.items() if k != ring.current)} to re-encrypt (dry run)")
    else:
        click.echo(f"re-encrypted {report.reencrypted} token(s) under {ring.current} in {report.batches} batch(es), "
                   f"{report.seconds:.1f}s; now {key_counts_text(report.after, ring.current)}")
        for f in report.failed:
            click.echo(f"  not re-encrypted: {f.method_id} (key {f.key_id}: {f.reason})", err=True)
        if report.pending > 0:
            click.echo(f"  {report.pending} row(s) still pending (written or locked meanwhile, or stopped): "
                       "run again", err=True)
    if not dry_run and not report.ok:
        sys.exit(1)


@main.group(help="Customers' saved payment methods: the vault sink, and erasure of a customer's data.")
def customers() -> None:
    pass


@customers.command("sink", help="Run the vault sink: the vault topic → payment_methods and customer_gateway_tokens. "
                                "/metrics, /health, /ready on PAYSTREAM_VAULT_SINK_METRICS_PORT (6070).")
def customers_sink() -> None:
    _run_json_sink("vault")


@customers.command("erase", help="Erase a customer's saved payment methods: tokens and card details are forgotten "
                                 "(tables, Postgres, gateway), financial records stay. Idempotent: run again to "
                                 "catch methods saved while it ran.")
@click.argument("customer_id")
@click.option("--actor", default=None, help="who asks (default: $PAYSTREAM_ADMIN_ACTOR or the OS user)")
@click.option("--reason", default="erasure_request", show_default=True)
@click.option("--wait", "wait_s", default=60.0, show_default=True, help="seconds to wait for Postgres to show it")
def customers_erase(customer_id: str, actor: str | None, reason: str, wait_s: float) -> None:
    import psycopg

    from paystream.client import CommandProducer, command

    s = get_settings()
    who = _admin_actor(actor)
    with psycopg.connect(s.postgres_dsn) as conn:
        methods = [r[0] for r in conn.execute(
            "SELECT method_id FROM payment_methods WHERE customer_id = %s AND status <> 'erased' ORDER BY method_id",
            (customer_id,))]
    _admin_audit("customer.erase.requested", f"customer:{customer_id}", "success", who,
                 {"methods": len(methods), "reason": reason})
    producer = CommandProducer(s)
    for method_id in methods:
        # Through the worker: the method's state (and its token) lives in its changelog-backed table.
        producer.send(command(method_id, "ErasePaymentMethod", {"customer_id": customer_id, "reason": reason},
                              command_id=f"erase-{method_id}", origin=f"admin:{who}"))
    producer.flush()
    deadline = time.monotonic() + wait_s
    left: list[str] = list(methods)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        with psycopg.connect(s.postgres_dsn) as conn:
            done = {r[0] for r in conn.execute(
                "SELECT m.method_id FROM payment_methods m WHERE m.method_id = ANY(%s) AND m.status = 'erased' "
                "AND NOT EXISTS (SELECT 1 FROM customer_gateway_tokens t WHERE t.method_id = m.method_id)",
                (left,))}
        left = [m for m in left if m not in done]
    outcome = "success" if not left else "pending"
    _admin_audit("customer.erase", f"customer:{customer_id}", outcome, who,
                 {"methods": len(methods), "erased": len(methods) - len(left), "pending": len(left)})
    click.echo(json.dumps({"customer_id": customer_id, "methods": len(methods), "erased": len(methods) - len(left),
                           "pending": left}))
    if left:
        sys.exit(1)


@main.command(help="Run the demo: worker and sink on the local stack, mixed payments, a summary.")
@click.option("--payments", "count", default=40, show_default=True)
def demo(count: int) -> None:
    from paystream.demo import run_demo

    sys.exit(run_demo(get_settings(), count))


if __name__ == "__main__":
    main()
