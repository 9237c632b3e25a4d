"""`make demo`'s chart (paystream/demo.py): a real PNG of outcomes and latencies. The demo's run
itself needs the stack (`make demo`); its summary reads payment.events and Postgres."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from paystream import demo

pytest.importorskip("matplotlib", reason="the chart needs matplotlib (the bench extra, which `make install` adds)")


def test_chart_is_a_png_of_outcomes_and_latencies(tmp_path: Path) -> None:
    plan = [{"payment_id": f"p{i}"} for i in range(6)]
    status = {"p0": "succeeded", "p1": "succeeded", "p2": "failed", "p3": "requires_capture", "p4": "refunded"}
    out = demo._chart(plan, status, [12.0, 15.5, 40.0, 90.0], out=tmp_path / "results" / "demo.png")
    assert out == tmp_path / "results" / "demo.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 400)  # two panels side by side, 11 x 4 inches at 100 dpi
    assert len(data) > 10_000, "an empty canvas compresses to almost nothing"


def test_chart_counts_payments_without_a_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    bars: list[tuple[list[str], list[int]]] = []
    real_bar = matplotlib.axes.Axes.bar

    def bar(self: matplotlib.axes.Axes, x: list[str], height: list[int], *a: object, **kw: object) -> object:
        bars.append((list(x), list(height)))
        return real_bar(self, x, height, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    demo._chart([{"payment_id": "a"}, {"payment_id": "b"}, {"payment_id": "c"}], {"a": "failed"}, [5.0],
                out=tmp_path / "demo.png")
    assert bars[0] == (["failed", "no result"], [1, 2])  # (the histogram draws bars too, after it)


def test_the_psql_hint_hides_a_password() -> None:
    assert demo._without_password("postgresql://ps:s3cret@db:5432/paystream") == "postgresql://ps:****@db:5432/paystream"
    assert demo._without_password("postgresql://postgres@127.0.0.1:15432/paystream") == (
        "postgresql://postgres@127.0.0.1:15432/paystream")
