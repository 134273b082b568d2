"""Redis adapters: status store, idempotency fast path, account cache, rate limits."""
