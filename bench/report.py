"""Turning a run's results into what people read: a rich table on stdout, a JSON file, two PNG
charts and docs/performance.md. Everything but the chart drawing is a pure function of the
results dictionary (see ``Results.to_json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.stats import PERCENTILES, percentile_label, ratio

PCT_LABELS = [percentile_label(p) for p in PERCENTILES]


def fmt_num(value: float | int | None, digits: int = 0) -> str:
    """1234.5 -> "1,234" (or with ``digits`` decimals); None -> "–"."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    """0.0123 -> "0.012×", 12.3 -> "12×"; None -> "–"."""
    if value is None:
        return "–"
    if value >= 10:
        return f"{value:,.0f}×"
    if value >= 1:
        return f"{value:.1f}×"
    return f"{value:.2g}×"


def baseline_rate(data: Mapping[str, Any], guarantee: str) -> float | None:
    for row in data.get("baseline", []):
        if row.get("guarantee") == guarantee:
            return float(row["per_s"])
    return None


def textbook_rate(data: Mapping[str, Any]) -> float | None:
    """Payments/s of the textbook faust agent (bench/textbook.py), if it ran and answered."""
    for row in data.get("textbook", []):
        if row.get("per_s"):
            return float(row["per_s"])
    return None


def add_ratios(data: dict[str, Any]) -> dict[str, Any]:
    """Each throughput row gets ``vs_baseline``: its payments/s ÷ the raw loop's messages/s
    under the same processing guarantee, and each in-process one ``vs_textbook``: its
    payments/s ÷ the textbook faust agent's over the same burst (the HTTP-gateway rows measure
    gateway latency, not the pipeline: None). The textbook row gets its own ``vs_baseline``;
    ``data["vs_textbook"]`` holds the exactly_once and at_least_once ratios (in place; returns
    ``data``)."""
    textbook = textbook_rate(data)
    for row in data.get("textbook", []):
        row["vs_baseline"] = ratio(row.get("per_s"), baseline_rate(data, row.get("guarantee", "")))
    for row in data.get("throughput", []):
        row["vs_baseline"] = ratio(row.get("per_s"), baseline_rate(data, row.get("guarantee", "")))
        # one worker against the one textbook agent; several workers are compared with one instead
        one = row.get("gateway") == "in-process" and row.get("workers", 1) == 1
        row["vs_textbook"] = ratio(row.get("per_s"), textbook) if one else None
    single = [r for r in data.get("throughput", []) if r.get("gateway") == "in-process" and r.get("workers", 1) == 1]
    data["vs_textbook"] = {
        g: next((r["vs_textbook"] for r in single if r.get("guarantee") == g), None)
        for g in ("exactly_once", "at_least_once")
    }
    eos = next((r for r in single if r.get("guarantee") == "exactly_once"), None)
    alo = next((r for r in single if r.get("guarantee") == "at_least_once"), None)
    data["eos_vs_alo"] = ratio(eos.get("per_s") if eos else None, alo.get("per_s") if alo else None)
    for row in data.get("throughput", []):
        if row.get("workers", 1) > 1:
            row["vs_one_worker"] = ratio(row.get("per_s"), eos.get("per_s") if eos else None)
    return data


def _pct_or_nan(summary: Mapping[str, Any] | None, label: str) -> float:
    value = _pct(summary, label)
    return float("nan") if value is None else value


def _pct(summary: Mapping[str, Any] | None, label: str) -> float | None:
    if not summary:
        return None
    value = summary["percentiles_ms"].get(label)
    return float(value) if value is not None else None


# ------------------------------------------------------------------ tables (rows as strings)


def throughput_rows(data: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for b in data.get("baseline", []):
        rows.append([f"raw Kafka loop, {b['guarantee']}", b["guarantee"], "–", fmt_num(b["messages"]),
                     fmt_num(b["per_s"]), "–", "–", "1×", "–", "–", "–"])
    for t in data.get("textbook", []):
        rows.append([f"{t['name']}, {t.get('guarantee', '')}", t.get("guarantee", ""), t.get("gateway", ""),
                     fmt_num(t.get("answered")), fmt_num(t.get("per_s")), fmt_num(t.get("steady_per_s")), "–",
                     fmt_ratio(t.get("vs_baseline")), "1×" if t.get("per_s") else "–", "–",
                     _cpu(t)])
    for r in data.get("throughput", []):
        gw = r.get("gateway", "")
        if r.get("gateway_latency_ms"):
            gw = f"{gw} {r['gateway_latency_ms']:g} ms"
        bound = r.get("x_serialised_bound")
        rows.append([r["name"], r.get("guarantee", ""), gw, fmt_num(r.get("answered")), fmt_num(r.get("per_s")),
                     fmt_num(r.get("steady_per_s")), fmt_num(r.get("pg_per_s")), fmt_ratio(r.get("vs_baseline")),
                     fmt_ratio(r.get("vs_textbook")), fmt_ratio(bound) if bound is not None else "–", _cpu(r)])
    return rows


def _cpu(row: Mapping[str, Any]) -> str:
    value = row.get("worker_cpu_ms")
    return f"{value:.2f}" if isinstance(value, int | float) else "–"


THROUGHPUT_HEADER = ["run", "guarantee", "gateway", "payments", "/s to event", "/s steady", "/s to row",
                     "÷ baseline", "÷ textbook", "× serial bound", "worker CPU ms/payment"]

TEXTBOOK_TARGET = 2.0  # issue #10: at least twice the textbook faust agent

LATENCY_HEADER = ["run", "rate /s", *[f"event {p}" for p in PCT_LABELS], *[f"row {p}" for p in PCT_LABELS],
                  "unanswered", "until applied p50 / p99", "applied → visible p50 / p99"]


def _halves(summary: Mapping[str, Any] | None) -> str:
    """p50 / p99 of one half of an event's latency (``bench.run``: the worker's CreateTime splits it)."""
    if not summary:
        return "–"
    return f"{fmt_num(_pct(summary, 'p50'), 1)} / {fmt_num(_pct(summary, 'p99'), 1)}"


def latency_rows(data: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for r in data.get("latency", []):
        t, p = r.get("terminal"), r.get("postgres")
        rows.append([r["name"], fmt_num(r["rate_per_s"], 1), *[fmt_num(_pct(t, lab), 1) for lab in PCT_LABELS],
                     *[fmt_num(_pct(p, lab), 1) for lab in PCT_LABELS], str(r.get("unanswered", 0)),
                     _halves(r.get("to_applied")), _halves(r.get("applied_to_visible"))])
    return rows


OTHER_HEADER = ["measure", "value"]


def other_rows(data: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for s in data.get("startup", []):
        rows.append([s["name"], f"{fmt_num(s.get('seconds'), 1)} s to the first answer"])
    for r in data.get("recovery", []):
        rows.append([f"restart, {fmt_num(r['payments'])} payments in the table, {r['name']}",
                     f"{fmt_num(r.get('seconds_to_ready'), 1)} s to /ready, "
                     f"{fmt_num(r.get('seconds_to_first_answer'), 1)} s to the first answer"])
    for s in data.get("sink", []):
        rows.append([f"sink alone, {fmt_num(s['rows'])} event rows",
                     f"{fmt_num(s['per_s'])} rows/s ({fmt_num(s['per_s_from_start'])}/s with start-up)"])
    if data.get("eos_vs_alo") is not None:
        rows.append(["exactly_once ÷ at_least_once (throughput)", fmt_ratio(data["eos_vs_alo"])])
    for r in data.get("throughput", []):
        if r.get("vs_one_worker") is not None:
            rows.append([f"exactly_once, {r['workers']} workers ÷ one worker (throughput)",
                         f"{fmt_ratio(r['vs_one_worker'])} (CPU per payment {_cpu(r)} ms, summed over the workers)"])
    for guarantee, value in (data.get("vs_textbook") or {}).items():
        if value is not None:
            verdict = "met" if value >= TEXTBOOK_TARGET else "not met"
            rows.append([f"paystream {guarantee} ÷ textbook faust agent (throughput)",
                         f"{fmt_ratio(value)} (target ≥ {TEXTBOOK_TARGET:g}×: {verdict})"])
    return rows


# ------------------------------------------------------------------ stdout


def _rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(console: Console, data: Mapping[str, Any]) -> None:
    console.print(_rich_table("Throughput (payments/s to terminal event and to Postgres row)", THROUGHPUT_HEADER,
                              throughput_rows(data)))
    console.print(_rich_table("Latency, open loop (ms): command → terminal event / → Postgres row",
                              LATENCY_HEADER, latency_rows(data)))
    console.print(_rich_table("Start-up, recovery, sink", OTHER_HEADER, other_rows(data)))
    for err in data.get("errors", []):
        console.print(f"[red]{err['scenario']}: {err['error']}")
    for note in data.get("notes", []):
        console.print(f"[yellow]note: {note}")


# ------------------------------------------------------------------ markdown


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_summary(data: Mapping[str, Any], command: str) -> str:
    """The generated part of docs/performance.md: figures, command, machine, noise."""
    meta = data.get("meta", {})
    m = meta.get("machine", {})
    params = meta.get("params", {})
    parts = []
    if meta.get("profile") == "quick":
        parts += ["> **Smoke run (`--quick`)**: small bursts dominated by start-up and the first commit "
                  "intervals, on a shared machine. These figures prove the harness works; they do not "
                  "measure paystream.", ""]
    parts += [
        f"Run `{meta.get('timestamp', '?')}`, profile **{meta.get('profile', '?')}**, "
        f"{fmt_num(meta.get('duration_s'))} s, with:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {m.get('nproc', '?')} CPUs ({m.get('cpu', '?')}), {m.get('memory_gib', '?')} GiB memory, "
        f"Python {m.get('python', '?')}; load average (1 min) {m.get('loadavg_start', ['?'])[0]} at the start, "
        f"{(m.get('loadavg_end') or ['?'])[0]} at the end. Kafka, the registry, Postgres, the worker, "
        "the sink and the load generator share these CPUs.",
        "",
        f"Parameters: {fmt_num(params.get('payments'))} payments per in-process burst, "
        f"{fmt_num(params.get('http_payments'))} per HTTP-gateway burst, {params.get('partitions', '?')} partitions, "
        f"commit interval {params.get('commit_interval_s', '?')} s, gateway batch "
        f"{params.get('gateway_batch_size', '?')}, open-loop runs of {params.get('latency_seconds', '?')} s, "
        f"recovery with {fmt_num(params.get('recovery_k'))} payments"
        + (f"; an unmeasured exactly_once warm-up burst of {fmt_num(params.get('warmup_payments'))} payments first"
           if params.get("warmup_payments") else "") + ".",
        "",
        "### Throughput",
        "",
        md_table(THROUGHPUT_HEADER, throughput_rows(data)),
        "",
        "### Latency (open loop, ms)",
        "",
        md_table(LATENCY_HEADER, latency_rows(data)),
        "",
        "### Start-up, recovery, sink",
        "",
        md_table(OTHER_HEADER, other_rows(data)),
    ]
    errors = data.get("errors", [])
    notes = data.get("notes", [])
    if errors or notes:
        parts += ["", "### Errors and notes of this run", ""]
        parts += [f"- {e['scenario']}: {e['error']}" for e in errors]
        parts += [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


BEGIN = "<!-- bench:begin (generated by `python -m bench`; do not edit by hand) -->"
END = "<!-- bench:end -->"


def splice(document: str, generated: str) -> str:
    """Replace what lies between the markers (or append the markers and the text)."""
    block = f"{BEGIN}\n{generated}{END}"
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + block + tail
    return document.rstrip("\n") + "\n\n" + block + "\n"


# ------------------------------------------------------------------ files


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_charts(prefix: Path, data: Mapping[str, Any]) -> list[Path]:
    """``<prefix>-throughput.png`` (bars, log scale, both baselines included) and
    ``<prefix>-latency.png`` (percentiles per open-loop run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names, values, colors = [], [], []
    for b in data.get("baseline", []):
        names.append(f"raw loop\n{b['guarantee']}")
        values.append(b["per_s"])
        colors.append("#999999")
    for t in data.get("textbook", []):
        names.append("textbook\nfaust agent")
        values.append(t.get("per_s") or 0)
        colors.append("#2ca02c")
    for r in data.get("throughput", []):
        names.append(r["name"].replace("paystream ", "").replace(" gateway", "\ngateway"))
        values.append(r.get("per_s") or 0)
        colors.append("#1f77b4" if r.get("gateway") == "in-process" else "#ff7f0e")
    if names:
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4.5))
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("messages or payments per second (log)")
        ax.set_title("paystream vs a raw Kafka loop and a textbook faust agent", fontsize=10)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate(fmt_num(v), (bar.get_x() + bar.get_width() / 2, max(v, 1)), ha="center", va="bottom",
                        fontsize=8)
        fig.tight_layout()
        path = prefix.with_name(prefix.name + "-throughput.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    lat = [r for r in data.get("latency", []) if r.get("terminal")]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        xs = range(len(PCT_LABELS))
        for i, r in enumerate(lat):
            ax.plot(xs, [_pct_or_nan(r["terminal"], lab) for lab in PCT_LABELS], marker="o", color=f"C{i}",
                    label=f"{r['name']} ({r['rate_per_s']:g}/s) → event")
            if r.get("postgres"):
                ax.plot(xs, [_pct_or_nan(r["postgres"], lab) for lab in PCT_LABELS], marker="x", linestyle="--",
                        color=f"C{i}", label=f"{r['name']} → Postgres row")
        ax.set_xticks(list(xs), PCT_LABELS)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.set_title("command → result latency, open loop")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = prefix.with_name(prefix.name + "-latency.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
