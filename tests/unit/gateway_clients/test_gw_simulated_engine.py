"""The simulated gateway engine: outcomes, idempotency, capture/cancel/refund rules, ledger."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gateway_clients.simulated.engine import (
    AMOUNT_TRIGGERS,
    Delivery,
    EngineResponse,
    SimulatedGatewayEngine,
    SimulatorConfig,
)


def _authorize(
    engine: SimulatedGatewayEngine,
    *,
    token: str = "tok_visa",
    amount: int = 10_000,
    currency: str = "EUR",
    capture: bool = True,
    key: str = "k-auth",
    payment_id: str = "pay_1",
) -> EngineResponse:
    return engine.authorize(
        payment_id=payment_id,
        amount=amount,
        currency=currency,
        payment_method_token=token,
        capture=capture,
        idempotency_key=key,
        metadata={"order_id": "ord_1"},
    )


def _error(response: EngineResponse) -> Mapping[str, object]:
    error = response.body["error"]
    assert isinstance(error, dict)
    return error


def _ref(response: EngineResponse) -> str:
    ref = response.body["id"]
    assert isinstance(ref, str)
    return ref


def test_approving_token_with_capture_succeeds_and_records_the_charge() -> None:
    engine = SimulatedGatewayEngine()
    response = _authorize(engine)
    assert response.status_code == 200
    assert response.body["status"] == "succeeded"
    assert response.body["amount_captured"] == 10_000
    [charge] = engine.ledger()
    assert charge.payment_id == "pay_1"
    assert charge.metadata["payment_id"] == "pay_1"
    assert charge.metadata["order_id"] == "ord_1"
    assert charge.was_authorized
    assert charge.idempotency_keys == ("k-auth",)


def test_pm_card_visa_without_capture_only_authorizes() -> None:
    engine = SimulatedGatewayEngine()
    response = _authorize(engine, token="pm_card_visa", capture=False)
    assert response.body["status"] == "authorized"
    assert response.body["amount_authorized"] == 10_000
    assert response.body["amount_captured"] == 0


@pytest.mark.parametrize(
    ("token", "decline_code"),
    [
        ("tok_decline_insufficient_funds", "insufficient_funds"),
        ("tok_decline_card_declined", "generic_decline"),
        ("tok_decline_expired_card", "expired_card"),
        ("tok_decline_incorrect_cvc", "incorrect_cvc"),
        ("tok_decline_fraud", "fraudulent"),
        ("tok_decline_processing_error", "processing_error"),
    ],
)
def test_decline_tokens_give_402_with_their_code_and_no_money(token: str, decline_code: str) -> None:
    engine = SimulatedGatewayEngine()
    response = _authorize(engine, token=token)
    assert response.status_code == 402
    error = _error(response)
    assert error["decline_code"] == decline_code
    payment = error["payment"]
    assert isinstance(payment, dict)
    assert payment["status"] == "declined"
    [charge] = engine.ledger()
    assert not charge.was_authorized
    assert charge.amount_authorized == charge.amount_captured == 0


def test_3ds_token_requires_action_then_completes() -> None:
    engine = SimulatedGatewayEngine(public_base_url="http://gw.test")
    response = _authorize(engine, token="tok_3ds")
    assert response.body["status"] == "requires_action"
    ref = _ref(response)
    assert response.body["next_action"] == {
        "type": "redirect_to_url",
        "url": f"http://gw.test/v1/payments/{ref}/authenticate",
    }
    engine.drain_events()
    done = engine.complete_action(ref, success=True)
    assert done.body["status"] == "succeeded"
    assert [e["type"] for e in engine.drain_events()] == ["payment.succeeded"]


def test_failed_3ds_declines() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, token="tok_3ds"))
    assert engine.complete_action(ref, success=False).body["status"] == "declined"
    assert not engine.ledger()[0].was_authorized


def test_timeout_token_charges_but_delivers_after_the_hang() -> None:
    engine = SimulatedGatewayEngine(SimulatorConfig(hang_ms=5_000))
    response = _authorize(engine, token="tok_timeout")
    assert response.status_code == 200
    assert response.delay_ms >= 5_000
    assert engine.ledger()[0].amount_captured == 10_000
    # the retry with the same key gets the stored answer at once
    replay = _authorize(engine, token="tok_timeout")
    assert replay.replayed
    assert replay.delay_ms < 5_000
    assert _ref(replay) == _ref(response)
    assert len(engine.ledger()) == 1


def test_timeout_n_token_delays_the_first_n_replays_too() -> None:
    engine = SimulatedGatewayEngine(SimulatorConfig(hang_ms=5_000))
    first = _authorize(engine, token="tok_timeout_2")
    assert first.status_code == 200 and first.delay_ms >= 5_000
    replays = [_authorize(engine, token="tok_timeout_2") for _ in range(3)]
    assert all(r.replayed and _ref(r) == _ref(first) for r in replays)
    assert [r.delay_ms >= 5_000 for r in replays] == [True, True, False]
    assert len(engine.ledger()) == 1 and engine.ledger()[0].amount_captured == 10_000


def test_5xx_token_charges_nothing_and_replays_the_stored_500() -> None:
    engine = SimulatedGatewayEngine()
    first = _authorize(engine, token="tok_5xx")
    assert first.status_code == 500
    assert first.should_retry
    assert engine.ledger() == []
    replay = _authorize(engine, token="tok_5xx")
    assert replay.status_code == 500
    assert replay.replayed
    assert engine.ledger() == []
    lookup = engine.lookup("k-auth")
    assert lookup.status_code == 200
    assert lookup.body["payment"] is None
    assert lookup.body["status_code"] == 500


def test_flaky_token_refuses_n_times_per_key_without_storing_then_approves_once() -> None:
    engine = SimulatedGatewayEngine()
    for _ in range(2):
        refused = _authorize(engine, token="tok_flaky_2", key="k-flaky")
        assert (refused.status_code, refused.should_retry, refused.replayed) == (503, True, False)
        assert _error(refused)["code"] == "service_unavailable"
        assert engine.lookup("k-flaky").status_code == 404  # nothing stored under the key
    approved = _authorize(engine, token="tok_flaky_2", key="k-flaky")
    assert approved.status_code == 200 and approved.body["status"] == "succeeded"
    again = _authorize(engine, token="tok_flaky_2", key="k-flaky")
    assert again.replayed and _ref(again) == _ref(approved)
    assert len(engine.ledger()) == 1
    # Counted per key: another key starts again with refusals.
    assert _authorize(engine, token="tok_flaky_2", key="k-other").status_code == 503


def test_5xx_after_charge_token_charges_answers_500_and_the_lookup_shows_the_charge() -> None:
    engine = SimulatedGatewayEngine()
    first = _authorize(engine, token="tok_5xx_after_charge_1", key="ps-pay_1-authorize-0")
    assert (first.status_code, first.should_retry) == (500, True)  # "nothing was charged": a lie
    [orphan] = engine.ledger()
    assert (orphan.status, orphan.amount_captured, orphan.was_authorized) == ("succeeded", 10_000, True)
    replay = _authorize(engine, token="tok_5xx_after_charge_1", key="ps-pay_1-authorize-0")
    assert (replay.status_code, replay.replayed) == (500, True) and len(engine.ledger()) == 1
    lookup = engine.lookup("ps-pay_1-authorize-0")
    payment = lookup.body["payment"]
    assert isinstance(payment, dict) and payment["id"] == orphan.gateway_ref and payment["status"] == "succeeded"
    # n = 1: the payment's next key is approved normally (a second charge: the orphan case).
    second = _authorize(engine, token="tok_5xx_after_charge_1", key="ps-pay_1-authorize-1")
    assert second.status_code == 200 and _ref(second) != orphan.gateway_ref
    assert len(engine.duplicate_charges()["pay_1"]) == 2
    # Counted per payment: another payment's first key lies again; without n, every key does.
    assert _authorize(engine, token="tok_5xx_after_charge_1", key="k-p2", payment_id="pay_2").status_code == 500
    for n in range(3):
        lied = _authorize(engine, token="tok_5xx_after_charge", key=f"k-p3-{n}", payment_id="pay_3")
        assert lied.status_code == 500
    assert len(engine.charges_for_payment("pay_3")) == 3


def test_slow_token_approves_with_extra_delay() -> None:
    engine = SimulatedGatewayEngine(SimulatorConfig(slow_ms=750))
    response = _authorize(engine, token="tok_slow")
    assert response.status_code == 200
    assert response.delay_ms == pytest.approx(750)


@pytest.mark.parametrize("token", ["4242424242424242", "card 4000 0000 0000", "", "visa"])
def test_non_token_payment_methods_are_rejected(token: str) -> None:
    engine = SimulatedGatewayEngine()
    response = _authorize(engine, token=token)
    assert response.status_code == 400
    if token:
        assert token not in str(response.body)  # card data is never echoed back
    assert engine.ledger() == []


@pytest.mark.parametrize(
    ("cents", "status", "expected"),
    [
        (51, 402, "insufficient_funds"),
        (55, 402, "fraudulent"),
        (57, 200, "requires_action"),
        (59, 500, None),
    ],
)
def test_amount_triggers(cents: int, status: int, expected: str | None) -> None:
    engine = SimulatedGatewayEngine()
    response = _authorize(engine, amount=1200 + cents)
    assert response.status_code == status
    if status == 402:
        assert _error(response)["decline_code"] == expected
    elif status == 200:
        assert response.body["status"] == expected
    assert set(AMOUNT_TRIGGERS) == set(range(51, 61))


def test_amount_triggers_can_be_switched_off_and_never_override_tokens() -> None:
    engine = SimulatedGatewayEngine(SimulatorConfig(amount_triggers=False))
    assert _authorize(engine, amount=1251).status_code == 200
    engine = SimulatedGatewayEngine()
    response = _authorize(engine, amount=1257, token="tok_decline_expired_card")
    assert _error(response)["decline_code"] == "expired_card"


def test_replay_returns_first_response_without_charging_again() -> None:
    engine = SimulatedGatewayEngine()
    first = _authorize(engine)
    second = _authorize(engine)
    assert second.replayed and not first.replayed
    assert second.body == first.body
    assert len(engine.ledger()) == 1


def test_replay_of_a_decline_is_the_same_decline() -> None:
    engine = SimulatedGatewayEngine()
    first = _authorize(engine, token="tok_decline_fraud")
    second = _authorize(engine, token="tok_decline_fraud")
    assert second.status_code == 402
    assert second.body == first.body
    assert len(engine.ledger()) == 1


@pytest.mark.parametrize(
    "changes",
    [{"amount": 10_001}, {"currency": "USD"}, {"token": "pm_card_visa"}, {"capture": False}],
)
def test_same_key_with_different_parameters_is_rejected(changes: dict[str, object]) -> None:
    engine = SimulatedGatewayEngine()
    _authorize(engine)
    response = _authorize(engine, **changes)  # type: ignore[arg-type]
    assert response.status_code == 400
    assert _error(response)["code"] == "idempotency_key_reused"
    assert len(engine.ledger()) == 1


def test_key_reused_for_another_operation_is_rejected() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    response = engine.capture(gateway_ref=ref, amount=None, currency=None, idempotency_key="k-auth")
    assert _error(response)["code"] == "idempotency_key_reused"
    assert engine.ledger()[0].status == "authorized"


def test_invalid_requests_are_not_stored_so_a_fixed_retry_works() -> None:
    engine = SimulatedGatewayEngine()
    bad = _authorize(engine, currency="eur")
    assert bad.status_code == 400
    assert _error(bad)["code"] == "currency_invalid"
    assert _authorize(engine).status_code == 200


@pytest.mark.parametrize("amount", [0, -5])
def test_non_positive_amounts_are_rejected(amount: int) -> None:
    engine = SimulatedGatewayEngine()
    assert _error(_authorize(engine, amount=amount))["code"] == "amount_invalid"


def test_partial_capture_releases_the_remainder() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    response = engine.capture(gateway_ref=ref, amount=6_000, currency="EUR", idempotency_key="k-cap")
    assert response.status_code == 200
    assert response.body["status"] == "succeeded"
    assert response.body["amount_authorized"] == 10_000
    assert response.body["amount_captured"] == 6_000
    again = engine.capture(gateway_ref=ref, amount=4_000, currency="EUR", idempotency_key="k-cap-2")
    assert _error(again)["code"] == "payment_unexpected_state"
    assert engine.ledger()[0].amount_captured == 6_000


def test_capture_more_than_authorized_is_rejected() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    response = engine.capture(gateway_ref=ref, amount=10_001, currency="EUR", idempotency_key="k-cap")
    assert _error(response)["code"] == "amount_too_large"
    assert engine.ledger()[0].status == "authorized"


def test_capture_in_another_currency_is_rejected() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    response = engine.capture(gateway_ref=ref, amount=100, currency="USD", idempotency_key="k-cap")
    assert _error(response)["code"] == "currency_mismatch"


def test_cancel_before_capture_then_capture_is_refused() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    canceled = engine.cancel(gateway_ref=ref, idempotency_key="k-cancel")
    assert canceled.body["status"] == "canceled"
    response = engine.capture(gateway_ref=ref, amount=None, currency=None, idempotency_key="k-cap")
    assert response.status_code == 400
    assert engine.ledger()[0].amount_captured == 0


def test_cancel_after_capture_is_refused() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine))
    response = engine.cancel(gateway_ref=ref, idempotency_key="k-cancel")
    assert _error(response)["code"] == "payment_unexpected_state"


def test_multiple_partial_refunds_up_to_captured_then_over_refund_rejected() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine))

    def refund(refund_id: str, amount: int) -> EngineResponse:
        return engine.refund(
            gateway_ref=ref,
            refund_id=refund_id,
            amount=amount,
            currency="EUR",
            idempotency_key=f"k-{refund_id}",
        )

    first = refund("re_1", 3_000)
    assert first.status_code == 200
    assert first.body["status"] == "succeeded"
    assert engine.get_payment(ref).body["status"] == "partially_refunded"
    assert refund("re_2", 5_000).status_code == 200
    over = refund("re_3", 2_001)
    assert over.status_code == 400
    assert _error(over)["code"] == "amount_too_large"
    last = refund("re_4", 2_000)
    assert last.status_code == 200
    [charge] = engine.ledger()
    assert charge.amount_refunded == 10_000 == charge.amount_captured
    assert charge.status == "refunded"
    assert [r.refund_id for r in charge.refunds] == ["re_1", "re_2", "re_4"]


def test_refund_is_idempotent_and_refund_ids_are_unique() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine))
    args = {"gateway_ref": ref, "refund_id": "re_1", "amount": 1_000, "currency": "EUR"}
    first = engine.refund(**args, idempotency_key="k-r1")  # type: ignore[arg-type]
    replay = engine.refund(**args, idempotency_key="k-r1")  # type: ignore[arg-type]
    assert replay.replayed and replay.body == first.body
    other_key = engine.refund(**args, idempotency_key="k-r1-b")  # type: ignore[arg-type]
    assert _error(other_key)["code"] == "duplicate_refund_id"
    assert engine.ledger()[0].amount_refunded == 1_000


def test_refund_of_an_uncaptured_payment_is_rejected() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    response = engine.refund(gateway_ref=ref, refund_id="re_1", amount=1, currency="EUR", idempotency_key="k")
    assert _error(response)["code"] == "payment_unexpected_state"


def test_refund_fail_token_records_failed_refunds_without_moving_money() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, token="tok_refund_fail"))
    response = engine.refund(gateway_ref=ref, refund_id="re_1", amount=500, currency="EUR", idempotency_key="k")
    assert response.status_code == 200
    assert response.body["status"] == "failed"
    assert engine.ledger()[0].amount_refunded == 0
    assert "refund.failed" in [e["type"] for e in engine.drain_events()]


def test_unknown_reference_is_404() -> None:
    engine = SimulatedGatewayEngine()
    assert engine.get_payment("simpay_nope").status_code == 404
    assert engine.cancel(gateway_ref="nope", idempotency_key="k").status_code == 404
    assert engine.lookup("never-used").status_code == 404


def test_lookup_by_key_finds_the_payment_of_any_operation() -> None:
    engine = SimulatedGatewayEngine()
    ref = _ref(_authorize(engine, capture=False))
    engine.capture(gateway_ref=ref, amount=None, currency=None, idempotency_key="k-cap")
    for key, operation in (("k-auth", "authorize"), ("k-cap", "capture")):
        body = engine.lookup(key).body
        assert body["operation"] == operation
        payment = body["payment"]
        assert isinstance(payment, dict)
        assert payment["id"] == ref
        assert payment["status"] == "succeeded"


def test_ledger_exposes_duplicate_successful_charges_per_payment() -> None:
    engine = SimulatedGatewayEngine()
    _authorize(engine, key="a0", payment_id="pay_ok")
    _authorize(engine, key="b0", payment_id="pay_dup")
    _authorize(engine, key="b1", payment_id="pay_dup")  # a buggy retry with a fresh key
    _authorize(engine, key="c0", payment_id="pay_declined", token="tok_decline_fraud")
    _authorize(engine, key="c1", payment_id="pay_declined")
    duplicates = engine.duplicate_charges()
    assert set(duplicates) == {"pay_dup"}
    assert [c.idempotency_keys for c in duplicates["pay_dup"]] == [("b0",), ("b1",)]
    assert len(engine.charges_for_payment("pay_declined")) == 2
    assert len(engine.ledger_json()["data"]) == 5  # type: ignore[arg-type]


def test_fault_rates_are_seeded_and_reproducible() -> None:
    def statuses(seed: int) -> list[tuple[int, str]]:
        config = SimulatorConfig(seed=seed, error_5xx_rate=0.3, response_lost_rate=0.3)
        engine = SimulatedGatewayEngine(config)
        out = []
        for i in range(40):
            response = _authorize(engine, key=f"k{i}", payment_id=f"p{i}")
            out.append((response.status_code, response.delivery.value))
        return out

    run = statuses(7)
    assert run == statuses(7)
    assert run != statuses(8)
    codes = {status for status, _ in run}
    deliveries = {delivery for _, delivery in run}
    assert codes == {200, 500}
    assert deliveries == {Delivery.NORMAL.value, Delivery.DROP.value}


def test_5xx_fault_stores_and_response_lost_fault_charges() -> None:
    engine = SimulatedGatewayEngine(SimulatorConfig(error_5xx_rate=1.0))
    assert _authorize(engine).status_code == 500
    engine.update_config({"error_5xx_rate": 0.0, "response_lost_rate": 1.0})
    # same key: the stored 500 is replayed even though faults are now off
    assert _authorize(engine).status_code == 500
    lost = _authorize(engine, key="k-2")
    assert lost.delivery is Delivery.DROP
    assert engine.ledger()[0].amount_captured == 10_000


def test_latency_is_sampled_from_the_config() -> None:
    config = SimulatorConfig(latency_mean_ms=50.0, latency_jitter_ms=10.0)
    engine = SimulatedGatewayEngine(config)
    delays = [_authorize(engine, key=f"k{i}").delay_ms for i in range(200)]
    assert all(d >= 0 for d in delays)
    assert 45 < sum(delays) / len(delays) < 55
    assert len(set(delays)) > 100


def test_update_config_validates() -> None:
    engine = SimulatedGatewayEngine()
    with pytest.raises(ValueError):
        engine.update_config({"no_such_field": 1})
    with pytest.raises(ValueError):
        engine.update_config({"timeout_rate": 1.5})
    with pytest.raises(TypeError):
        engine.update_config({"amount_triggers": "yes"})
    assert engine.update_config({"stall_rate": 0.5}).stall_rate == 0.5
