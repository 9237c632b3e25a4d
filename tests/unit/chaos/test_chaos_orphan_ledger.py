"""The chaos checker's I1 counts an orphan charge as undone only when the ledger shows it undone."""

from __future__ import annotations

from typing import Any

from chaos.checker import orphan_refunded, orphan_voided, successful


def charge(status: str, captured: int, refunds: list[dict[str, Any]], keys: tuple[str, ...] = ()) -> dict[str, Any]:
    refunded = sum(r["amount"] for r in refunds if r["status"] == "succeeded")
    return {"id": "simpay_1", "status": status, "amount_captured": captured, "amount_authorized": captured or 500,
            "amount_refunded": refunded, "refunds": refunds, "idempotency_keys": list(keys)}


def test_an_orphan_refunded_in_full_is_no_successful_charge() -> None:
    c = charge("refunded", 500, [{"refund_id": "orphan_0_0", "amount": 500, "status": "succeeded"}])
    assert orphan_refunded(c) and not successful(c)


def test_a_failed_or_partial_orphan_refund_or_a_customer_refund_does_not_undo_a_double_charge() -> None:
    failed = charge("succeeded", 500, [{"refund_id": "orphan_0_0", "amount": 500, "status": "failed"}])
    partial = charge("partially_refunded", 500, [{"refund_id": "orphan_0_0", "amount": 200, "status": "succeeded"}])
    customer = charge("refunded", 500, [{"refund_id": "r1", "amount": 500, "status": "succeeded"}])
    for c in (failed, partial, customer):
        assert not orphan_refunded(c) and successful(c)


def test_a_voided_orphan_is_recognised_and_an_authorization_still_holding_money_counts() -> None:
    voided = charge("canceled", 0, [], keys=("ps-p1-authorize-0", "ps-p1-authorize-0-void"))
    assert orphan_voided(voided) and not successful(voided)
    held = charge("authorized", 0, [], keys=("ps-p1-authorize-0", "ps-p1-authorize-0-void"))
    assert not orphan_voided(held) and successful(held)
