"""Kafka adapter: the outbox relay and its batch producer, the aiokafka InitProducerId v3 shim, the embedded Tansu broker."""
