"""The vault sink's row mapping: only sealed tokens and masked data reach Postgres."""

from __future__ import annotations

from typing import Any

from sinks.vault import method_row

SEALED = "v1:k1:bm9uY2U:c2VhbGVk"


def _record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "kind": "payment_method", "method_id": "pm_1", "customer_id": "cus_1", "gateway": "simulated",
        "status": "active", "sealed_token": SEALED, "brand": "visa", "last4": "4242", "exp_month": 1,
        "exp_year": 2031, "fingerprint": "fp", "version": 1,
        "created_at": 4_242_424_242_424, "updated_at": 4_242_424_242_424,  # Luhn-valid 13 digits, yet a time
    }
    record.update(changes)
    return record


def test_an_active_method_keeps_its_sealed_token_and_key_id() -> None:
    row = method_row(_record())
    assert row is not None and row["token"] == SEALED and row["key_id"] == "k1" and row["removed_at"] is None


def test_removed_and_erased_methods_carry_no_token() -> None:
    for status in ("removed", "erased"):
        row = method_row(_record(status=status, sealed_token=None, version=2))
        assert row is not None and row["token"] is None and row["removed_at"] is not None


def test_removed_at_comes_from_the_record_so_an_erasure_alone_keeps_the_removal_time() -> None:
    """After compaction the vault topic may hold only the erasure record of a method removed
    earlier: the row's removed_at is still the removal's time (the running sink kept it from
    the removal record), so a rebuild equals the original."""
    removal, erasure = 4_000_000_000_000, 4_100_000_000_000
    row = method_row(_record(status="erased", sealed_token=None, version=3, updated_at=erasure, removed_at=removal))
    assert row is not None and row["removed_at"] is not None
    assert row["removed_at"].timestamp() * 1000 == removal
    old = method_row(_record(status="removed", sealed_token=None, version=2, updated_at=erasure))  # before removed_at
    assert old is not None and old["removed_at"] is not None and old["removed_at"].timestamp() * 1000 == erasure


def test_unsealed_tokens_and_card_data_are_refused() -> None:
    assert method_row(_record(sealed_token="pm_plaintext")) is None
    assert method_row(_record(fingerprint="4242 4242 4242 4242")) is None
    assert method_row(_record(kind="other")) is None
