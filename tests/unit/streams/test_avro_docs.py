"""docs/events.md is generated from avro/*.avsc (streams/avro_docs.py) and must stay current."""

from __future__ import annotations

import json

from click.testing import CliRunner

from paystream.cli import main
from streams.avro_docs import DOC, render
from streams.topics import AVRO_DIR


def test_events_doc_is_up_to_date() -> None:
    assert DOC.read_text() == render(), "docs/events.md is stale: run `paystream schemas docs > docs/events.md`"


def _records(schema: object) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    if isinstance(schema, list):
        for s in schema:
            found += _records(s)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            found.append(schema)
            for f in schema["fields"]:  # type: ignore[union-attr]
                found += _records(f["type"])
        elif schema.get("type") in ("array", "map"):
            found += _records(schema.get("items") or schema.get("values"))
    return found


def test_every_record_field_and_doc_string_is_documented() -> None:
    text = render()
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        for record in _records(json.loads(path.read_text())):
            assert f"### {record['name']}" in text or f"`{record['name']}`" in text, record["name"]
            for f in record["fields"]:  # type: ignore[attr-defined]
                assert f"| `{f['name']}` |" in text, (record["name"], f["name"])
                if f.get("doc"):
                    assert f["doc"].replace("|", "\\|") in text, (record["name"], f["name"])


def test_cli_prints_the_doc_and_checks_it() -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["schemas", "docs"])
    assert out.exit_code == 0 and out.output == render()
    assert runner.invoke(main, ["schemas", "docs", "--check"]).exit_code == 0
