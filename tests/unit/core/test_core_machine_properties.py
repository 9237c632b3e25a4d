"""Property tests: random input sequences never break the machine's promises."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from core_helpers import NOW, cancel_cmd, capture_cmd, create_cmd, refund_cmd
from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.core.commands import CaptureMethod, Command, command_type
from paystream.core.events import TERMINAL_EVENTS
from paystream.core.machine import (
    GatewayReply,
    Input,
    Notification,
    NotificationKind,
    PaymentState,
    ReconcileResult,
    ReplyStatus,
    check_invariants,
    decide,
)

AMOUNTS = st.one_of(st.none(), st.integers(min_value=-5, max_value=12_000), st.sampled_from([1, 5_000, 10_000]))
REFUND_IDS = st.sampled_from(["r1", "r2", "r3", "ext"])

STEPS = st.one_of(
    st.tuples(
        st.just("create"),
        st.sampled_from([1, 10_000, 0, 10**16]),
        st.sampled_from(list(CaptureMethod)),
        st.sampled_from(["USD", "JPY", "usd"]),
    ),
    st.tuples(st.just("capture"), AMOUNTS, st.sampled_from([None, "USD", "EUR"])),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("refund"), REFUND_IDS, AMOUNTS, st.sampled_from([None, "USD", "EUR"])),
    st.tuples(st.just("reply"), st.sampled_from(list(ReplyStatus)), AMOUNTS, AMOUNTS, st.booleans()),
    st.tuples(
        st.just("notify"),
        st.sampled_from(list(NotificationKind)),
        st.sampled_from(["n1", "n2", "n3", "n4", "n5", "n6"]),
        AMOUNTS,
        st.one_of(st.none(), REFUND_IDS),
        st.sampled_from([None, "dp_1", "dp_2"]),
        st.sampled_from([None, "USD", "EUR"]),
    ),
    st.tuples(st.just("reconcile"), st.sampled_from(list(ReplyStatus)), st.integers(0, 3), AMOUNTS, AMOUNTS),
    # A webhook about the call in flight, racing its reply.
    st.tuples(st.just("webhook"), st.sampled_from(list(NotificationKind)), st.integers(0, 10**6), AMOUNTS),
)


def _build(state: PaymentState | None, spec: tuple[object, ...], index: int) -> Input:
    kind = spec[0]
    command_id = f"cmd_{index}"
    if kind == "create":
        _, amount, method, currency = spec
        assert isinstance(amount, int) and isinstance(method, CaptureMethod) and isinstance(currency, str)
        return create_cmd(amount=amount, capture_method=method, currency=currency, command_id=command_id)
    if kind == "capture":
        _, amount, currency = spec
        return capture_cmd(amount, currency=currency, command_id=command_id)  # type: ignore[arg-type]
    if kind == "cancel":
        return cancel_cmd(command_id=command_id)
    if kind == "refund":
        _, refund_id, amount, currency = spec
        return refund_cmd(str(refund_id), amount, currency=currency, command_id=command_id)  # type: ignore[arg-type]
    if kind == "reply":
        _, status, authorized, captured, stale = spec
        op = state.pending if state is not None else None
        if op is None or stale:
            from paystream.core.machine import GatewayOperation

            return GatewayReply(GatewayOperation.CAPTURE, "stale-key", status)  # type: ignore[arg-type]
        return GatewayReply(
            op.operation, op.idempotency_key, status,  # type: ignore[arg-type]
            gateway_ref="gw_1", amount_authorized=authorized, amount_captured=captured,  # type: ignore[arg-type]
        )
    if kind == "notify":
        _, nkind, nid, amount, refund_id, dispute_id, currency = spec
        return Notification(
            str(nid), nkind, gateway_ref="gw_1", amount=amount, currency=currency,  # type: ignore[arg-type]
            refund_id=refund_id, dispute_id=dispute_id,  # type: ignore[arg-type]
        )
    if kind == "webhook":
        _, nkind, nid, amount = spec
        refund_id = state.pending.refund_id if state is not None and state.pending is not None else None
        return Notification(f"wh_{nid}", nkind, amount=amount, refund_id=refund_id)  # type: ignore[arg-type]
    _, status, key_choice, authorized, captured = spec
    keys = ["no-such-key"]
    if state is not None:
        if state.pending is not None:
            keys.append(state.pending.idempotency_key)
        keys.extend(r.idempotency_key for r in state.refunds)
    key = keys[int(key_choice) % len(keys)]  # type: ignore[call-overload]
    return ReconcileResult(
        f"rec_{index}", key, status, amount_authorized=authorized, amount_captured=captured  # type: ignore[arg-type]
    )


@dataclass
class _Ledger:
    """Terminal events seen per accepted command (invariant I2)."""

    accepted: dict[str, str] = field(default_factory=dict)
    terminal: Counter[str] = field(default_factory=Counter)


def _run(specs: list[tuple[object, ...]], state: PaymentState | None = None) -> None:
    ledger = _Ledger()
    for index, spec in enumerate(specs):
        inp = _build(state, spec, index)
        decision = decide(state, inp, NOW + index)  # must never raise
        new_state = decision.state
        if new_state is not None:
            assert check_invariants(new_state) == [], (spec, new_state)
            assert 0 <= new_state.refunded <= new_state.captured <= new_state.authorized <= new_state.amount
        if decision.events:
            assert decision.causation_id is not None
        if isinstance(inp, Command):
            if decision.rejection is not None:
                assert new_state == state and decision.events == () and decision.effects == ()
            else:
                assert new_state is not None and new_state != state
                assert decision.events or decision.effects
                ledger.accepted[inp.command_id] = command_type(inp)
        else:
            assert decision.rejection is None
            if decision.ignored is not None:
                assert new_state == state and decision.events == () and decision.effects == ()
        if decision.causation_id in ledger.accepted:
            kind = ledger.accepted[decision.causation_id]
            ledger.terminal[decision.causation_id] += sum(
                1 for event in decision.events if event.AVRO_NAME in TERMINAL_EVENTS[kind]
            )
            assert ledger.terminal[decision.causation_id] <= 1, (decision.causation_id, decision.events)
        if isinstance(inp, Notification) and new_state is not None:
            again = decide(new_state, inp, NOW + index)
            assert again.state == new_state and again.events == () and again.effects == ()
        state = new_state
    op = state.pending if state is not None else None
    for command_id in ledger.accepted:
        in_flight = op is not None and op.causation_id == command_id and not op.outcome_unknown
        assert ledger.terminal[command_id] == (0 if in_flight else 1), command_id


@settings(max_examples=400, deadline=None)
@given(st.lists(STEPS, max_size=25))
def test_random_inputs_from_nothing_keep_every_promise(specs: list[tuple[object, ...]]) -> None:
    _run(specs)


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(list(CaptureMethod)), st.lists(STEPS, max_size=30))
def test_random_inputs_after_a_valid_create_keep_every_promise(
    method: CaptureMethod, specs: list[tuple[object, ...]]
) -> None:
    _run([("create", 10_000, method, "USD"), *specs])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(ReplyStatus)), min_size=1, max_size=8), st.lists(STEPS, max_size=20))
def test_gateway_driven_paths_keep_every_promise(
    replies: list[ReplyStatus], specs: list[tuple[object, ...]]
) -> None:
    # Bias towards progress: answer the call in flight several times before random inputs.
    prefix: list[tuple[object, ...]] = [("create", 10_000, CaptureMethod.MANUAL, "USD")]
    for status in replies:
        prefix.append(("reply", status, None, None, False))
        prefix.append(("capture", None, None))
        prefix.append(("reply", ReplyStatus.CAPTURED, None, None, False))
        prefix.append(("refund", "r1", 3_000, None))
    _run([*prefix, *specs])
