"""The processor's cache of decoded payment states (agents/processor.py ``PaymentProcessor._decoded``).

It may only ever save work: a payment loaded right after it was saved reuses the decoded state,
but whenever the table holds anything else for the payment (a value recovered from the
changelog, written by another code path, or a copy made by a store), the table wins.
"""

from __future__ import annotations

import copy
from typing import Any

from agents.processor import PaymentProcessor, PaymentRecord
from paystream.core.machine import GatewayReply, ReplyStatus
from tests.unit.agents.test_agents_routing_processor import NOW, RING, create


def processor() -> tuple[PaymentProcessor, dict[str, Any]]:
    payments: dict[str, Any] = {}
    return PaymentProcessor(payments, {}, methods={}, sealer=RING), payments


def approve(proc: PaymentProcessor, pid: str) -> GatewayReply:
    st = proc.load(pid, 0).state
    assert st is not None and st.pending is not None
    return GatewayReply(operation=st.pending.operation, idempotency_key=st.pending.idempotency_key,
                        status=ReplyStatus.CAPTURED, gateway_ref="ch_1", amount_authorized=1500,
                        amount_captured=1500)


def test_a_payment_loaded_after_its_save_reuses_the_decoded_state_and_matches_the_table() -> None:
    proc, payments = processor()
    proc.handle_command(create("p1"), NOW)
    loaded = proc.load("p1", 2)
    assert loaded.state is proc._decoded["p1"][1]  # no decode
    assert loaded.partition == 2
    assert loaded.state == PaymentRecord.from_json(payments["p1"]).state  # what the table says

    out = proc.handle_input("p1", approve(proc, "p1"), NOW + 5)
    assert out.events and out.events[-1].status == "succeeded"
    assert PaymentRecord.from_json(payments["p1"]).state == proc.load("p1", 0).state


def test_a_value_the_table_got_elsewhere_wins_over_the_cache() -> None:
    proc, payments = processor()
    proc.handle_command(create("p1"), NOW)
    before = proc.load("p1", 0).state
    # Another worker moved the payment on; this worker recovered that value from the changelog.
    other, theirs = processor()
    other.handle_command(create("p1"), NOW)
    other.handle_input("p1", approve(other, "p1"), NOW + 5)
    payments["p1"] = copy.deepcopy(theirs["p1"])
    after = proc.load("p1", 0).state
    assert after is not before and after is not None and after.status.value == "succeeded"
    # An equal copy of what this worker saved (a store that serialises values) is decoded again:
    # only the very object saved is trusted, never an equal one.
    proc.handle_command(create("p2"), NOW)
    saved = proc._decoded["p2"][1]
    payments["p2"] = copy.deepcopy(payments["p2"])
    again = proc.load("p2", 0).state
    assert again == saved and again is not saved


def test_the_cache_is_bounded_and_evicts_the_oldest() -> None:
    proc, payments = processor()
    proc.decoded_cache_size = 3
    for n in range(5):
        proc.handle_command(create(f"p{n}"), NOW)
    assert list(proc._decoded) == ["p2", "p3", "p4"]
    assert proc.load("p0", 0).state == PaymentRecord.from_json(payments["p0"]).state
