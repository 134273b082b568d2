"""The ports of core/pipeline implemented against real servers: PostgreSQL, Redis, gRPC clients, Kafka, Prometheus."""
