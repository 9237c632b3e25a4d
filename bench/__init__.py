"""paystream's benchmark: throughput, latency, recovery and the sink, against a raw Kafka
baseline measured in the same run on the same broker. ``python -m bench --help``."""
