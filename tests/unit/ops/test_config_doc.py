"""docs/configuration.md is generated from paystream.config.Settings and
paystream.web.settings.WebSettings by ops/gen_config_doc.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from pydantic import SecretStr

from paystream.config import Settings
from paystream.web.settings import WebSettings

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "ops" / "gen_config_doc.py"
DOC = ROOT / "docs" / "configuration.md"
FIELDS = {**Settings.model_fields, **WebSettings.model_fields}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_doc", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_is_up_to_date() -> None:
    expected = _generator().render()
    assert DOC.read_text() == expected, (
        "docs/configuration.md is out of date with paystream/config.py: "
        "run `python ops/gen_config_doc.py > docs/configuration.md`"
    )


def test_every_setting_has_a_row_with_its_env_var() -> None:
    text = DOC.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `PAYSTREAM_")]
    assert len(rows) == len(Settings.model_fields) + len(WebSettings.model_fields) == len(FIELDS)
    for name in FIELDS:
        assert f"| `PAYSTREAM_{name.upper()}` |" in text


def test_secret_defaults_are_never_printed() -> None:
    text = DOC.read_text()
    for name, field in FIELDS.items():
        if field.annotation is SecretStr:
            secret = field.default.get_secret_value()
            assert not secret or secret not in text, f"the default of {name} leaks into the docs"
            row = next(line for line in text.splitlines() if f"`PAYSTREAM_{name.upper()}`" in line)
            assert "(secret)" in row


def test_script_check_mode_agrees() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
