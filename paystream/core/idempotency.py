"""Command idempotency by ``command_id`` (pure).

The agent keeps one ``IdempotencyRecord`` per command id it has accepted or rejected. A
repeat with the same parameters (same ``commands.fingerprint``) is a duplicate: the agent
answers with the original outcome and does nothing else. A repeat with other parameters is
rejected with ``idempotency_key_reused``.
"""

from __future__ import annotations

from dataclasses import dataclass

from paystream.core.rejections import Rejection, RejectionReason

__all__ = ["Duplicate", "IdempotencyDecision", "IdempotencyRecord", "New", "Reused", "apply_idempotency"]


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    command_id: str
    fingerprint: str
    payment_id: str
    outcome_ref: str | None = None  # e.g. the event_id of the command's result or rejection
    recorded_at: int = 0  # epoch ms, for expiry by the agent


@dataclass(frozen=True, slots=True)
class New:
    """First time this command id is seen: process it, then store a record."""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """Seen before with the same parameters: answer with the original outcome."""

    outcome_ref: str | None


@dataclass(frozen=True, slots=True)
class Reused:
    """Seen before with different parameters: reject."""

    rejection: Rejection


IdempotencyDecision = New | Duplicate | Reused


def apply_idempotency(record: IdempotencyRecord | None, command_id: str, fingerprint: str) -> IdempotencyDecision:
    """Classify a command against the record stored under its ``command_id`` (if any).

    Raises ``ValueError`` when ``record`` belongs to another command id: that is a lookup bug
    in the caller, not a property of the command.
    """
    if record is None:
        return New()
    if record.command_id != command_id:
        raise ValueError("idempotency record belongs to another command_id")
    if record.fingerprint == fingerprint:
        return Duplicate(outcome_ref=record.outcome_ref)
    return Reused(
        Rejection(
            reason=RejectionReason.IDEMPOTENCY_KEY_REUSED,
            detail="command_id was already used for a command with different parameters",
        )
    )
