"""The use cases and the ports they talk through: accept, the processor pool, execution, post-commit effects, recovery, status queries."""
