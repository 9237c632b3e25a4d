"""bench.rates: the per-rate line built from two scrapes of the worker's metrics."""

from __future__ import annotations

from bench.rates import METRIC_LINE, phase_line


def test_the_batch_and_commit_phases_are_averaged_over_the_run_only() -> None:
    before = {
        "paystream_input_batch_messages_count": 100.0, "paystream_input_batch_messages_sum": 400.0,
        'paystream_input_batch_seconds_count{phase="apply"}': 100.0,
        'paystream_input_batch_seconds_sum{phase="apply"}': 1.0,
        'paystream_commit_seconds_count{phase="transactions"}': 10.0,
        'paystream_commit_seconds_sum{phase="transactions"}': 0.5,
        'paystream_commit_seconds_sum{phase="changelog"}': 0.2,
    }
    after = {
        "paystream_input_batch_messages_count": 150.0, "paystream_input_batch_messages_sum": 900.0,
        'paystream_input_batch_seconds_count{phase="apply"}': 150.0,
        'paystream_input_batch_seconds_sum{phase="apply"}': 1.5,  # 50 batches, 0.5 s: 10 ms each
        'paystream_commit_seconds_count{phase="transactions"}': 30.0,
        'paystream_commit_seconds_sum{phase="transactions"}': 0.7,  # 20 commits, 0.2 s: 10 ms each
        'paystream_commit_seconds_sum{phase="changelog"}': 0.3,  # 5 ms each
    }
    line = phase_line(before, after)
    assert line.startswith("20 commits; 50 batches of 10.0")
    assert "apply 10.0 ms (×50)" in line
    assert "commit transactions 10.0 ms" in line and "commit changelog 5.0 ms" in line
    assert "age 0.0 ms (×0)" in line  # a phase with no sample in the run says so, never divides by zero


def test_gc_pauses_are_counted_per_generation_over_the_run() -> None:
    before = {'paystream_gc_pause_seconds_count{generation="0"}': 5.0,
              'paystream_gc_pause_seconds_sum{generation="0"}': 0.02,
              'paystream_gc_pause_seconds_bucket{generation="0",le="0.01"}': 5.0,
              'paystream_gc_pause_seconds_count{generation="1"}': 1.0,
              'paystream_gc_pause_seconds_sum{generation="1"}': 0.03,
              'paystream_gc_pause_seconds_bucket{generation="1",le="0.01"}': 0.0}
    after = {**before,
             'paystream_gc_pause_seconds_count{generation="0"}': 15.0,
             'paystream_gc_pause_seconds_sum{generation="0"}': 0.07,  # 10 pauses, 50 ms: 5 ms each
             'paystream_gc_pause_seconds_bucket{generation="0",le="0.01"}': 14.0,  # one over 10 ms
             }  # generation 1 did not run in the window: not shown
    line = phase_line(before, after)
    assert line.endswith("GC gen0 10× 5.0 ms (1 over 10 ms)")
    assert METRIC_LINE.match('paystream_gc_pause_seconds_bucket{generation="2",le="0.01"} 3.0') is not None


def test_metric_lines_with_and_without_labels_are_read() -> None:
    m = METRIC_LINE.match('paystream_input_batch_seconds_sum{phase="age"} 1.25')
    assert m is not None and (m.group(1), m.group(2), m.group(3)) == (
        "paystream_input_batch_seconds_sum", '{phase="age"}', "1.25")
    m = METRIC_LINE.match("paystream_input_batch_messages_count 7.0")
    assert m is not None and m.group(2) is None and m.group(3) == "7.0"
    assert METRIC_LINE.match("process_cpu_seconds_total 3.0") is None



def test_a_latency_is_split_at_the_events_create_time() -> None:
    from bench.load import TerminalWatcher

    watcher = TerminalWatcher.__new__(TerminalWatcher)  # no Kafka: only the recorded times
    watcher.terminal_at = {"a": 10.250, "b": 11.0, "c": 12.0}
    watcher.terminal_produced_at = {"a": 10.100, "c": 11.5}  # b's event carried no CreateTime
    applied, visible = watcher.halves({"a": 10.0, "b": 10.5, "c": 11.0, "d": 11.2})  # d never answered
    assert [round(x, 3) for x in applied] == [100.0, 500.0]
    assert [round(x, 3) for x in visible] == [150.0, 500.0]
