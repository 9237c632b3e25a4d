"""Card-data guard (invariant I6): find card numbers (PANs) and CVVs before they go anywhere.

A PAN is a Luhn-valid run of 13-19 digits. Card numbers are often written in groups
("4242 4242 4242 4242", "4242-4242-4242-4242"), so a run may contain single spaces or dashes
between digit groups. For a run of several groups every contiguous span of whole groups with
13-19 digits is checked, so a PAN followed by another number ("4242... 1234") is still found.
An unbroken digit string longer than 19 digits is an identifier, not a card, and is not
searched for sub-windows (that would flag most long order numbers). Digits inside a machine
identifier are not a card number either: a UUID (``8-4-4-4-12`` hex), a hash-like run of 32 or
more hexadecimal characters with a letter in it (a SHA-256 fingerprint may end in 13 digits), or a
run of 20-31 hexadecimal characters with hex letters on both sides of the digits
(``pay_0ac3e168922c590493089675592bc98e``: one random hex id in a few hundred holds a
Luhn-valid run of 13+ digits by chance). A card number merely glued to letters on one side
(``4111111111111111abcd``) is still found. Nor are the decimals of a number (``0.2723912030000974``,
as faust logs its timer runtimes).

Only ``redact`` returns text derived from the input; ``scan`` returns paths, never values.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

__all__ = [
    "REDACTED_PAN",
    "find_pan",
    "find_pan_spans",
    "looks_like_cvv_field",
    "luhn_valid",
    "plainly_clean",
    "redact",
    "scan",
]

REDACTED_PAN: Final = "[REDACTED-PAN]"
_MIN_PAN_DIGITS: Final = 13
_MAX_PAN_DIGITS: Final = 19

# Digit groups joined by exactly one space or dash, not touching further digits.
_DIGIT_RUN: Final = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*(?!\d)")
_GROUP: Final = re.compile(r"\d+")
_PAN_CANDIDATE: Final = re.compile(r"[0-9](?:[ -]?[0-9]){12}")  # ASCII digits: luhn_valid takes no others
# A digit followed by 12 or more digits, spaces or dashes: every _PAN_CANDIDATE match lies inside
# one such run (the run found from the first digit of a stretch of those characters extends to
# its end). Three times cheaper to scan for than _PAN_CANDIDATE itself, whose optional
# separators the regex engine tries at every digit; the runs are then searched exactly.
_CANDIDATE_RUN: Final = re.compile(r"[0-9][0-9 -]{12,}")
_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_ID: Final = re.compile(r"[0-9a-fA-F]{20,}")
_MIN_HEX_ID: Final = 20
_MIN_HASH_HEX: Final = 32  # an MD5 is 32 hex characters, a SHA-256 64

_CVV_NAME_PARTS: Final = ("cvv", "cvc", "cvn", "securitycode", "cardverification")
_CVV_EXACT_NAMES: Final = frozenset({"csc", "cid"})
_CVV_VALUE: Final = re.compile(r"\d{3,4}")


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits."""
    if not digits or not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _is_pan(digits: str) -> bool:
    return _MIN_PAN_DIGITS <= len(digits) <= _MAX_PAN_DIGITS and luhn_valid(digits)


def _identifier_spans(text: str) -> list[tuple[int, int]]:
    """Spans of UUIDs and of 20+ character hex runs: candidates for identifiers."""
    return [match.span() for match in _UUID.finditer(text)] + [match.span() for match in _HEX_ID.finditer(text)]


def _inside_identifier(text: str, span: tuple[int, int], identifiers: list[tuple[int, int]]) -> bool:
    for start, end in identifiers:
        if start <= span[0] and span[1] <= end:
            before, after = text[start:span[0]], text[span[1]:end]
            token = text[start:end]
            if "-" in token or (len(token) >= _MIN_HASH_HEX and not token.isdigit()):
                return True  # a UUID, or a hash / hex id of 32+ characters
            if any(c.isalpha() for c in before) and any(c.isalpha() for c in after):
                return True
    return False


def find_pan_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of PAN-like runs in ``text``, left to right."""
    spans: list[tuple[int, int]] = []
    if len(text) < _MIN_PAN_DIGITS or _PAN_CANDIDATE.search(text) is None:
        # No 13 digits in a row (single spaces or dashes allowed between them), which every
        # PAN span below has: nothing to look for (most fields, ids and UUIDs), in one C search.
        return spans
    identifiers = _identifier_spans(text) if len(text) >= _MIN_HEX_ID else []
    for run in _DIGIT_RUN.finditer(text):
        if identifiers and _inside_identifier(text, run.span(), identifiers):
            continue
        if run.start() >= 2 and text[run.start() - 1] in ".," and text[run.start() - 2].isdigit():
            continue  # the fraction of a decimal number ("runtime=0.27239120300009745"), not a card
        groups = list(_GROUP.finditer(run.group()))
        base = run.start()
        index = 0
        while index < len(groups):
            found_end = -1
            digits = ""
            # The longest span of whole groups starting here that is a PAN.
            for end in range(index, len(groups)):
                digits += groups[end].group()
                if len(digits) > _MAX_PAN_DIGITS:
                    break
                if _is_pan(digits):
                    found_end = end
            if found_end >= 0:
                spans.append((base + groups[index].start(), base + groups[found_end].end()))
                index = found_end + 1
            else:
                index += 1
    return spans


def find_pan(text: str) -> bool:
    """True when ``text`` contains a Luhn-valid 13-19 digit run (groups may be separated)."""
    return bool(find_pan_spans(text))


def redact(text: str) -> str:
    """``text`` with every PAN-like run replaced by ``[REDACTED-PAN]``."""
    spans = find_pan_spans(text)
    if not spans:
        return text
    parts: list[str] = []
    position = 0
    for start, end in spans:
        parts.append(text[position:start])
        parts.append(REDACTED_PAN)
        position = end
    parts.append(text[position:])
    return "".join(parts)


def _normalized_name(name: str) -> str:
    return "".join(char for char in name.lower() if char.isalnum())


def _cvv_name(name: str) -> bool:
    normalized = _normalized_name(name)
    return normalized in _CVV_EXACT_NAMES or any(part in normalized for part in _CVV_NAME_PARTS)


# The same few field names come back with every record: their verdict is cached (short names
# only, so odd or hostile names cannot fill memory; they are checked every time).
_cvv_name_cached = functools.lru_cache(maxsize=4096)(_cvv_name)


def _is_cvv_name(name: str) -> bool:
    return _cvv_name_cached(name) if len(name) <= 64 else _cvv_name(name)


def looks_like_cvv_field(name: str, value: object) -> bool:
    """True for a CVV-ish field name (cvv, cvc, cvv2, security_code, card_verification ...)
    holding a 3-4 digit value (string, possibly padded with spaces, or a small int)."""
    named = _is_cvv_name(name)
    return named and _cvv_value(value)


def _cvv_value(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value <= 9999
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return _CVV_VALUE.fullmatch(value.strip()) is not None
    return False


def _text_has_pan(value: object) -> bool:
    if isinstance(value, str):
        return find_pan(value)
    if isinstance(value, bytes):
        return find_pan(value.decode("latin-1"))
    if isinstance(value, int) and not isinstance(value, bool):
        return find_pan(str(abs(value)))
    return False


def _children(obj: object) -> Iterator[tuple[str, object, str | None]]:
    """(path suffix, child value, field name or None) for each child of a container."""
    if isinstance(obj, Mapping):
        for key, child in obj.items():
            name = key if isinstance(key, str) else None
            yield f".{redact(str(key))}", child, name
    elif isinstance(obj, list | tuple | set | frozenset):
        items = sorted(obj, key=repr) if isinstance(obj, set | frozenset) else obj
        for index, child in enumerate(items):
            yield f"[{index}]", child, None
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield f".{field.name}", getattr(obj, field.name), field.name


_PLAIN_MAX_DEPTH: Final = 16


def plainly_clean(obj: object, *, integers: bool = True, max_text: int | None = None) -> bool:
    """True only when ``scan(obj, integers=integers)`` is certainly empty: a cheap pre-check.

    For plain JSON-like data (dicts with text keys, lists, tuples, text, numbers, None) with no
    CVV-like field name (whatever its value) and, over all its names and texts (and integers,
    unless ``integers=False``), no run of 13 digits with at most single spaces or dashes between
    them, which every PAN has, in a text where ``find_pan`` (the walk's own test) finds none;
    with ``max_text``, no text longer than that either. Joined with a NUL between them, the texts
    are searched once in C, instead of once per field in Python: a PAN in any one of them is
    still a run of the joined text, and only the texts holding a candidate run (a UUID's digit
    tail, an epoch-ms timestamp) are checked one by one. Anything else (bytes, dataclasses, sets,
    deep nesting, a card number, a CVV-like name): False, and the full ``scan`` decides.
    """
    limit = max_text if max_text is not None else -1
    parts: list[str] = []
    pending: list[tuple[object, int]] = [(obj, 0)]  # containers still to read, with their depth
    while pending:
        container, depth = pending.pop()
        if depth >= _PLAIN_MAX_DEPTH:
            return False
        if type(container) is dict:
            items: Iterable[tuple[object, object]] = container.items()
        elif type(container) is list or type(container) is tuple:
            items = ((None, child) for child in container)
        else:
            items = ((None, container),)  # a scalar at the top
        for name, value in items:
            if name is not None:
                if type(name) is not str or _is_cvv_name(name):
                    return False
                if 0 <= limit < len(name):
                    return False
                parts.append(name)
            kind = type(value)
            if kind is str or (isinstance(value, str) and kind is not bool):  # StrEnum members too
                if 0 <= limit < len(value):  # type: ignore[arg-type]
                    return False
                parts.append(value)  # type: ignore[arg-type]
            elif kind is int:
                if integers:
                    parts.append(str(value) if value >= 0 else str(-value))  # type: ignore[operator]
            elif value is None or kind is bool or kind is float:
                pass
            elif kind is dict or kind is list or kind is tuple:
                pending.append((value, depth + 1))
            else:
                return False  # bytes, sets, dataclasses, other numbers: the walk decides
    joined = "\0".join(parts)
    checked_to = -1  # the texts holding a candidate run are checked as the walk would: find_pan
    for run in _CANDIDATE_RUN.finditer(joined):
        if run.start() < checked_to:
            continue  # a second run in a text already checked
        if _PAN_CANDIDATE.search(joined, run.start(), run.end()) is None:
            continue  # digits, but never 13 with at most one space or dash between them
        start = joined.rfind("\0", 0, run.start()) + 1
        end = joined.find("\0", run.end())
        checked_to = len(joined) if end < 0 else end
        if find_pan(joined[start:checked_to]):
            return False
    return True


def scan(obj: object, *, integers: bool = True) -> list[str]:
    """Paths (``$.a.b[2]``) of every field holding a PAN or a CVV, never the values.

    Walks nested mappings, lists, tuples, sets and dataclass instances. Mapping keys are
    checked too; a key that itself holds a PAN appears redacted in the reported path.
    ``integers=False`` leaves integers out: in a record whose integer fields are typed by our
    own schema (amounts, epoch-millisecond timestamps), a 13-digit timestamp is Luhn-valid one
    time in ten and would pass for a card number.
    """
    if plainly_clean(obj, integers=integers):
        return []  # most records: one C search over all their texts (see plainly_clean)
    return _walk_scan(obj, integers)


def _walk_scan(obj: object, integers: bool) -> list[str]:
    """``scan`` field by field (the reference ``plainly_clean`` is held to in the tests)."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(value: object, path: str, name: str | None) -> None:
        if name is not None and (looks_like_cvv_field(name, value) or find_pan(name)):
            found.append(path)
            return
        if (integers or not isinstance(value, int)) and _text_has_pan(value):
            found.append(path)
            return
        if isinstance(value, str | bytes | int | float) or value is None:
            return
        if id(value) in seen:  # a cycle; nothing new below
            return
        seen.add(id(value))
        for suffix, child, child_name in _children(value):
            walk(child, path + suffix, child_name)

    walk(obj, "$", None)
    return found
