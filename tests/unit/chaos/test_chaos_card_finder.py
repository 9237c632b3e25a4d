"""The chaos checker's own card-number finder (independent of paystream.core.sensitive)."""

from __future__ import annotations

import pytest

from chaos.checker import find_card_numbers


@pytest.mark.parametrize(
    "data",
    [
        b"cmd-3530111333300000-02c4d8",  # a JCB test card inside a command id: missed before
        b"a 4242-4242-4242-4242 b",
        b"\x02 note 4111111111111111\x00",
        b"pan=5555555555554444",
        b"d5ca15f0-9b87-5444-94c4-578723729655 4111111111111111",  # beside a UUID, still found
    ],
)
def test_card_numbers_are_found(data: bytes) -> None:
    found = find_card_numbers(data)
    assert found and all(f.startswith("****") for f in found)


@pytest.mark.parametrize(
    "data",
    [
        b"pay_0ac3e168922c590493089675592bc98e",  # a Luhn-valid run inside a random hex id
        b'"fingerprint":"9a73999357991522a8dc699c4a9ed3dc5807ed7032254a804fe4239442384921"',  # CI, session 2
        b"x 12345678-1234-5123-8123-123456789012",  # UUID groups
        b"20261126-195820",  # a time stamp
        b"runtime=0.27239120300009745",
        # an event id and the next Avro field's length byte ("0": 24 characters); found in events
        # of a benchmark's topic, and a possible flake of any scenario
        b"\x02Hd5ca15f0-9b87-5444-94c4-5787237296550lateos25_000411_qpjhltsi\x02",
    ],
)
def test_identifiers_are_not_card_numbers(data: bytes) -> None:
    assert find_card_numbers(data) == []
