"""Sinks: payment.events into PostgreSQL, in its own consumer group and process."""
