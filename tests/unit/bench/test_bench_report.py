"""What the benchmark prints and writes: numbers, ratios to the baseline, markdown, splicing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench.cli import parse_args
from bench.report import (
    BEGIN,
    END,
    add_ratios,
    fmt_num,
    fmt_ratio,
    latency_rows,
    markdown_summary,
    md_table,
    other_rows,
    print_report,
    splice,
    throughput_rows,
    write_json,
)


def sample() -> dict[str, Any]:
    pct = {"p50": 12.5, "p95": 40.0, "p99": 80.0, "p99.9": 120.0}
    return {
        "meta": {"timestamp": "20260101T000000", "profile": "quick", "duration_s": 95.0,
                 "machine": {"nproc": 2, "memory_gib": 23.0, "cpu": "Test CPU", "python": "3.11.7",
                             "loadavg_start": [1.5, 1, 1], "loadavg_end": [2.5, 2, 2]},
                 "params": {"payments": 2000, "http_payments": 1000, "partitions": 4, "commit_interval_s": 0.1,
                            "gateway_batch_size": 256, "latency_seconds": 5, "recovery_k": 10000}},
        "baseline": [{"guarantee": "at_least_once", "messages": 2000, "seconds": 0.5, "per_s": 4000.0},
                     {"guarantee": "exactly_once", "messages": 2000, "seconds": 1.0, "per_s": 2000.0}],
        "textbook": [{"name": "textbook faust agent", "guarantee": "at_least_once", "gateway": "in-process",
                      "gateway_latency_ms": 0, "payments": 2000, "answered": 2000, "per_s": 80.0,
                      "steady_per_s": 90.0, "outcomes": {"PaymentSucceeded": 2000}}],
        "throughput": [
            {"name": "paystream exactly_once", "guarantee": "exactly_once", "gateway": "in-process",
             "gateway_latency_ms": 0, "answered": 2000, "per_s": 200.0, "steady_per_s": 250.0, "pg_per_s": 190.0,
             "worker_cpu_ms": 1.254},
            {"name": "paystream at_least_once", "guarantee": "at_least_once", "gateway": "in-process",
             "gateway_latency_ms": 0, "answered": 2000, "per_s": 400.0, "pg_per_s": 380.0},
            {"name": "paystream HTTP gateway 200 ms", "guarantee": "exactly_once", "gateway": "HTTP",
             "gateway_latency_ms": 200.0, "answered": 1000, "per_s": 150.0, "pg_per_s": 140.0,
             "x_serialised_bound": 7.5},
        ],
        "latency": [{"name": "exactly_once @ 50% of eos max", "rate_per_s": 100.0, "unanswered": 0,
                     "terminal": {"count": 500, "mean_ms": 20.0, "max_ms": 130.0, "percentiles_ms": pct},
                     "postgres": None,
                     "to_applied": {"count": 500, "mean_ms": 9.0, "max_ms": 60.0,
                                    "percentiles_ms": {"p50": 7.25, "p99": 50.0}},
                     "applied_to_visible": None}],
        "recovery": [{"name": "memory store, empty local state", "payments": 10000, "seconds_to_ready": 8.25,
                      "seconds_to_first_answer": 9.5}],
        "sink": [{"rows": 4000, "per_s": 3000.0, "per_s_from_start": 1500.0}],
        "startup": [{"name": "worker start, empty state (eos)", "seconds": 4.0}],
        "errors": [{"scenario": "http", "error": "BenchError: boom"}],
        "notes": ["rocksdict is not installed"],
    }


def test_numbers_are_grouped_and_missing_values_show_a_dash() -> None:
    assert fmt_num(1234.5) == "1,234"
    assert fmt_num(1234.56, 1) == "1,234.6"
    assert fmt_num(None) == "–"
    assert fmt_ratio(None) == "–"
    assert fmt_ratio(0.0123) == "0.012×"
    assert fmt_ratio(2.345) == "2.3×"
    assert fmt_ratio(12.3) == "12×"


def test_each_run_is_compared_with_the_baseline_of_its_own_guarantee() -> None:
    data = add_ratios(sample())
    by_name = {r["name"]: r for r in data["throughput"]}
    assert by_name["paystream exactly_once"]["vs_baseline"] == 0.1  # 200 / 2000
    assert by_name["paystream at_least_once"]["vs_baseline"] == 0.1  # 400 / 4000
    assert by_name["paystream HTTP gateway 200 ms"]["vs_baseline"] == 0.075
    assert data["eos_vs_alo"] == 0.5


def test_in_process_runs_are_compared_with_the_textbook_agent() -> None:
    data = add_ratios(sample())
    by_name = {r["name"]: r for r in data["throughput"]}
    assert by_name["paystream exactly_once"]["vs_textbook"] == 2.5  # 200 / 80
    assert by_name["paystream at_least_once"]["vs_textbook"] == 5.0  # 400 / 80
    assert by_name["paystream HTTP gateway 200 ms"]["vs_textbook"] is None
    assert data["vs_textbook"] == {"exactly_once": 2.5, "at_least_once": 5.0}
    assert data["textbook"][0]["vs_baseline"] == 0.02  # 80 / 4000, the raw loop at_least_once


def test_the_textbook_target_is_judged_per_guarantee() -> None:
    data = sample()
    data["textbook"][0]["per_s"] = 160.0
    other = dict(other_rows(add_ratios(data)))
    assert other["paystream exactly_once ÷ textbook faust agent (throughput)"] == "1.2× (target ≥ 2×: not met)"
    assert other["paystream at_least_once ÷ textbook faust agent (throughput)"] == "2.5× (target ≥ 2×: met)"


def test_without_a_textbook_run_there_is_no_textbook_ratio() -> None:
    for textbook in ([], [{"name": "textbook faust agent", "guarantee": "at_least_once", "per_s": 0.0}]):
        data = sample()
        data["textbook"] = textbook
        add_ratios(data)
        assert all(r["vs_textbook"] is None for r in data["throughput"])
        assert data["vs_textbook"] == {"exactly_once": None, "at_least_once": None}
        assert not any("textbook" in row[0] for row in other_rows(data))
        assert all(row[8] == "–" for row in throughput_rows(data) if row[0].startswith("paystream"))


def test_ratios_are_absent_without_a_baseline() -> None:
    data = sample()
    data["baseline"] = []
    add_ratios(data)
    assert all(r["vs_baseline"] is None for r in data["throughput"])


def test_table_rows_carry_the_figures() -> None:
    data = add_ratios(sample())
    rows = throughput_rows(data)
    assert rows[0][:5] == ["raw Kafka loop, at_least_once", "at_least_once", "–", "2,000", "4,000"]
    http = next(r for r in rows if r[0].startswith("paystream HTTP"))
    assert http[2] == "HTTP 200 ms"
    assert http[7] == "0.075×"
    assert http[8] == "–"  # a gateway's latency, not the pipeline: no textbook ratio
    assert http[9] == "7.5×"
    lat = latency_rows(data)[0]
    assert lat[:6] == ["exactly_once @ 50% of eos max", "100.0", "12.5", "40.0", "80.0", "120.0"]
    assert lat[6:10] == ["–"] * 4  # no Postgres latencies in this sample
    assert lat[10:] == ["0", "7.2 / 50.0", "–"]  # the event's first half; its second one missing
    other = dict(other_rows(data))
    assert other["restart, 10,000 payments in the table, memory store, empty local state"] == (
        "8.2 s to /ready, 9.5 s to the first answer")
    assert other["exactly_once ÷ at_least_once (throughput)"] == "0.5×"


def test_markdown_summary_names_the_command_machine_and_load() -> None:
    text = markdown_summary(add_ratios(sample()), "python -m bench --quick")
    assert "python -m bench --quick" in text
    assert "2 CPUs (Test CPU), 23.0 GiB memory" in text
    assert "load average (1 min) 1.5 at the start, 2.5 at the end" in text
    assert ("| paystream exactly_once | exactly_once | in-process | 2,000 | 200 | 250 | 190 | 0.1× | 2.5× "
            "| – | 1.25 |\n") in text  # the worker's CPU per payment over the burst, when measured
    assert ("| textbook faust agent, at_least_once | at_least_once | in-process | 2,000 | 80 | 90 | – | 0.02× | 1× "
            "| – | – |\n") in text
    assert "| paystream exactly_once ÷ textbook faust agent (throughput) | 2.5× (target ≥ 2×: met) |" in text
    assert "- http: BenchError: boom" in text
    assert "- rocksdict is not installed" in text
    assert text.startswith("> **Smoke run (`--quick`)**")


def test_md_table_escapes_pipes() -> None:
    assert md_table(["a", "b"], [["x|y", "1"]]).splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_splice_replaces_only_the_generated_block() -> None:
    doc = f"# Performance\n\nintro\n\n{BEGIN}\nold figures\n{END}\n\n## How to read\nprose\n"
    out = splice(doc, "new figures\n")
    assert "old figures" not in out
    assert out.startswith("# Performance\n\nintro\n\n")
    assert out.endswith("\n\n## How to read\nprose\n")
    assert f"{BEGIN}\nnew figures\n{END}" in out
    assert splice(out, "newer\n").count(BEGIN) == 1


def test_splice_appends_when_there_is_no_block_yet() -> None:
    out = splice("# Performance\n", "figures\n")
    assert out == f"# Performance\n\n{BEGIN}\nfigures\n{END}\n"


def test_report_prints_every_section(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    print_report(console, add_ratios(sample()))
    text = console.export_text()
    for needle in ("Throughput", "Latency", "raw Kafka loop, exactly_once", "textbook faust agent, at_least_once",
                   "÷ textbook", "BenchError: boom", "sink alone"):
        assert needle in text
    write_json(tmp_path / "sub" / "r.json", sample())
    assert json.loads((tmp_path / "sub" / "r.json").read_text())["meta"]["profile"] == "quick"


def test_cli_defaults_and_overrides() -> None:
    args = parse_args(["--quick", "--recovery-k", "1000000", "--only", "eos", "--only", "baseline"])
    assert args.quick and args.recovery_k == 1_000_000
    assert args.only == ["eos", "baseline"]
    assert parse_args(["--only", "textbook"]).only == ["textbook"]
    assert parse_args([]).docs is None
    assert parse_args([]).warmup_payments is None and parse_args(["--warmup-payments", "0"]).warmup_payments == 0


def test_the_warm_up_is_named_in_the_parameters_only_when_there_was_one() -> None:
    from bench.run import DEFAULT, QUICK

    assert DEFAULT.warmup_payments > 0 and QUICK.warmup_payments == 0
    results = sample()
    assert "warm-up" not in markdown_summary(add_ratios(results), "python -m bench")
    results["meta"]["params"]["warmup_payments"] = 10_000
    assert ("an unmeasured exactly_once warm-up burst of 10,000 payments first."
            in markdown_summary(add_ratios(results), "python -m bench"))


def test_several_workers_are_compared_with_one_not_with_the_textbook_agent() -> None:
    data = sample()
    # listed first on purpose: the one-worker figures must not be taken from it
    data["throughput"].insert(0, {"name": "paystream exactly_once, 2 workers", "guarantee": "exactly_once",
                                  "gateway": "in-process", "gateway_latency_ms": 0, "workers": 2, "answered": 2000,
                                  "per_s": 300.0, "worker_cpu_ms": 1.5})
    add_ratios(data)
    scale, eos = data["throughput"][0], data["throughput"][1]
    assert scale["vs_one_worker"] == pytest.approx(1.5)  # 300 ÷ the one worker's 200
    assert scale["vs_textbook"] is None  # two workers against one textbook agent says nothing
    assert data["vs_textbook"]["exactly_once"] == pytest.approx(200.0 / 80.0)
    assert data["eos_vs_alo"] == pytest.approx(0.5)
    assert "vs_one_worker" not in eos
    other = dict(other_rows(data))
    assert other["exactly_once, 2 workers ÷ one worker (throughput)"].startswith("1.5×")
    assert "1.50 ms" in other["exactly_once, 2 workers ÷ one worker (throughput)"]


def test_a_group_of_workers_sums_their_cpu_and_is_alive_while_all_are() -> None:
    import subprocess
    import sys

    from bench.env import Proc, ProcGroup

    procs = [Proc(f"p{i}", subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]), Path("/dev/null"))
             for i in range(2)]
    group = ProcGroup("pair", procs)
    try:
        assert group.alive()
        cpu = group.cpu_seconds()
        assert cpu is not None and cpu == pytest.approx(sum(p.cpu_seconds() or 0.0 for p in procs), abs=0.05)
        procs[0].stop()
        assert not group.alive()  # one worker gone: the group's burst would not finish
        assert group.cpu_seconds() is None  # a process that is gone has no CPU to read
    finally:
        group.stop()
