-- One row per gateway operation attempt, fed from the internal gateway-replies topic: what
-- paystream asked the gateway (operation, attempt, idempotency key) and what it answered.
-- kind 'reply' is the answer to the call itself (first answer wins, as for the state machine);
-- kind 'reconcile' is what the reconciler last learned about an attempt whose outcome was
-- unknown (the row moves only to a newer answer). A replayed reply never adds a row.

CREATE TABLE payment_transactions (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id       TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('reply', 'reconcile')),
    operation        TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    attempt          INT CHECK (attempt >= 0),
    gateway          TEXT,
    gateway_ref      TEXT,
    status           TEXT NOT NULL,
    decline_code     TEXT,
    error_code       TEXT,
    latency_ms       INT CHECK (latency_ms >= 0),
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    kafka_partition  INT NOT NULL,
    kafka_offset     BIGINT NOT NULL,
    CONSTRAINT payment_transactions_key_kind UNIQUE (idempotency_key, kind)
);
CREATE INDEX payment_transactions_payment ON payment_transactions (payment_id, created_at);

-- The HTTP edge looks payments up by the gateway's reference (webhooks, support tools).
CREATE INDEX payments_gateway_ref ON payments (gateway, gateway_ref);
