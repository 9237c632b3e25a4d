-- Saved payment methods, their encrypted gateway tokens, and the hash-chained audit log.

-- Masked card data only (never a card number or CVV); written by the vault sink from the
-- internal vault topic. A removed or erased method keeps its row (id, customer, status) so
-- history stays explainable; an erasure nulls every card detail.
CREATE TABLE payment_methods (
    method_id    TEXT PRIMARY KEY,
    customer_id  TEXT NOT NULL,
    gateway      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'removed', 'erased')),
    brand        TEXT,
    last4        CHAR(4) CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month    SMALLINT CHECK (exp_month BETWEEN 1 AND 12),
    exp_year     SMALLINT,
    fingerprint  TEXT,
    version      BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    removed_at   TIMESTAMPTZ
);
CREATE INDEX payment_methods_customer ON payment_methods (customer_id);

-- The gateway's token for an active method, only as an AES-GCM envelope
-- ("v1:<key id>:<nonce>:<ciphertext>") bound to the method id; deleted when the method is
-- removed or erased. key_id shows which rows a key rotation still has to re-encrypt.
CREATE TABLE customer_gateway_tokens (
    method_id        TEXT PRIMARY KEY REFERENCES payment_methods (method_id) ON DELETE CASCADE,
    customer_id      TEXT NOT NULL,
    gateway          TEXT NOT NULL,
    token_ciphertext TEXT NOT NULL CHECK (token_ciphertext LIKE 'v1:%'),
    key_id           TEXT NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX customer_gateway_tokens_customer ON customer_gateway_tokens (customer_id);

-- PCI DSS 10.2.2: who, what, when, outcome, origin, affected resource. One writer (the audit
-- sink) appends under a lock on audit_chain_head; hash = sha256(prev_hash || canonical row).
-- `paystream audit verify` recomputes the chain.
CREATE TABLE audit_log (
    seq          BIGINT PRIMARY KEY CHECK (seq >= 1),
    audit_id     TEXT NOT NULL UNIQUE,
    occurred_at  BIGINT NOT NULL,  -- epoch ms UTC, hashed as is
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    resource     TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    origin       TEXT NOT NULL,
    detail       JSONB NOT NULL,
    prev_hash    CHAR(64) NOT NULL,
    hash         CHAR(64) NOT NULL,
    stored_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_resource ON audit_log (resource, seq);
CREATE INDEX audit_log_occurred ON audit_log (occurred_at);

-- The writer's record of the chain's end, updated in the same transaction as each append:
-- rows removed from the end, or appended behind the writer's back, show up against it.
CREATE TABLE audit_chain_head (
    id         SMALLINT PRIMARY KEY CHECK (id = 1),
    last_seq   BIGINT NOT NULL,
    last_hash  CHAR(64) NOT NULL
);
INSERT INTO audit_chain_head (id, last_seq, last_hash) VALUES (1, 0, repeat('0', 64));
