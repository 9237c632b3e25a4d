"""Fault injection for paystream: a traffic driver with crashes, outages and hostile input
(``chaos.scenarios``), and an independent invariant checker (``chaos.checker``).

Run ``python -m chaos run <scenario> [--payments N]`` or ``python -m chaos run all``;
``docs/reliability.md`` describes the scenarios and the results.
"""
