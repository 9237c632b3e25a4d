"""Log redaction holds whatever handler prints the record (faust installs its own)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from paystream.logs import install_redaction

PAN = "4242 4242 4242 4242"


@pytest.fixture
def plain_handler() -> Iterator[io.StringIO]:
    factory = logging.getLogRecordFactory()
    out = io.StringIO()
    handler = logging.StreamHandler(out)  # like faust's: a plain formatter, not ours
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("faust.test")
    logger.addHandler(handler)
    try:
        install_redaction()
        install_redaction()  # idempotent
        yield out
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(factory)


def test_messages_arguments_and_tracebacks_are_redacted(plain_handler: io.StringIO) -> None:
    log = logging.getLogger("faust.test")
    log.warning("value %s in %r", PAN, {"card": "4111111111111111"})
    try:
        raise ValueError(f"bad input {PAN}")
    except ValueError:
        log.exception("failed")
    text = plain_handler.getvalue()
    assert "4242" not in text and "4111111111111111" not in text
    assert text.count("[REDACTED-PAN]") == 3 and "ValueError" in text


def test_mode_style_formatters_do_not_format_twice(plain_handler: io.StringIO) -> None:
    from mode.utils.logging import ExtensionFormatter

    handler = logging.StreamHandler(plain_handler)
    handler.setFormatter(ExtensionFormatter(stream=plain_handler, fmt="%(message)s"))
    logger = logging.getLogger("mode.test")
    logger.addHandler(handler)
    try:
        logger.warning("100%% of %s", "4242424242424242")
        logger.warning("literal % s and %d")  # a message with '%' and no args (as mode's stderr proxy logs)
        logger.warning("Crashed reason=%r", ValueError("x"), "extra")  # broken: too many args (seen in mode)
    finally:
        logger.removeHandler(handler)
    text = plain_handler.getvalue()
    assert "100% of [REDACTED-PAN]" in text and "literal % s and %d" in text
    assert "Crashed reason=%r" in text and "ValueError" in text and "Logging error" not in text
