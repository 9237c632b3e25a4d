"""Commands: Avro round trip (fastavro, against the .avsc), validation codes, fingerprint."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from core_helpers import NOW, create_cmd
from hypothesis import given
from hypothesis import strategies as st

from paystream.core.commands import (
    COMMAND_TYPES,
    AddPaymentMethod,
    CancelPayment,
    CaptureMethod,
    CapturePayment,
    Command,
    CommandBody,
    CommandDecodeError,
    CreatePayment,
    ErasePaymentMethod,
    RefundPayment,
    RejectPayment,
    ReleasePayment,
    RemovePaymentMethod,
    _canonical_json,
    command_type,
    fingerprint,
    from_avro,
    to_avro,
    unpublishable_ids,
    validate,
)
from paystream.core.rejections import RejectionReason

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "avro" / "payment_command.avsc"
SCHEMA = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))

BODIES: list[CommandBody] = [
    CreatePayment(
        order_id="ord_1", customer_id="cus_1", amount=1234, currency="USD", payment_method_token="tok_visa",
        capture_method=CaptureMethod.MANUAL, gateway="stripe", metadata=(("cart", "c9"), ("channel", "web")),
        customer_ip="203.0.113.9", customer_email="a@example.com", shipping_country="DE",
    ),
    CreatePayment(order_id="ord_2", customer_id="cus_2", amount=1000, currency="JPY", saved_method_id="pm_1"),
    CapturePayment(),
    CapturePayment(amount=500, currency="USD"),
    CancelPayment(reason="customer_request"),
    RefundPayment(refund_id="r1", amount=100, currency="USD", reason="damaged"),
    RefundPayment(refund_id="r2"),
    AddPaymentMethod(
        customer_id="cus_1", gateway="stripe", gateway_token="pm_123", brand="visa", last4="4242", exp_month=12,
        exp_year=2030, fingerprint="fp_1",
    ),
    RemovePaymentMethod(customer_id="cus_1"),
    ErasePaymentMethod(customer_id="cus_1", reason="gdpr_request"),
    ReleasePayment(released_by="analyst-7", note="known customer"),
    ReleasePayment(released_by="analyst-7"),
    RejectPayment(rejected_by="analyst-7", reason="stolen card"),
]


def _command(body: CommandBody) -> Command:
    return Command(command_id="cmd_1", payment_id="pay_1", issued_at=NOW, origin="order-service", body=body)


def _decode(record: dict[str, object], *, names: bool) -> dict[str, Any]:
    """Write with fastavro against the .avsc, then read back."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, SCHEMA, record)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(buffer, SCHEMA, return_record_name=names)
    assert isinstance(decoded, dict)
    return decoded


def test_every_command_record_type_is_covered() -> None:
    assert {body.AVRO_NAME for body in BODIES} == set(COMMAND_TYPES)
    union = next(f for f in json.loads(SCHEMA_PATH.read_text())["fields"] if f["name"] == "command")["type"]
    assert {branch["name"] for branch in union} == set(COMMAND_TYPES)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.AVRO_NAME)
def test_dataclass_fields_mirror_the_avsc(body: CommandBody) -> None:
    union = next(f for f in json.loads(SCHEMA_PATH.read_text())["fields"] if f["name"] == "command")["type"]
    branch = next(b for b in union if b["name"] == body.AVRO_NAME)
    written: dict[str, Any] = to_avro(_command(body))
    assert list(written["command"]) == [f["name"] for f in branch["fields"]] + ["-type"]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.AVRO_NAME)
def test_round_trip_with_record_names(body: CommandBody) -> None:
    command = _command(body)
    decoded = _decode(to_avro(command), names=True)
    assert isinstance(decoded["command"], tuple)  # confluent's return_record_name=True shape
    assert from_avro(decoded) == command


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.AVRO_NAME)
def test_round_trip_without_record_names(body: CommandBody) -> None:
    command = _command(body)
    decoded = _decode(to_avro(command), names=False)
    assert from_avro(decoded) == command


def test_dash_type_dict_is_read() -> None:
    record: dict[str, Any] = to_avro(_command(CancelPayment()))
    assert record["command"]["-type"] == "io.paystream.commands.CancelPayment"
    assert from_avro(record) == _command(CancelPayment())


def test_short_record_names_are_accepted() -> None:
    record = {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": ("CancelPayment", {"reason": None})}
    assert from_avro(record).body == CancelPayment()


def test_missing_origin_defaults_to_unknown() -> None:
    record = {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": ("CancelPayment", {"reason": None})}
    assert from_avro(record).origin == "unknown"


@pytest.mark.parametrize(
    "record",
    [
        {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": ("Bogus", {})},
        {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": ("io.other.CancelPayment", {})},
        {"command_id": "c", "payment_id": "p", "issued_at": True, "command": ("CancelPayment", {})},
        {"command_id": 5, "payment_id": "p", "issued_at": 1, "command": ("CancelPayment", {})},
        {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": ("CapturePayment", {"amount": 1.5})},
        {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": ("RefundPayment", {})},
        {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": {"unknown_field": 1}},
        {"command_id": "c", "payment_id": "p", "issued_at": 1, "command": None},
        {"command_id": "c", "payment_id": "p", "issued_at": 1,
         "command": ("CreatePayment", {"order_id": "o", "customer_id": "c", "amount": 1, "currency": "USD",
                                        "capture_method": "sometimes"})},
    ],
)
def test_malformed_records_raise_command_decode_error(record: dict[str, object]) -> None:
    with pytest.raises(CommandDecodeError):
        from_avro(record)


def test_command_type_names_the_record() -> None:
    assert command_type(create_cmd()) == "CreatePayment"
    assert command_type(RefundPayment("r1")) == "RefundPayment"


# --- validate -------------------------------------------------------------------------------


def _create(**changes: Any) -> Command:
    base: dict[str, Any] = {"order_id": "o", "customer_id": "c", "amount": 100, "currency": "USD",
                            "payment_method_token": "tok_visa"}
    base.update(changes)
    return _command(CreatePayment(**base))


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (_create(amount=0), RejectionReason.INVALID_AMOUNT),
        (_create(amount=-1), RejectionReason.INVALID_AMOUNT),
        (_create(amount=10**15 + 1), RejectionReason.INVALID_AMOUNT),
        (_create(amount=True), RejectionReason.INVALID_AMOUNT),
        (_create(amount=1.0), RejectionReason.INVALID_AMOUNT),
        (_create(currency="XYZ"), RejectionReason.UNKNOWN_CURRENCY),
        (_create(currency="eur"), RejectionReason.UNKNOWN_CURRENCY),
        (_create(payment_method_token=None), RejectionReason.MISSING_PAYMENT_METHOD),
        (_create(saved_method_id="pm_1"), RejectionReason.AMBIGUOUS_PAYMENT_METHOD),
        (_create(payment_method_token=""), RejectionReason.INVALID_FIELD),
        (_create(order_id=""), RejectionReason.INVALID_FIELD),
        (_create(customer_id="  "), RejectionReason.INVALID_FIELD),
        (_create(gateway="moneybags"), RejectionReason.UNKNOWN_GATEWAY),
        (_create(metadata=(("note", "4242-4242-4242-4242"),)), RejectionReason.SENSITIVE_DATA_REJECTED),
        (_create(metadata=(("cvv", "123"),)), RejectionReason.SENSITIVE_DATA_REJECTED),
        (_command(CapturePayment(amount=0)), RejectionReason.INVALID_AMOUNT),
        (_command(CapturePayment(currency="ABC")), RejectionReason.UNKNOWN_CURRENCY),
        (_command(RefundPayment(refund_id="")), RejectionReason.INVALID_FIELD),
        (_command(RefundPayment(refund_id="r", amount=-5)), RejectionReason.INVALID_AMOUNT),
        (_command(CancelPayment(reason="card 4242424242424242")), RejectionReason.SENSITIVE_DATA_REJECTED),
        (_command(AddPaymentMethod("c", "stripe", "pm_1", last4="42a2")), RejectionReason.INVALID_FIELD),
        (_command(AddPaymentMethod("c", "stripe", "pm_1", exp_month=13)), RejectionReason.INVALID_FIELD),
        (_command(AddPaymentMethod("c", "stripe", "4242424242424242")), RejectionReason.SENSITIVE_DATA_REJECTED),
        (_command(AddPaymentMethod("c", "nope", "pm_1")), RejectionReason.UNKNOWN_GATEWAY),
        (_command(RemovePaymentMethod("")), RejectionReason.INVALID_FIELD),
        (Command("", "pay_1", NOW, "o", CancelPayment()), RejectionReason.INVALID_FIELD),
        (Command("c", "", NOW, "o", CancelPayment()), RejectionReason.INVALID_FIELD),
    ],
)
def test_validate_reason_codes(command: Command, reason: RejectionReason) -> None:
    rejection = validate(command)
    assert rejection is not None and rejection.reason is reason


def test_rejection_detail_never_echoes_card_data() -> None:
    rejection = validate(_create(metadata=(("note", "4242 4242 4242 4242"),)))
    assert rejection is not None and rejection.detail is not None
    assert "4242" not in rejection.detail and "metadata" in rejection.detail


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.AVRO_NAME)
def test_valid_commands_pass(body: CommandBody) -> None:
    assert validate(_command(body)) is None


def test_large_amount_is_not_mistaken_for_a_card_number() -> None:
    # 422_222_222_222_2 is a Luhn-valid 13-digit number, but an amount field is not free text.
    assert validate(_create(amount=4_222_222_222_222)) is None


# --- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_ignores_command_id_issued_at_and_origin() -> None:
    body = BODIES[0]
    first = Command("cmd_1", "pay_1", 1, "a", body)
    again = Command("cmd_2", "pay_1", 2, "b", body)
    assert fingerprint(first) == fingerprint(again)
    assert len(fingerprint(first)) == 64


@pytest.mark.parametrize(
    "other",
    [
        Command("cmd_1", "pay_2", 1, "a", CapturePayment(amount=5)),
        Command("cmd_1", "pay_1", 1, "a", CapturePayment(amount=6)),
        Command("cmd_1", "pay_1", 1, "a", RefundPayment(refund_id="x", amount=5)),
    ],
)
def test_fingerprint_changes_with_any_parameter(other: Command) -> None:
    assert fingerprint(Command("cmd_1", "pay_1", 1, "a", CapturePayment(amount=5))) != fingerprint(other)


def test_fingerprint_does_not_depend_on_metadata_order() -> None:
    a = _create(metadata=(("a", "1"), ("b", "2")))
    record: dict[str, Any] = to_avro(a)
    record["command"] = ("CreatePayment", {**record["command"], "metadata": {"b": "2", "a": "1"}})
    assert fingerprint(from_avro(record)) == fingerprint(a)


@pytest.mark.parametrize(
    ("payment_id", "command_id", "bad"),
    [
        ("pay-1", "cmd-1", []),
        ("pay-1", "cmd-3530111333300000-02c4d8", ["command_id"]),
        ("cx-4242424242424242-ab12", "cmd-1", ["payment_id"]),
        ("pay\x00", "cmd-1", ["payment_id"]),
        ("pay-1", "c" * 256, ["command_id"]),
        ("pay_0ac3e168922c590493089675592bc98e", "0ac3e168-922c-5904-9308-9675592bc98e", []),
    ],
)
def test_ids_that_cannot_be_published(payment_id: str, command_id: str, bad: list[str]) -> None:
    command = dataclasses.replace(create_cmd(), payment_id=payment_id, command_id=command_id)
    assert unpublishable_ids(command) == bad


# Any JSON a command's canonical form can hold: texts over the whole of Unicode (DEL, control
# characters and non-ASCII among them), integers past 64 bits, nested maps and lists.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_canonical_json_is_byte_for_byte_json_dumps(value: dict[str, Any]) -> None:
    # Fingerprints already stored in the idempotency table must keep matching: the fast path
    # (orjson) may only be taken where its text is json's.
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert _canonical_json(value) == expected


@pytest.mark.parametrize(
    ("metadata", "stored"),
    [
        # Digests made by the code before the orjson fast path (json.dumps alone): what
        # idempotency records written by earlier releases hold. One with a non-ASCII text and DEL
        # (json's path), one in plain ASCII (orjson's).
        ((("cart", "\u00fc\x7f"), ("channel", "web")),
         "6b6db4c786e32b687f0b79eb7298ab96fcb298f20d25aa8414756c02d37ff4fd"),
        ((("channel", "web"),), "06b0052cd335ebbd2ec2c37cccc60fa9ea87f969cf23b3842866ee9eaec6894a"),
    ],
)
def test_fingerprints_stored_by_earlier_releases_still_match(metadata: tuple[tuple[str, str], ...],
                                                             stored: str) -> None:
    command = Command("cmd_1", "pay_1", 1, "a", CreatePayment(
        order_id="o1", customer_id="c1", amount=1250, currency="EUR", payment_method_token="tok_visa",
        metadata=metadata))
    assert fingerprint(command) == stored


def test_validate_answers_each_command_object_for_itself() -> None:
    # validate remembers its last verdict by identity: an equal-looking or changed command is
    # checked again, never given another command's answer.
    bad = _create(amount=0)
    good = _create()
    assert validate(bad) is not None
    assert validate(good) is None
    assert validate(bad) is not None and validate(bad) is validate(bad)
    changed = dataclasses.replace(good, body=dataclasses.replace(good.body, currency="XXQ"))
    assert validate(changed) is not None
    assert validate(good) is None
