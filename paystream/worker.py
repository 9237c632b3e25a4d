"""Start a paystream worker: topics and schemas in place, gateways wired, agents installed."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import faust

from agents.payments import Wiring, install
from gateway_clients.protocol import PaymentGateway
from paystream import metrics
from paystream.config import Settings
from paystream.web import install_web, web_context
from streams import topics
from streams.app import create_app
from streams.avro import codecs, register_schemas, registry_client
from streams.monitor import setup_metrics

log = logging.getLogger("paystream.worker")


def edge_audit_hook(app: faust.App, settings: Settings) -> Any:
    """The HTTP edge's audit hook: each call becomes a record on the audit topic (for the
    hash-chained ``audit_log``). Sent outside any transaction, without holding the request up;
    a failed send is logged (the request itself is never failed by its audit)."""
    from paystream.security import audit as au

    topic = topics.audit(settings.app_id)
    in_flight: set[asyncio.Future[Any]] = set()

    async def deliver(record: au.AuditRecord) -> None:
        try:
            await app.producer.maybe_start()
            await app.producer.send(topic, record.resource.encode(), au.encode_record(record), None, None, None,
                                    transactional_id=None)
        except Exception as exc:
            log.warning("audit record %s not sent: %s", record.action, type(exc).__name__)

    def hook(actor: str, action: str, resource: str, outcome: str, origin: str, detail: dict[str, Any]) -> None:
        record = au.AuditRecord(audit_id=au.new_audit_id("http"), occurred_at=time.time_ns() // 1_000_000,
                                actor=actor, action=action, resource=resource, outcome=outcome, origin=origin,
                                detail=detail)
        future = asyncio.ensure_future(deliver(record))
        in_flight.add(future)
        future.add_done_callback(in_flight.discard)

    return hook


def build_gateways(settings: Settings) -> dict[str, PaymentGateway]:
    """Every gateway whose settings are present (with webhook secrets, so the HTTP edge can
    verify their notifications); the simulated one in-process when asked (benchmarks)."""
    from paystream.web import build_webhook_gateways

    gateways = build_webhook_gateways(settings)
    if settings.simgw_in_process:
        from gateway_clients.simulated.client import InProcessSimulatedGateway
        from gateway_clients.simulated.engine import SimulatedGatewayEngine

        engine = SimulatedGatewayEngine()
        gateways["simulated"] = InProcessSimulatedGateway(engine, timeout_s=settings.gateway_timeout_s)
    return gateways


def fraud_rulesets(settings: Settings) -> tuple[Any, Any]:
    """The active and the candidate fraud rule sets (validated: a broken file stops the worker)."""
    from agents import fraud as af

    active = af.load_ruleset_file(settings.fraud_rules_file or af.RULES_FILE)
    candidate = (af.load_ruleset_file(settings.fraud_candidate_rules_file)
                 if settings.fraud_candidate_rules_file else None)
    af.plan_windows(active, candidate)  # a window name must mean the same window in both
    return active, candidate


def fraud_changelogs(settings: Settings) -> dict[str, dict[str, str]]:
    """Changelog topics of the fraud tables (created up front like the others, see streams.topics)."""
    if not settings.fraud_enabled:
        return {}
    from agents import fraud as af

    plan = af.plan_windows(*fraud_rulesets(settings))
    out: dict[str, dict[str, str]] = {}
    for prefix, windows in (("count", plan.all_windows), ("amount", plan.all_windows), ("cards", plan.cards)):
        for w in windows:
            # As faust declares a windowed table's changelog: compacted, and deleted after expiry.
            retention_ms = str((w.size_s + w.step_s) * 1000)
            out[topics.changelog(settings.app_id, f"fraud-{prefix}-{w.name}")] = {
                "cleanup.policy": "compact,delete", "retention.ms": retention_ms}
    _, expires = af.counted_window(plan.all_windows)
    out[topics.changelog(settings.app_id, "fraud-counted")] = {
        "cleanup.policy": "compact,delete", "retention.ms": str(expires * 1000)}
    out[topics.changelog(settings.app_id, "fraud-blocklist")] = {"cleanup.policy": "compact"}
    out[topics.changelog(settings.app_id, "fraud-applied-offsets")] = {"cleanup.policy": "compact"}
    return out


def prepare(settings: Settings) -> None:
    """Idempotent set-up every worker does before it joins the group."""
    created = topics.ensure_topics(settings.kafka_connection(), settings.app_id, settings.partitions,
                                   settings=settings.topic_settings(), extra=fraud_changelogs(settings))
    if created:
        log.info("created topics %s", created)
    register_schemas(registry_client(settings.registry_conf()))


def build_app(settings: Settings) -> tuple[faust.App, dict[str, object]]:
    app = create_app(settings)
    # /metrics on the worker's web port: faust's stream metrics and paystream's business metrics
    # (one process registry). The prefix is fixed so metric names do not follow the app id.
    setup_metrics(app, name_prefix="paystream")
    wiring = Wiring(settings, codecs(registry_client(settings.registry_conf())), build_gateways(settings))
    if settings.fraud_enabled:
        from agents import fraud as af

        active, candidate = fraud_rulesets(settings)
        fraud = af.install_fraud(app, settings, af.verdict_sender(app, settings.app_id), active=active,
                                 candidate=candidate)
        parts = install(app, wiring, fraud_ruleset_version=active.version)
        parts["fraud"] = fraud
        log.info("fraud checks on: rule set %s%s", active.version,
                 f", shadow candidate {candidate.version}" if candidate is not None else "")
    else:
        parts = install(app, wiring)
    install_web(app, web_context(settings, wiring.codecs, parts["payments_table"], gateways=wiring.gateways,
                                 audit=edge_audit_hook(app, settings)))
    return app, parts


def use_json_logging(app: faust.App, loglevel: str) -> list[str]:
    """Make faust log like the rest of paystream: one JSON object per line, redacted (I6).

    mode replaces the root logger's handlers when the worker starts; ``logging_config`` makes
    it install paystream's JSON handler instead of its coloured text one, and ``--quiet`` turns
    off the banner and the other lines faust prints to the terminal without logging them.
    Returns the faust command line to run the worker with."""
    from paystream.logs import dict_config, install_redaction

    install_redaction()  # before faust sets up its own logging: every record is redacted (I6)
    app.conf.logging_config = dict_config(loglevel)
    return ["paystream-worker", "--quiet", "worker", "--loglevel", loglevel]


def use_event_loop(name: str) -> None:
    """Make the loops created from now on uvloop's (libuv: the loop's own socket writes, polling,
    callbacks and futures in C) or asyncio's own."""
    import asyncio

    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    from paystream.logs import install_redaction

    install_redaction()
    use_event_loop(settings.event_loop)  # before anything asks for a loop: faust binds to the first
    prepare(settings)
    app, _ = build_app(settings)
    sys.argv = use_json_logging(app, loglevel)
    # With PAYSTREAM_CONSUMER_IN_LOOP=false faust runs its Kafka consumer in a thread of its own
    # (recovery's bulk loader runs in threads too). At CPython's default 5 ms switch
    # interval, each socket write of the event loop thread (which releases the GIL) waited up
    # to 5 ms to get the GIL back from that thread: py-spy saw the worker "in" socket writes a
    # fifth of the time while it held the GIL less than half of it. Throughput about doubled.
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    metrics.install_gc_metrics()
    metrics.tune_gc(settings.gc_young_threshold)
    layout = ["consumer in the loop" if settings.consumer_in_loop else "consumer in its thread"]
    if settings.processing_guarantee == "exactly_once":
        layout.append(f"one transaction per {settings.eos_transactions}")
    layout.append(settings.event_loop)
    log.info("starting worker %s: web %s:%d, %d partitions, %s (%s)", settings.app_id, settings.web_host,
             settings.web_port, settings.partitions, settings.processing_guarantee, ", ".join(layout))
    app.main()


class ExecutorConfigError(ValueError):
    """A standalone gateway executor asked for with settings it cannot serve."""


def run_gateway_executor(settings: Settings, metrics_port: int | None = None) -> None:
    """The gateway executor on its own (``gateway_executor_in_worker`` false in the workers): the
    same consumer group over the gateway-calls topic as in a worker, so any number of these
    processes (and workers still running one) share its partitions. Gateway metrics on
    ``metrics_port`` (/metrics); SIGTERM and SIGINT stop it after the calls in hand are cancelled
    (their offsets stay uncommitted: the next owner makes them again, the gateway replays by key).
    """
    import signal

    import prometheus_client

    from agents.payments import load_keyring, make_executor
    from paystream.logs import install_redaction

    install_redaction()
    if settings.simgw_in_process:
        # The in-process simulated gateway keeps its idempotency store in its process: a call the
        # worker tried inline and handed over would meet another store here and be made twice.
        raise ExecutorConfigError("PAYSTREAM_SIMGW_IN_PROCESS: the in-process simulated gateway lives in the "
                                  "worker; run the executor there (PAYSTREAM_GATEWAY_EXECUTOR_IN_WORKER=true)")
    topics.ensure_topics(settings.kafka_connection(), settings.app_id, settings.partitions,
                         settings=settings.topic_settings(), extra=fraud_changelogs(settings))
    gateways = build_gateways(settings)
    executor = make_executor(settings, gateways, load_keyring(settings), standalone=True)
    if metrics_port is not None:
        prometheus_client.start_http_server(metrics_port, addr=settings.web_host)
    sys.setswitchinterval(settings.switch_interval_ms / 1000)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(executor.run())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        log.info("gateway executor of %s: gateways %s, %d in flight", settings.app_id, sorted(gateways),
                 settings.gateway_batch_size)
        try:
            await task
        except asyncio.CancelledError:
            log.info("gateway executor stopped after %d calls", executor.done)
        finally:
            for gw in gateways.values():
                aclose = getattr(gw, "aclose", None)  # every client has one; not part of the protocol
                if aclose is not None:
                    await aclose()

    asyncio.run(main())
