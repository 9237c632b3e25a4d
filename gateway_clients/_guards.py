"""Request guards shared by the HTTP gateway clients: checked before any I/O, so a bad value
never reaches a gateway (and never makes the SDK invent an idempotency key)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Self

from gateway_clients.protocol import PermanentGatewayError


def check_amount(amount: object) -> None:
    """Money is a positive int of minor units: bool and float are refused before any I/O."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise PermanentGatewayError(
            f"amount must be int minor units, got {type(amount).__name__}", gateway_code="invalid_amount"
        )
    if amount <= 0:
        raise PermanentGatewayError("amount must be positive", gateway_code="invalid_amount")


def check_key(key: str) -> None:
    """Every write carries our deterministic idempotency key (stripe-python would invent one)."""
    if not key:
        raise PermanentGatewayError("idempotency_key must not be empty", gateway_code="missing_idempotency_key")


def path_segment(segment: str) -> str:
    """Refuse references that would change the URL path (they come from outside)."""
    if not segment or any(c in segment for c in "/?#%") or ".." in segment:
        raise PermanentGatewayError(f"invalid gateway reference {segment!r}", gateway_code="invalid_reference")
    return segment


def elapsed_ms(started: float) -> float:
    """Milliseconds since a ``time.perf_counter()`` reading (timing only, never money)."""
    return (time.perf_counter() - started) * 1000.0


class ClosingClient:
    """``async with client:`` closes it: the one context-manager pair every HTTP client shares."""

    async def aclose(self) -> None:  # pragma: no cover - each client closes its own transport
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
