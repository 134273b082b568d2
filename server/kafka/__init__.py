"""Kafka adapter: the outbox relay, the aiokafka InitProducerId v3 shim, the embedded Tansu broker."""
