"""Hostile input for ``payment.requests``: random bytes, wrong and unknown schema ids,
truncated Avro, trailing garbage, invalid UTF-8, huge fields, negative and overflowing
amounts, card numbers in free-text fields, wrong and missing keys.

Every decodable fuzzed command has a fresh command id, so the checker can find its outcome.
Test card numbers only (Luhn-valid, from the networks' published test ranges).
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from chaos.traffic import CommandProducer, Registry, command, create_body, frame

TEST_PANS = ["4111111111111111", "4242424242424242", "5555555555554444", "378282246310005",
             "6011111111111117", "3530111333300000", "4000056655665556", "2223003122003222"]
MAX_LONG, MIN_LONG = 2**63 - 1, -(2**63)


def _spaced(pan: str, sep: str) -> str:
    return sep.join(pan[i:i + 4] for i in range(0, len(pan), 4))


class Fuzzer:
    def __init__(self, producer: CommandProducer, registry: Registry, prefix: str, rng: random.Random, *,
                 wedging: bool = True) -> None:
        self.p = producer
        # Inputs that today wedge every sink of the stack for good (findings F2, F4 in
        # docs/reliability.md): NUL characters in strings, identifiers beyond index limits.
        self.wedging = wedging
        self.rng = rng
        self.prefix = prefix
        self.n = 0
        self.cmd_id, self.cmd_schema = producer.schema_id, producer.schema
        self.event_id, self.event_schema = registry.latest("payment.events-value")
        self.hook_id, self.hook_schema = registry.latest("payment.webhooks-value")
        self.kinds: dict[str, int] = {}
        self._makers: list[tuple[float, Callable[[], tuple[bytes | None, bytes | None]]]] = [
            (10, self.random_bytes), (4, self.bad_magic), (5, self.unknown_schema_id), (5, self.event_schema_id),
            (3, self.webhook_schema_id), (10, self.truncated), (4, self.trailing_garbage), (4, self.invalid_utf8),
            (3, self.huge_field), (10, self.bad_amount), (12, self.card_number_in_text), (4, self.key_mismatch),
            (3, self.null_key), (6, self.bad_currency), (4, self.empty_ids), (6, self.orphan_command),
            (3, self.bad_enum_or_union), (4, self.garbage_strings), (6, self.undecodable_with_card_number),
        ]
        if not wedging:
            self._makers = [(w, m) for w, m in self._makers if m != self.huge_field]
        self._weights = [w for w, _ in self._makers]

    def pid(self) -> str:
        self.n += 1
        return f"{self.prefix}-fz{self.n:06d}-{uuid.uuid4().hex[:6]}"

    def _valid(self, pid: str | None = None, **extra: Any) -> dict[str, Any]:
        pid = pid or self.pid()
        rng = self.rng
        kind = rng.random()
        if kind < 0.6:
            body = create_body(rng.randint(100, 10_000), "USD", "tok_visa", rng.random() < 0.5)
            body.update(extra)
            return command(pid, "CreatePayment", body)
        if kind < 0.8:
            return command(pid, "RefundPayment", {"refund_id": f"re-{uuid.uuid4().hex[:8]}", "amount": 100,
                                                  "currency": "USD", "reason": extra.get("reason")})
        return command(pid, "CancelPayment", {"reason": extra.get("reason")})

    def _enc(self, cmd: dict[str, Any]) -> bytes:
        return frame(self.cmd_id, self.cmd_schema, cmd)

    # ---- makers: each returns (key, value)

    def random_bytes(self) -> tuple[bytes | None, bytes | None]:
        rng = self.rng
        value = None if rng.random() < 0.03 else rng.randbytes(rng.choice([0, 1, 4, 5, 16, 200, 2000]))
        key = None if rng.random() < 0.2 else rng.randbytes(rng.randint(1, 40))
        return key, value

    def bad_magic(self) -> tuple[bytes | None, bytes | None]:
        cmd = self._valid()
        return cmd["payment_id"].encode(), bytes([self.rng.randint(1, 255)]) + self._enc(cmd)[1:]

    def unknown_schema_id(self) -> tuple[bytes | None, bytes | None]:
        cmd = self._valid()
        sid = self.rng.choice([0, 99_999, 2**31 - 1, 2**32 - 1])
        return cmd["payment_id"].encode(), b"\x00" + struct.pack(">I", sid) + self._enc(cmd)[5:]

    def event_schema_id(self) -> tuple[bytes | None, bytes | None]:
        """A registered id of another subject: a command body read as an event, or a real event."""
        pid = self.pid()
        if self.rng.random() < 0.5:
            return pid.encode(), b"\x00" + struct.pack(">I", self.event_id) + self._enc(self._valid(pid))[5:]
        event = {"event_id": str(uuid.uuid4()), "payment_id": pid, "order_id": None, "sequence": 1,
                 "occurred_at": 0, "causation_command_id": None, "status": "succeeded", "totals": None,
                 "event": ("io.paystream.events.PaymentCanceled", {"reason": "fuzz", "released": 0})}
        return pid.encode(), frame(self.event_id, self.event_schema, event)

    def webhook_schema_id(self) -> tuple[bytes | None, bytes | None]:
        pid = self.pid()
        hook = {"notification_id": f"fz-{uuid.uuid4()}", "gateway": "simulated", "payment_id": pid,
                "gateway_ref": None, "kind": "payment_succeeded", "occurred_at": 0, "received_at": 0,
                "amount": 100, "currency": "USD", "refund_id": None, "dispute_id": None, "decline_code": None,
                "raw_status": None}
        return pid.encode(), frame(self.hook_id, self.hook_schema, hook)

    def truncated(self) -> tuple[bytes | None, bytes | None]:
        cmd = self._valid()
        data = self._enc(cmd)
        return cmd["payment_id"].encode(), data[: self.rng.randint(0, len(data) - 1)]

    def trailing_garbage(self) -> tuple[bytes | None, bytes | None]:
        cmd = self._valid()
        return cmd["payment_id"].encode(), self._enc(cmd) + self.rng.randbytes(self.rng.randint(1, 64))

    def invalid_utf8(self) -> tuple[bytes | None, bytes | None]:
        marker = "Z" * 12
        cmd = self._valid(customer_id=marker)
        data = self._enc(cmd)
        bad = bytes([0xC3, 0x28, 0xFF, 0xFE, 0xED, 0xA0, 0x80, 0xC0, 0xAF, 0xE2, 0x82, 0x28])
        return cmd["payment_id"].encode(), data.replace(marker.encode(), bad, 1)

    def huge_field(self) -> tuple[bytes | None, bytes | None]:
        rng = self.rng
        size = rng.choice([50_000, 300_000, 700_000])
        which = rng.choice(["order_id", "customer_id", "customer_email", "metadata", "payment_id"])
        pid = self.pid()
        if which == "metadata":
            body = create_body(100, "USD", "tok_visa", False, metadata={f"k{i}": "v" * 64 for i in range(size // 80)})
        elif which == "payment_id":
            pid = self.prefix + "-" + "p" * size
            body = create_body(100, "USD", "tok_visa", False)
        else:
            body = create_body(100, "USD", "tok_visa", False, **{which: "x" * size})
        cmd = command(pid, "CreatePayment", body)
        return cmd["payment_id"].encode(), self._enc(cmd)

    def bad_amount(self) -> tuple[bytes | None, bytes | None]:
        rng = self.rng
        amount = rng.choice([0, -1, -100, MIN_LONG, MAX_LONG, MAX_LONG - 1, 10**15, 2**53 + 1])
        pid = self.pid()
        kind = rng.random()
        if kind < 0.5:
            cmd = command(pid, "CreatePayment", create_body(amount, rng.choice(["USD", "JPY", "BHD"]), "tok_visa",
                                                            rng.random() < 0.5))
        elif kind < 0.75:
            cmd = command(pid, "CapturePayment", {"amount": amount, "currency": "USD"})
        else:
            cmd = command(pid, "RefundPayment", {"refund_id": f"re-{uuid.uuid4().hex[:8]}", "amount": amount,
                                                 "currency": "USD", "reason": None})
        return pid.encode(), self._enc(cmd)

    def card_number_in_text(self) -> tuple[bytes | None, bytes | None]:
        rng = self.rng
        pan = rng.choice(TEST_PANS)
        text = rng.choice([pan, _spaced(pan, " "), _spaced(pan, "-"), f"card {pan} exp 12/30 cvv 123",
                           f"pan={pan}", f"{pan}@example.com"])
        # Every field in turn, so even a short run puts a card number in each of them.
        wheres = ["payment_id", "metadata", "order_id", "customer_id", "customer_email", "token", "cancel_reason",
                  "refund_reason", "refund_id", "shipping_country", "customer_ip", "command_id", "origin"]
        self._pan_turn = getattr(self, "_pan_turn", -1) + 1
        where = wheres[self._pan_turn % len(wheres)]
        pid = self.pid()
        if where == "metadata":
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False,
                                                            metadata={"note": text, "card_number": pan}))
        elif where in ("order_id", "customer_id", "customer_email", "shipping_country", "customer_ip"):
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False, **{where: text}))
        elif where == "token":
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", rng.choice([pan, f"tok_{pan}"]), False))
        elif where == "cancel_reason":
            cmd = command(pid, "CancelPayment", {"reason": text})
        elif where == "refund_reason":
            cmd = command(pid, "RefundPayment", {"refund_id": f"re-{uuid.uuid4().hex[:8]}", "amount": 1,
                                                 "currency": "USD", "reason": text})
        elif where == "refund_id":
            cmd = command(pid, "RefundPayment", {"refund_id": text, "amount": 1, "currency": "USD", "reason": None})
        elif where == "command_id":
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False),
                          command_id=f"cmd-{pan}-{uuid.uuid4().hex[:6]}")
        elif where == "origin":
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False), origin=text)
        else:  # the payment id (and so the key) is a card number
            pid = f"{self.prefix}-{pan}-{uuid.uuid4().hex[:4]}"
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False))
        return cmd["payment_id"].encode(), self._enc(cmd)

    def undecodable_with_card_number(self) -> tuple[bytes | None, bytes | None]:
        """Poison that holds a card number and cannot be decoded: it can only go to the
        dead-letter topic, where its bytes (card number included) would be kept."""
        pan = self.rng.choice(TEST_PANS)
        cmd = command(self.pid(), "CreatePayment", create_body(1000, "USD", "tok_visa", False,
                                                               metadata={"note": f"card {pan}"}))
        data = self._enc(cmd)
        kind = self.rng.random()
        if kind < 0.4:
            value = data[: data.index(pan.encode()) + len(pan) + 1]  # truncated right after the number
        elif kind < 0.7:
            value = b"\x07" + data[1:]  # bad magic byte
        else:
            value = json.dumps({"payment_id": cmd["payment_id"], "card_number": pan, "cvc": "123"}).encode()
        return cmd["payment_id"].encode(), value

    def key_mismatch(self) -> tuple[bytes | None, bytes | None]:
        cmd = self._valid()
        return self.pid().encode(), self._enc(cmd)

    def null_key(self) -> tuple[bytes | None, bytes | None]:
        return None, self._enc(self._valid())

    def bad_currency(self) -> tuple[bytes | None, bytes | None]:
        cur = self.rng.choice(["usd", "XXX", "", "US", "EURO", "€€€", "ZZZ", "123"])
        pid = self.pid()
        return pid.encode(), self._enc(command(pid, "CreatePayment", create_body(1000, cur, "tok_visa", False)))

    def empty_ids(self) -> tuple[bytes | None, bytes | None]:
        if self.rng.random() < 0.5:
            pid = self.pid()
            cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False), command_id="")
            return pid.encode(), self._enc(cmd)
        cmd = command("", "CreatePayment", create_body(1000, "USD", "tok_visa", False))
        return b"", self._enc(cmd)

    def orphan_command(self) -> tuple[bytes | None, bytes | None]:
        """Commands for payments that do not exist; payment-method commands."""
        pid = self.pid()
        kind = self.rng.choice(["CapturePayment", "CancelPayment", "RefundPayment", "AddPaymentMethod",
                                "RemovePaymentMethod"])
        body: dict[str, Any] = {
            "CapturePayment": {"amount": None, "currency": None},
            "CancelPayment": {"reason": None},
            "RefundPayment": {"refund_id": "re-x", "amount": None, "currency": None, "reason": None},
            "AddPaymentMethod": {"customer_id": "cus-1", "gateway": "simulated", "gateway_token": "tok_visa",
                                 "brand": "visa", "last4": "1111", "exp_month": 13, "exp_year": -1,
                                 "fingerprint": None},
            "RemovePaymentMethod": {"customer_id": "cus-1"},
        }[kind]
        return pid.encode(), self._enc(command(pid, kind, body))

    def bad_enum_or_union(self) -> tuple[bytes | None, bytes | None]:
        """Valid framing, then a union branch or enum index out of range."""
        cmd = self._valid()
        data = bytearray(self._enc(cmd))
        # The union index of `command` follows the four leading fields; flip a varint near there.
        pos = self.rng.randint(5, max(5, len(data) - 1))
        data[pos] = self.rng.choice([0x7F, 0x41, 0x3F])
        return cmd["payment_id"].encode(), bytes(data)

    def garbage_strings(self) -> tuple[bytes | None, bytes | None]:
        control = "\x00\x01\x02" if self.wedging else "\x01\x02\x1b"
        junk = self.rng.choice([control, "💳" * 50, "'; DROP TABLE payments; --", "\u202e" * 10,
                                "null", "{}", "../../etc/passwd", " " * 300])
        pid = self.pid()
        cmd = command(pid, "CreatePayment", create_body(1000, "USD", "tok_visa", False, order_id=junk,
                                                        customer_id=junk, metadata={junk: junk}))
        return pid.encode(), self._enc(cmd)

    # ---- driving

    def one(self) -> tuple[str, bytes | None, bytes | None]:
        (maker,) = self.rng.choices([m for _, m in self._makers], weights=self._weights)
        key, value = maker()
        return maker.__name__, key, value

    def send(self, count: int) -> Iterator[str]:
        for _ in range(count):
            kind, key, value = self.one()
            self.kinds[kind] = self.kinds.get(kind, 0) + 1
            self.p.send_raw(key, value)
            yield kind
