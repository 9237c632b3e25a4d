"""Command idempotency: duplicate vs reused command ids."""

from __future__ import annotations

import pytest
from core_helpers import create_cmd

from paystream.core.commands import fingerprint
from paystream.core.idempotency import Duplicate, IdempotencyRecord, New, Reused, apply_idempotency
from paystream.core.rejections import RejectionReason


def _record(command_id: str = "cmd_1", fp: str = "fp_a") -> IdempotencyRecord:
    return IdempotencyRecord(command_id=command_id, fingerprint=fp, payment_id="pay_1", outcome_ref="evt_9")


def test_first_sight_is_new() -> None:
    assert apply_idempotency(None, "cmd_1", "fp_a") == New()


def test_same_id_same_parameters_is_a_duplicate_with_the_original_outcome() -> None:
    assert apply_idempotency(_record(), "cmd_1", "fp_a") == Duplicate(outcome_ref="evt_9")


def test_same_id_other_parameters_is_rejected_as_reused() -> None:
    result = apply_idempotency(_record(), "cmd_1", "fp_b")
    assert isinstance(result, Reused)
    assert result.rejection.reason is RejectionReason.IDEMPOTENCY_KEY_REUSED


def test_record_of_another_command_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="another command_id"):
        apply_idempotency(_record("cmd_other"), "cmd_1", "fp_a")


def test_retry_with_new_issued_at_and_origin_is_a_duplicate() -> None:
    first = create_cmd()
    retry = type(first)(first.command_id, first.payment_id, first.issued_at + 5_000, "other-origin", first.body)
    record = IdempotencyRecord(first.command_id, fingerprint(first), first.payment_id)
    assert isinstance(apply_idempotency(record, retry.command_id, fingerprint(retry)), Duplicate)


def test_same_id_with_another_amount_is_reused() -> None:
    first, changed = create_cmd(amount=100), create_cmd(amount=101)
    record = IdempotencyRecord(first.command_id, fingerprint(first), first.payment_id)
    assert isinstance(apply_idempotency(record, changed.command_id, fingerprint(changed)), Reused)
