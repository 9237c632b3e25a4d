"""agents/gateway.py: the reply record carries the sink's metadata beside (never inside) the
machine's input, and the machine's input still decodes."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.gateway import execute, reconciled_operation, reply_input
from gateway_clients.protocol import DeclineCode, GatewayResult, GatewayStatus, OutcomeUnknownError
from paystream.core.machine import CallGateway, GatewayOperation, GatewayReply, ReconcileResult, ReplyStatus


class FakeGateway:
    def __init__(self, result: GatewayResult | None = None, error: Exception | None = None,
                 delay_s: float = 0.0) -> None:
        self.result, self.error, self.delay_s = result, error, delay_s

    async def _answer(self, **_: Any) -> GatewayResult:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    authorize = capture = cancel = refund = retrieve = _answer


def call(op: GatewayOperation = GatewayOperation.AUTHORIZE, key: str = "ps-pay-1-authorize-2",
         refund_id: str | None = None) -> CallGateway:
    return CallGateway(operation=op, payment_id="pay-1", gateway="simulated", idempotency_key=key, attempt=2,
                       amount=1999, currency="USD", payment_method_token="tok_visa", gateway_ref="ch_1",
                       refund_id=refund_id)


DECLINED = GatewayResult(status=GatewayStatus.DECLINED, gateway_ref="ch_1", currency="USD",
                         decline_code=DeclineCode.INSUFFICIENT_FUNDS)


def test_reply_carries_meta_outside_the_machine_input() -> None:
    reply = asyncio.run(execute({"simulated": FakeGateway(DECLINED, delay_s=0.02)}, call(), timeout_s=5))
    assert reply["kind"] == "reply"
    meta = reply["meta"]
    assert (meta["gateway"], meta["operation"], meta["attempt"], meta["error_code"]) == (
        "simulated", "authorize", 2, None)
    assert 15 <= meta["latency_ms"] < 2000 and meta["replied_at"] > 1_600_000_000_000
    assert not set(meta) & set(reply["input"]) - {"operation"}
    decoded = reply_input(reply)
    assert isinstance(decoded, GatewayReply)
    assert (decoded.status, decoded.decline_code, decoded.idempotency_key) == (
        ReplyStatus.DECLINED, "insufficient_funds", "ps-pay-1-authorize-2")


def test_timeout_is_unknown_with_a_normalised_error_code() -> None:
    reply = asyncio.run(execute({"simulated": FakeGateway(DECLINED, delay_s=1)}, call(), timeout_s=0.05))
    assert reply["input"]["status"] == "unknown"
    assert reply["meta"]["error_code"] == "timeout"
    reply = asyncio.run(execute({"simulated": FakeGateway(error=OutcomeUnknownError("lost"))}, call(), 5))
    assert (reply["input"]["status"], reply["meta"]["error_code"]) == ("unknown", "outcome_unknown")
    reply = asyncio.run(execute({}, call(), 5))
    assert (reply["input"]["status"], reply["meta"]["error_code"]) == ("permanent_error", "gateway_not_configured")


def test_reconcile_reply_names_the_operation_it_asks_about() -> None:
    captured = GatewayResult(status=GatewayStatus.CAPTURED, gateway_ref="ch_1", currency="USD",
                             amount_authorized=1999, amount_captured=1999)
    retrieve = call(GatewayOperation.RETRIEVE, key="ps-pay-1-capture-2")
    reply = asyncio.run(execute({"simulated": FakeGateway(captured)}, retrieve, 5))
    assert reply["kind"] == "reconcile" and reply["meta"]["operation"] == "capture"
    decoded = reply_input(reply)
    assert isinstance(decoded, ReconcileResult) and decoded.status is ReplyStatus.CAPTURED


def test_reconciled_operation_from_the_key() -> None:
    assert reconciled_operation(call(GatewayOperation.RETRIEVE, key="ps-a-b-c-authorize-0")) == "authorize"
    assert reconciled_operation(call(GatewayOperation.RETRIEVE, key="ps-p-refund:re_1-3", refund_id="re_1")) == "refund"
    assert reconciled_operation(call(GatewayOperation.RETRIEVE, key="odd")) == "retrieve"
    assert reconciled_operation(call(GatewayOperation.CANCEL)) == "cancel"
