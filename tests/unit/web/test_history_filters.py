"""The history listing's filters and cursor: epoch-millisecond time bounds (exact, bounded),
opaque keyset cursors that round-trip to the microsecond and refuse anything else, and the SQL
each filter combination becomes (every combination ends in the keyset order the indexes hold)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from paystream.web.edge import MAX_EPOCH_MS, HttpError, epoch_ms_filter, page_cursor
from paystream.web.queries import PageKey, _payment_filters


def test_epoch_ms_filter_is_exact_and_bounded() -> None:
    assert epoch_ms_filter({}, "from") is None
    assert epoch_ms_filter({"from": "1764187262345"}, "from") == datetime(2025, 11, 26, 20, 1, 2, 345000, tzinfo=UTC)
    assert epoch_ms_filter({"to": "0"}, "to") == datetime(1970, 1, 1, tzinfo=UTC)
    assert epoch_ms_filter({"to": str(MAX_EPOCH_MS)}, "to") == datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
    for bad in ("", "-1", "1.5", "2026-01-01T00:00:00Z", str(MAX_EPOCH_MS + 1), "١٢٣", " 12", "9" * 40):
        with pytest.raises(HttpError) as exc:
            epoch_ms_filter({"from": bad}, "from")
        assert (exc.value.status, exc.value.reason) == (400, "invalid_filter"), bad


def test_cursor_round_trips_to_the_microsecond() -> None:
    key = PageKey(datetime(2026, 11, 26, 20, 1, 2, 345678, tzinfo=UTC), "pay_a:b-c")
    assert page_cursor(key.encode()) == key
    assert page_cursor(None) is None
    assert "=" not in key.encode()  # URL-safe without padding


@pytest.mark.parametrize("bad", ["", "AAAA", "not base64!", "x" * 401, PageKey.encode(
    PageKey(datetime(2026, 1, 1, tzinfo=UTC), "p")).replace("O", "P")[:-1] + "$"])
def test_foreign_cursors_are_400(bad: str) -> None:
    with pytest.raises(HttpError) as exc:
        page_cursor(bad)
    assert (exc.value.status, exc.value.reason) == (400, "invalid_cursor")


def test_filters_become_one_keyset_range() -> None:
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    where, params = _payment_filters(None, "cus_1", t1, t2, PageKey(t1, "pay_9"))
    assert where == ["customer_id = %s", "created_at >= %s", "created_at < %s", "(created_at, payment_id) > (%s, %s)"]
    assert params == ["cus_1", t1, t2, t1, "pay_9"]
    assert _payment_filters(None, None, None, None, None) == (["TRUE"], [])
