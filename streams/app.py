"""The faust app: one worker process runs the payment agent, the gateway agent and the
reconciler timer, and serves /metrics and the HTTP edge on its web port."""

from __future__ import annotations

import faust

from paystream.config import Settings
from streams import faust_fixes


def create_app(settings: Settings) -> faust.App:
    faust_fixes.apply()
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
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
    )
