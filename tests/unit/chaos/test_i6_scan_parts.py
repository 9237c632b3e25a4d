"""The whole-suite I6 scan's parts (tests/support/i6.py) that need no stack: what it searches in
an Avro record and in raw bytes, how it reports a finding (where, masked), and the logs it reads."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import fastavro

from chaos.checker import Schemas, mask_pan
from tests.support.i6 import I6Report, _scan_bytes, log_files, scan_logs

SCHEMA = fastavro.parse_schema({
    "type": "record", "name": "Probe", "namespace": "io.paystream.test",
    "fields": [{"name": "note", "type": "string"}, {"name": "amount", "type": "long"},
               {"name": "meta", "type": {"type": "map", "values": "string"}}],
})


class LocalSchemas(Schemas):
    """The writer schema by id without a registry (id 7 is SCHEMA)."""

    def __init__(self) -> None:
        super().__init__("http://registry.invalid")

    def writer(self, schema_id: int) -> Any:
        return SCHEMA if schema_id == 7 else None


def framed(record: dict[str, Any], schema_id: int = 7) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, record)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


def test_a_card_number_in_any_string_of_an_avro_record_is_found_masked() -> None:
    report = I6Report()
    in_note = framed({"note": "card 4000056655665556", "amount": 100, "meta": {}})
    in_map = framed({"note": "", "amount": 100, "meta": {"x": "5555555555554444"}})
    in_map_key = framed({"note": "", "amount": 100, "meta": {"378282246310005": "x"}})
    assert _scan_bytes(LocalSchemas(), in_note, report) == ["400005******5556"]
    assert _scan_bytes(LocalSchemas(), in_map, report) == ["555555******4444"]
    assert _scan_bytes(LocalSchemas(), in_map_key, report) == ["378282*****0005"]
    assert report.avro_records == 3


def test_numbers_of_a_decoded_record_are_not_searched_but_undecodable_bytes_are() -> None:
    report = I6Report()
    # A long (an amount, a timestamp) is not a card number sent in a string field.
    assert _scan_bytes(LocalSchemas(), framed({"note": "", "amount": 4242424242424242, "meta": {}}), report) == []
    # Unknown schema id, JSON, poison: the raw bytes are searched.
    unknown = framed({"note": "4242424242424242", "amount": 1, "meta": {}}, schema_id=8)
    assert _scan_bytes(LocalSchemas(), unknown, report) == ["424242******4242"]
    assert _scan_bytes(LocalSchemas(), b'{"pan":"4242 4242 4242 4242"}', report) == ["424242******4242"]
    assert report.raw_records == 2 and report.avro_records == 1


def test_log_findings_name_file_and_line_and_never_show_the_number(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "kafka-broker").mkdir(parents=True)
    (logs / "kafka-broker" / "server.log.2026-11-26-17").write_text("ok\n")
    worker = tmp_path / "worker0" / "worker.log"
    worker.parent.mkdir()
    worker.write_text("started\nrejected command note=4000056655665556 id=pay_1\n")
    (tmp_path / "worker0" / "data.db").write_text("4242424242424242")  # not a log: not read
    try:
        found = log_files([tmp_path], every_file_under=[logs])
        assert set(found) == {worker, logs / "kafka-broker" / "server.log.2026-11-26-17"}
        report = I6Report()
        scan_logs(found, report)
        assert report.findings == [f"log {worker}:2: 400005******5556"]
        assert "4000056655665556" not in " ".join(report.findings) and report.log_lines == 3
    finally:
        # This planted log lies under pytest's basetemp, which the whole-suite scan reads last:
        # (it did find it there). Remove the card numbers this test wrote.
        worker.unlink()
        (tmp_path / "worker0" / "data.db").unlink()


def test_masking_keeps_the_first_six_and_last_four() -> None:
    assert mask_pan("4242424242424242") == "424242******4242"
    assert mask_pan("4222222222222") == "422222***2222"
