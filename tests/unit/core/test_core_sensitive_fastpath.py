"""The card-data guard's fast path (``plainly_clean``) never hides what the field-by-field walk finds.

``scan`` and the audit encoder first run one C search over all texts of a record; only when it
finds a candidate run (or a CVV-like name, or data that is not plain JSON) do they walk field by
field. These tests generate records full of digits, separators, card numbers, CVV-like names and
long texts, and hold both paths to the same answer.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from paystream.core.sensitive import _walk_scan, plainly_clean, scan
from paystream.security.audit import AuditRecord, _encode_scrubbed, encode_record

CARDS = ["4242424242424242", "4242 4242 4242 4242", "4111-1111-1111-1111", "378282246310005", "6011111111111117"]

# Texts dense in digit runs, separators and near-misses, sometimes with a real card number in them.
digity = st.text(alphabet="0123456789 -.,:_abcdefXYZ\u0663\u00e9\n", max_size=40)
texts = st.one_of(
    digity,
    st.builds(lambda a, card, b: a + card + b, digity, st.sampled_from(CARDS), digity),
    st.text(max_size=30),
    st.just("x" * 600),
)
names = st.one_of(st.sampled_from(["cvv", "card_cvc", "CVV2", "security_code", "csc", "note", "amount", "id"]), texts)
scalars = st.one_of(texts, st.integers(min_value=-10**19, max_value=10**19), st.booleans(), st.none(),
                    st.floats(allow_nan=False), st.sampled_from([123, 4242424242424242, "737", " 1234 "]))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(names, inner, max_size=4)),
    max_leaves=12,
)


@settings(max_examples=600, deadline=None)
@given(values, st.booleans())
def test_plainly_clean_only_when_the_walk_finds_nothing(value: Any, integers: bool) -> None:
    if plainly_clean(value, integers=integers):
        assert _walk_scan(value, integers) == []
    assert scan(value, integers=integers) == _walk_scan(value, integers)


def test_the_fast_path_is_taken_for_ordinary_records_and_refused_for_card_data() -> None:
    record = {"event_id": "1b4e28ba-2d11-4b3e-9c1a-0242ac130003", "sequence": 3, "status": "succeeded",
              "amount": 1999, "currency": "EUR", "metadata": {"cart_id": "cart_ab12", "channel": "web"},
              "occurred_at": 1_700_000_000_000}
    # A 13-digit timestamp, a UUID with a digit tail: candidate runs, checked as the walk checks
    # them (Luhn), so not card numbers; one timestamp in ten is Luhn-valid and is one (F9).
    assert plainly_clean(record)
    assert plainly_clean({**record, "causation": "990ebd58-447a-5874-9226-867870510744"})
    assert not plainly_clean({**record, "occurred_at": 1_700_000_000_004})
    assert scan({**record, "occurred_at": 1_700_000_000_004}) == ["$.occurred_at"]
    assert plainly_clean({**record, "occurred_at": 1_700_000_000_004}, integers=False)
    record.pop("occurred_at")
    assert plainly_clean(record)
    for card in CARDS:
        assert not plainly_clean({**record, "note": f"card {card} please"})
        assert scan({**record, "note": f"card {card} please"}) == ["$.note"]
    assert not plainly_clean({**record, "cvv": "no"})  # a CVV-like name: the walk decides
    assert not plainly_clean({**record, "n": 4242424242424242})
    assert plainly_clean({**record, "n": 4242424242424242}, integers=False)
    assert not plainly_clean({**record, "long": "x" * 600}, max_text=500)
    assert not plainly_clean({**record, "raw": b"bytes"})  # not plain JSON: the walk decides


@settings(max_examples=400, deadline=None)
@given(texts, texts, texts, st.dictionaries(names, values, max_size=5))
def test_audit_records_encode_as_the_scrubbing_path_does(actor: str, resource: str, origin: str,
                                                          detail: dict[str, Any]) -> None:
    record = AuditRecord(audit_id="event:1b4e28ba-2d11-4b3e-9c1a-0242ac130003", occurred_at=1_700_000_000_000,
                         actor=actor, action="event.PaymentSucceeded", resource=resource, outcome="success",
                         origin=origin, detail=detail)
    encoded = encode_record(record)
    assert encoded == _encode_scrubbed(record)
    assert scan(json.loads(encoded), integers=False) == []  # whichever path: no card data left


def test_a_card_number_inside_a_longer_run_of_digits_and_separators_is_still_found() -> None:
    """The pre-check scans for runs of digits, spaces and dashes first and searches each run for
    a candidate; a card number that does not start the run (after a short group, after
    separators) or that is split by a double separator must get the same answer as the walk."""
    cases = ["ref 12 -4242424242424242 ok", "- 4242 4242 4242 4242", "7-7 4111-1111-1111-1111",
             "4242  4242 4242 4242", "1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6", "99 99 4242424242424242-",
             "000000000000", "2026-11-27 12:00 4242424242424242"]
    for text in cases:
        record = {"note": text, "id": "a1"}
        walked = _walk_scan(record, True)
        assert plainly_clean(record) is (walked == []), text
    assert not plainly_clean({"note": "ref 12 -4242424242424242 ok"})  # found past a short leading group
    assert plainly_clean({"note": "000000000000"})  # twelve digits: no run long enough
