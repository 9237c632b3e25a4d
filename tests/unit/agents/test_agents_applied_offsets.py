"""The agents' applied-offsets guard (streams/input_guard.py): an offset remembered beyond the partition's end
(the topic was recreated, the app's changelogs kept) is stale, not a redelivery."""

from __future__ import annotations

import pytest

from streams.input_guard import applied_offset_is_stale


@pytest.mark.parametrize(
    ("last", "end", "stale"),
    [
        (41, 42, False),  # the newest message was applied: a redelivery of it is skipped
        (10, 5000, False),  # an old redelivery
        (5000, 3, True),  # payment.requests recreated: offsets start again at 0
        (3, 3, True),  # the end is the next offset to be written: nothing was ever read there
        (5000, None, False),  # the end is not known yet: never guess
        (5000, 0, False),
        (5000, -1, False),
    ],
)
def test_stale_only_when_the_remembered_offset_lies_beyond_the_end(last: int, end: int | None, stale: bool) -> None:
    assert applied_offset_is_stale(last, end) is stale
