"""paystream: a Kafka-native payment service built on faust-streaming."""

__version__ = "0.1.0"
