"""Small pure tools the pipeline and the adapters share: the batcher, the circuit breaker, the account LRU, rate-limit arithmetic."""
