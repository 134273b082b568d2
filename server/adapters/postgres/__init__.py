"""PostgreSQL adapter: migrations and the stores that implement core's ports."""
