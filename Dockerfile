# syntax=docker/dockerfile:1
# Kassa: the first stage compiles the Cython hot path into a wheel; the second runs it.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY core ./core
COPY server ./server
COPY native ./native
RUN pip install --no-cache-dir build==1.2.2 \
    && python -m build --wheel --outdir /wheels .

FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KASSA_DATA_DIR=/var/lib/kassa
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/kassa-*.whl)[embedded]" \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 kassa \
    && mkdir -p /var/lib/kassa \
    && chown kassa:kassa /var/lib/kassa
USER 10001
WORKDIR /home/kassa
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
CMD ["kassa", "serve", "--host", "0.0.0.0", "--port", "8000"]
