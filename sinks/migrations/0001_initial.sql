-- paystream's first schema: current payment state, the append-only event log, refunds.
-- Money is BIGINT minor units beside a CHAR(3) ISO-4217 currency: never floating point.

CREATE TABLE payments (
    payment_id      TEXT PRIMARY KEY,
    order_id        TEXT,
    customer_id     TEXT,
    status          TEXT NOT NULL,
    currency        CHAR(3),
    amount          BIGINT CHECK (amount >= 0),
    authorized      BIGINT NOT NULL DEFAULT 0 CHECK (authorized >= 0),
    captured        BIGINT NOT NULL DEFAULT 0 CHECK (captured >= 0),
    refunded        BIGINT NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    gateway         TEXT,
    gateway_ref     TEXT,
    decline_code    TEXT,
    last_sequence   BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    -- I3, held by the database too.
    CONSTRAINT payments_amounts_ordered CHECK (refunded <= captured AND captured <= authorized
                                               AND (amount IS NULL OR authorized <= amount))
);
CREATE INDEX payments_order_id ON payments (order_id);
CREATE INDEX payments_customer_id ON payments (customer_id);
CREATE INDEX payments_status ON payments (status);

CREATE TABLE payment_events (
    event_id             TEXT PRIMARY KEY,
    payment_id           TEXT NOT NULL,
    sequence             BIGINT NOT NULL CHECK (sequence >= 1),
    event_type           TEXT NOT NULL,
    occurred_at          TIMESTAMPTZ NOT NULL,
    causation_command_id TEXT,
    status               TEXT,
    payload              JSONB NOT NULL,
    kafka_partition      INT NOT NULL,
    kafka_offset         BIGINT NOT NULL,
    stored_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (payment_id, sequence)
);
CREATE INDEX payment_events_payment ON payment_events (payment_id, sequence);

CREATE TABLE refunds (
    refund_id     TEXT PRIMARY KEY,
    payment_id    TEXT NOT NULL,
    amount        BIGINT NOT NULL CHECK (amount > 0),
    currency      CHAR(3) NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT,
    last_sequence BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX refunds_payment ON refunds (payment_id);
