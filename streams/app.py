"""The faust app: one worker process runs the payment agent, the gateway agent and the
reconciler timer, and serves /metrics and the HTTP edge on its web port."""

from __future__ import annotations

import functools

import faust

from paystream.config import Settings
from streams import faust_fixes


def _https_client(settings: Settings) -> object:
    """The edge's HTTP client (forwarding to the worker that owns a key) when it serves HTTPS:
    it verifies the other workers' certificates against ``web_ssl_cafile`` and the system CAs."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=settings.web_client_ssl_context()))


def create_app(settings: Settings) -> faust.App:
    faust_fixes.apply()
    kafka = settings.kafka_connection()
    # HTTPS only when a certificate is set: the canonical URL other workers forward to says
    # https, and the edge's own client verifies the peer (a factory: faust creates the session
    # inside its loop). None leaves faust's defaults (plain HTTP).
    https = settings.web_ssl_context()
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap}",
        # SASL/TLS of every faust client (consumer, producers, topic admin): None for PLAINTEXT.
        broker_credentials=kafka.faust_credentials(),
        store=settings.store,
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        # EOS: outputs become visible when the transaction commits, so commit often.
        broker_commit_interval=settings.commit_interval_s,
        broker_commit_every=1000,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # linger 0 sent one produce request per record (py-spy: a fifth of the worker's CPU in
        # socket writes); a few ms batches a payment's events, audit records and changelog writes.
        producer_linger_ms=settings.producer_linger_ms,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        datadir=settings.datadir,
        table_cleanup_interval=60.0,
        # No standby replicas: with standbys, a worker taking over a partition after a
        # rebalance crashed in recovery (ConsistencyError: persisted offset > highwater -1;
        # ValueError "Offset must be a positive integer" starting standbys). Without them a
        # new owner rebuilds the partition from its changelog, slower but correct.
        table_standby_replicas=0,
        # Topics are created by `paystream topics create` with the right partition count.
        topic_allow_declare=True,
        # On a rebalance, finish the inputs in flight before the partitions' transactions are
        # committed and closed: with False, table writes of an input still being applied hit a
        # closed transaction and the worker crashed (IllegalOperation, then ProducerFenced).
        stream_wait_empty=True,
        # A killed worker's partitions wait for its session to expire: 10 s, not 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        web_ssl_context=https,
        canonical_url=f"https://{settings.web_host}:{settings.web_port}" if https is not None else None,
        HttpClient=functools.partial(_https_client, settings) if https is not None else None,
    )
    # Recovery probes the changelogs' tails with these settings (faust_fixes: exactly_once
    # recovery ends at the last committed record).
    faust_fixes.set_changelog_probe(app, kafka)
    if settings.consumer_in_loop:
        from streams.inloop_consumer import use_consumer_in_loop

        use_consumer_in_loop(app)
    if settings.processing_guarantee == "exactly_once" and settings.eos_transactions == "worker":
        import socket

        from streams.worker_transactions import use_worker_transactions

        worker_id = settings.worker_id or f"{socket.gethostname()}-{settings.web_port}"
        use_worker_transactions(app, worker_id, int(settings.transaction_timeout_s * 1000))
    return app
