-- A refund id is the merchant's, unique within its payment (RefundPayment's refund_id; the
-- worker keys a payment's refunds by it): keyed by refund_id alone, the refund of a second
-- payment with the same id only moved the first one's row on (status, sequence) and was never
-- stored itself (docs/reliability.md F13). Rows already stored are unique by refund_id, so they
-- are unique by (payment_id, refund_id) too; refunds lost before this migration come back with
-- `paystream db rebuild`.
ALTER TABLE refunds DROP CONSTRAINT refunds_pkey;
ALTER TABLE refunds ADD CONSTRAINT refunds_pkey PRIMARY KEY (payment_id, refund_id);
-- A prefix of the new primary key: it served the same lookups.
DROP INDEX IF EXISTS refunds_payment;
