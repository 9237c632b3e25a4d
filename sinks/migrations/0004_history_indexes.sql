-- Transaction history queries of the HTTP edge (GET /payments by customer, order and/or time
-- range; paystream/web/queries.py): every listing is ordered and keyset-paginated on
-- (created_at, payment_id), so each filter gets an index ending in those two columns and a
-- page is one index range scan, whatever the table's size (docs/performance.md, "History queries").
-- IF NOT EXISTS: on a large live table, create them first with CREATE INDEX CONCURRENTLY under
-- these names (a plain CREATE INDEX here blocks the sink's writes while it builds).
CREATE INDEX IF NOT EXISTS payments_customer_created ON payments (customer_id, created_at, payment_id);
CREATE INDEX IF NOT EXISTS payments_order_created ON payments (order_id, created_at, payment_id);
CREATE INDEX IF NOT EXISTS payments_created ON payments (created_at, payment_id);

-- Prefixes of the new indexes: they answered the same lookups and only cost writes.
DROP INDEX IF EXISTS payments_customer_id;
DROP INDEX IF EXISTS payments_order_id;
-- The same columns as the index of UNIQUE (payment_id, sequence), which serves the history by payment.
DROP INDEX IF EXISTS payment_events_payment;
