-- Gateway replies come from two topics since the payments agent makes most calls inline: the
-- executor's <app>-gateway-replies and the inline-applied <app>-gateway-outcomes. A row's Kafka
-- position (partition, offset) needs its topic to name a record; NULL on rows stored before.
ALTER TABLE payment_transactions ADD COLUMN kafka_topic TEXT;
