"""The `paystream` command without a stack: every command's --help, argument validation, and
what each command does where its Kafka, registry or Postgres side can be replaced by a fake.
Against the real stack the commands are exercised by the integration tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import pytest
from click.testing import CliRunner

from paystream import cli
from paystream.config import get_settings


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


COMMANDS = list(_commands(cli.main))
LEAVES = [p for p, c in COMMANDS if not isinstance(c, click.Group)]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No local stack's addresses, no PAYSTREAM_* from the caller, fresh settings."""
    import os

    for key in list(os.environ):
        if key.startswith("PAYSTREAM_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PAYSTREAM_STACK_DIR", str(tmp_path / "no-stack"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(cli.main, list(args), env=env or None, catch_exceptions=False)


def test_the_command_tree_is_complete() -> None:
    """The commands README.md lists (so a removed one is noticed here, not by a user)."""
    expected = {("stack", "up"), ("stack", "down"), ("stack", "status"), ("stack", "compose"), ("worker",), ("sink",),
                ("gateway-executor",),
                ("config",), ("customers", "sink"), ("customers", "erase"), ("keys", "reencrypt"), ("audit", "sink"),
                ("audit", "verify"),
                ("db", "migrate"), ("db", "rebuild"), ("schemas", "register"), ("schemas", "check"),
                ("schemas", "docs"), ("send", "create"), ("send", "capture"), ("send", "cancel"), ("send", "refund"),
                ("send", "release"), ("send", "reject"), ("fraud", "block"), ("fraud", "unblock"), ("status",),
                ("tail",), ("demo",)}
    assert set(LEAVES) == expected


def test_a_standalone_gateway_executor_refuses_the_in_process_simulated_gateway() -> None:
    result = CliRunner().invoke(cli.main, ["gateway-executor"], env={"PAYSTREAM_SIMGW_IN_PROCESS": "true"})
    assert result.exit_code == 1 and "in-process simulated gateway lives in the worker" in result.output


def test_keys_reencrypt_needs_keys_and_a_positive_batch_size(tmp_path: Path) -> None:
    """Refused before touching Postgres or Kafka: no key configured, an unreadable key, a bad batch size."""
    none = run("keys", "reencrypt")
    assert none.exit_code == 1 and "no encryption keys configured" in none.output
    bad = tmp_path / "keys"
    bad.write_text("k1:not-base64!\n")
    get_settings.cache_clear()  # the settings are read once per process
    broken = run("keys", "reencrypt", PAYSTREAM_ENCRYPTION_KEYS_FILE=str(bad))
    assert broken.exit_code == 1 and "encryption keys: key 'k1': not base64" in broken.output
    assert "not-base64" not in broken.output.replace("key 'k1': not base64", "")
    get_settings.cache_clear()
    zero = run("keys", "reencrypt", "--batch-size", "0", PAYSTREAM_ENCRYPTION_KEYS="k1:" + "A" * 43 + "=")
    assert zero.exit_code == 2 and "--batch-size must be at least 1" in zero.output


def test_top_level_help_lists_every_command() -> None:
    out = run("--help")
    assert out.exit_code == 0
    for name in cli.main.commands:
        assert f"  {name} " in out.output or f"  {name}\n" in out.output, name


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_help(path: tuple[str, ...]) -> None:
    out = run(*path, "--help")
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"Usage: main {' '.join(path)}")
    command = dict(COMMANDS)[path]
    assert command.help and command.help.split("\n")[0][:40] in " ".join(out.output.split())
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in out.output for opt in param.opts), (path, param.opts)


# ------------------------------------------------------------------ config


def test_config_prints_every_setting_and_hides_secrets() -> None:
    out = run("config", "--json", PAYSTREAM_POSTGRES_DSN="postgresql://ps:hunter2@db:5432/paystream",
              PAYSTREAM_STRIPE_API_KEY="sk_live_abc", PAYSTREAM_API_KEYS="orders:" + "a" * 64, PAYSTREAM_PARTITIONS="7")
    assert out.exit_code == 0
    values = json.loads(out.output)
    from paystream.config import Settings
    from paystream.web.settings import WebSettings

    assert set(values) == {f"PAYSTREAM_{n.upper()}" for n in (*Settings.model_fields, *WebSettings.model_fields)}
    assert values["PAYSTREAM_PARTITIONS"] == 7
    assert values["PAYSTREAM_POSTGRES_DSN"] == "postgresql://ps:********@db:5432/paystream"
    assert values["PAYSTREAM_STRIPE_API_KEY"] == values["PAYSTREAM_API_KEYS"] == "********"
    assert "hunter2" not in out.output and "sk_live_abc" not in out.output and "a" * 64 not in out.output


def test_config_table() -> None:
    out = run("config", PAYSTREAM_APP_ID="ps-test")
    assert out.exit_code == 0
    split = (line.split(None, 1) for line in out.output.splitlines())
    rows = {parts[0]: parts[1] if len(parts) > 1 else "" for parts in split}
    assert rows["PAYSTREAM_APP_ID"].strip() == "ps-test"
    assert rows["PAYSTREAM_SINK_METRICS_HOST"].strip() == "127.0.0.1"


# ------------------------------------------------------------------ send


class FakeProducer:
    sent: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def send(self, cmd: dict[str, Any]) -> None:
        FakeProducer.sent.append(cmd)

    def flush(self, timeout: float = 30) -> None:
        pass


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import paystream.client

    FakeProducer.sent = []
    monkeypatch.setattr(paystream.client, "CommandProducer", FakeProducer)
    return FakeProducer.sent


@pytest.mark.parametrize(("args", "message"), [
    (["send", "create"], "Missing option '--amount'"),
    (["send", "create", "--amount", "12.50"], "'12.50' is not a valid integer"),
    (["send", "capture"], "Missing argument 'PAYMENT_ID'"),
    (["send", "refund", "pay_1", "--amount", "x"], "'x' is not a valid integer"),
    (["send", "create", "--amount", "1", "--bogus"], "No such option: --bogus"),
    (["fraud", "block"], "give exactly one of --customer, --fingerprint, --email"),
    (["fraud", "unblock", "--customer", "c1", "--email", "a@b.c"], "give exactly one of"),
    (["status"], "Missing argument 'PAYMENT_ID'"),
    (["customers", "erase"], "Missing argument 'CUSTOMER_ID'"),
])
def test_usage_errors_exit_2_with_a_clear_message(args: list[str], message: str, sent: list[dict[str, Any]]
                                                  ) -> None:
    out = CliRunner().invoke(cli.main, args)
    assert out.exit_code == 2, out.output
    assert message in out.output
    assert sent == []


def test_send_create(sent: list[dict[str, Any]]) -> None:
    out = run("send", "create", "--amount", "1999", "--currency", "EUR", "--token", "tok_3ds", "--manual",
              "--payment-id", "pay_cli_1")
    assert out.exit_code == 0
    (cmd,) = sent
    assert json.loads(out.output) == {"payment_id": "pay_cli_1", "command_id": cmd["command_id"]}
    body = cmd["command"]
    assert body["-type"].endswith("CreatePayment") and cmd["payment_id"] == "pay_cli_1"
    assert (body["amount"], body["currency"], body["payment_method_token"], body["capture_method"]) == (
        1999, "EUR", "tok_3ds", "manual")


def test_send_create_defaults_to_a_new_payment_id_and_automatic_capture(sent: list[dict[str, Any]]) -> None:
    assert run("send", "create", "--amount", "5").exit_code == 0
    assert run("send", "create", "--amount", "5").exit_code == 0
    first, second = sent
    assert first["payment_id"].startswith("pay_") and first["payment_id"] != second["payment_id"]
    assert first["command"]["capture_method"] == "automatic" and first["command"]["currency"] == "USD"


@pytest.mark.parametrize(("args", "kind", "fields"), [
    (["capture", "pay_1", "--amount", "500"], "CapturePayment", {"amount": 500}),
    (["capture", "pay_1"], "CapturePayment", {"amount": None}),
    (["cancel", "pay_1"], "CancelPayment", {"reason": "requested_by_customer"}),
    (["refund", "pay_1", "--amount", "7"], "RefundPayment", {"amount": 7}),
    (["release", "pay_1", "--by", "ana", "--note", "ok"], "ReleasePayment", {"released_by": "ana", "note": "ok"}),
    (["reject", "pay_1", "--reason", "stolen"], "RejectPayment", {"rejected_by": "reviewer-7", "reason": "stolen"}),
])
def test_send_commands(args: list[str], kind: str, fields: dict[str, Any], sent: list[dict[str, Any]]) -> None:
    out = run("send", *args, PAYSTREAM_ADMIN_ACTOR="reviewer-7")
    assert out.exit_code == 0
    (cmd,) = sent
    assert cmd["payment_id"] == "pay_1" and cmd["command"]["-type"].endswith(kind)
    assert {k: cmd["command"][k] for k in fields} == fields
    assert json.loads(out.output)["command_id"] == cmd["command_id"]
    if kind == "RefundPayment":
        assert cmd["command"]["refund_id"].startswith("re_")


# ------------------------------------------------------------------ fraud


def test_fraud_block_writes_one_admin_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import confluent_kafka

    produced: list[tuple[str, bytes, bytes]] = []

    class Producer:
        def __init__(self, config: dict[str, Any]) -> None:
            assert config["partitioner"] == "murmur2_random"

        def produce(self, topic: str, key: bytes, value: bytes) -> None:
            produced.append((topic, key, value))

        def flush(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(confluent_kafka, "Producer", Producer)
    out = run("fraud", "block", "--email", "Eve@Example.com", "--reason", "chargebacks", "--actor", "ops",
              PAYSTREAM_APP_ID="psx")
    assert out.exit_code == 0, out.output
    ((topic, key, value),) = produced
    assert topic == "psx-fraud-admin"
    printed = json.loads(out.output)
    assert printed["op"] == "add" and printed["key"] == key.decode() and key.startswith(b"email:")
    body = json.loads(value)
    assert body["actor"] == "ops" and body["reason"] == "chargebacks"
    assert b"Eve@Example.com" not in value and b"eve@example.com" not in value  # sent hashed


# ------------------------------------------------------------------ schemas, stack, db, audit, status


def test_schemas_docs_check_fails_when_the_doc_is_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import streams.avro_docs

    stale = tmp_path / "events.md"
    stale.write_text("# old\n")
    monkeypatch.setattr(streams.avro_docs, "DOC", stale)
    out = CliRunner().invoke(cli.main, ["schemas", "docs", "--check"])
    assert out.exit_code == 1 and "docs/events.md is out of date" in out.output
    stale.unlink()
    assert CliRunner().invoke(cli.main, ["schemas", "docs", "--check"]).exit_code == 1  # missing counts as stale


def test_stack_status_exits_1_when_a_service_is_not_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    from paystream import stack

    names = list(stack.SERVICES)
    monkeypatch.setattr(stack, "status", lambda: {n: "healthy" for n in names})
    out = run("stack", "status")
    assert out.exit_code == 0 and len(out.output.splitlines()) == len(names)
    monkeypatch.setattr(stack, "status", lambda: {n: "down" if n == names[-1] else "healthy" for n in names})
    out = CliRunner().invoke(cli.main, ["stack", "status"])
    assert out.exit_code == 1
    assert out.output.splitlines()[-1].split()[:2] == [names[-1], "down"]


def test_stack_up_turns_a_stack_error_into_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from paystream import stack

    def up(services: list[str] | None) -> None:
        raise stack.StackError("kafka did not become healthy in 60s (see .stack/logs/kafka.log)")

    monkeypatch.setattr(stack, "up", up)
    out = CliRunner().invoke(cli.main, ["stack", "up", "kafka"])
    assert out.exit_code == 1
    assert "Error: kafka did not become healthy in 60s" in out.output and "Traceback" not in out.output


def test_db_rebuild_reports_why_it_cannot_start(monkeypatch: pytest.MonkeyPatch) -> None:
    import sinks.rebuild

    seen: dict[str, Any] = {}

    def rebuild(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise sinks.rebuild.RebuildError("database rebuilt_db is not empty: use --force")

    monkeypatch.setattr(sinks.rebuild, "rebuild", rebuild)
    out = CliRunner().invoke(cli.main, ["db", "rebuild", "--database", "rebuilt_db", "--only", "events, audit"],
                             env={"PAYSTREAM_POSTGRES_DSN": "postgresql://postgres@db:5432/paystream"})
    assert out.exit_code == 1 and "Error: database rebuilt_db is not empty" in out.output
    assert seen["sources"] == ["events", "audit"] and "dbname=rebuilt_db" in seen["dsn"]
    assert seen["force"] is False and seen["batch_size"] == 2000


def test_audit_verify_names_the_first_bad_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import sinks.audit
    from paystream.security.audit import ChainBreak

    report = sinks.audit.VerifyReport(rows=41, head_seq=57, head_hash="ab" * 32,
                                      broken=ChainBreak(seq=42, audit_id="aud_42", problem="edited"))
    monkeypatch.setattr(sinks.audit, "verify", lambda dsn: report)
    out = CliRunner().invoke(cli.main, ["audit", "verify", "--no-record"])
    assert out.exit_code == 1
    assert "audit_log BROKEN at row #42 (edited; audit_id aud_42); 41 rows before it check out" in out.stderr
    intact = sinks.audit.VerifyReport(rows=57, head_seq=57, head_hash="cd" * 32, broken=None)
    monkeypatch.setattr(sinks.audit, "verify", lambda dsn: intact)
    out = CliRunner().invoke(cli.main, ["audit", "verify", "--no-record"])
    assert out.exit_code == 0 and out.output.startswith("audit_log intact: 57 rows, head #57 cdcdcd")


def test_status_of_an_unknown_payment(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    class Conn:
        def __enter__(self) -> Conn:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def execute(self, sql: str, params: tuple[str, ...]) -> Any:
            assert params == ("pay_missing",)
            return type("Cursor", (), {"fetchone": lambda self: None})()

    monkeypatch.setattr(psycopg, "connect", lambda dsn: Conn())
    out = CliRunner().invoke(cli.main, ["status", "pay_missing"])
    assert out.exit_code == 1 and "no payment pay_missing in Postgres (yet)" in out.output


# ------------------------------------------------------------------ tail


def test_tail_lines_are_readable() -> None:
    """`paystream tail`: amounts in major units with their currency, captured and refunded only
    when there are any; an event without totals (a rejection) still gets its line."""
    event = {"payment_id": "pay_t1", "sequence": 3, "occurred_at": 1_700_000_000_000, "status": "partially_refunded",
             "event": ("io.paystream.events.RefundProcessed", {}),
             # as EventReader decodes it: the union's record name and its fields
             "totals": ("io.paystream.events.PaymentTotals",
                        {"currency": "KWD", "amount": 12345, "authorized": 12345, "captured": 12345, "refunded": 5})}
    line = cli.event_line(event)
    assert line.startswith("22:13:20 pay_t1 ")
    assert "#3 " in line and "RefundProcessed" in line and "partially_refunded" in line
    assert line.endswith("12.345 KWD captured 12.345 KWD refunded 0.005 KWD")
    created = {**event, "sequence": 1, "status": "created", "event": ("io.paystream.events.PaymentCreated", {}),
               "totals": {"currency": "JPY", "amount": 500, "authorized": 0, "captured": 0, "refunded": 0}}
    assert cli.event_line(created).endswith("created          500 JPY")
    rejected = {**event, "status": None, "totals": None, "event": ("io.paystream.events.CommandRejected", {})}
    assert cli.event_line(rejected).endswith("CommandRejected        -")
