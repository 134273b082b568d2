"""Running Kassa: the CLI, gunicorn, the embedded stack, settings, logs, and the composition root of a worker process."""
