# syntax=docker/dockerfile:1
# One image for every paystream process: `paystream worker`, the sinks (`paystream sink`,
# `paystream customers sink`, `paystream audit sink`), `paystream db migrate`,
# `paystream schemas register`, and the simulated gateway (`python -m gateway_clients.simulated.server`).
#
#   docker build -t paystream:dev .
#   docker run --rm paystream:dev --help

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: a venv with the project
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only for a dependency that has no wheel for this platform; they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt
RUN pip install --upgrade pip setuptools wheel && pip install -r /tmp/requirements.txt
COPY paystream ./paystream
COPY streams ./streams
COPY agents ./agents
COPY tables ./tables
COPY gateway_clients ./gateway_clients
COPY sinks ./sinks
COPY avro ./avro
# The routing table and the fraud rule sets (config/routing.yaml, config/fraud-rules*.yaml).
COPY config ./config
# Installed in place (-e) on purpose: streams/topics.py finds avro/*.avsc next to the source
# tree (Path(__file__).parent.parent / "avro"); a regular wheel install would look for them in
# site-packages, where `avro` is the Apache Avro library.
RUN pip install --no-deps -e . && paystream --help >/dev/null

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="paystream" \
      org.opencontainers.image.description="Kafka-native payment service (faust-streaming): worker, sink, simulated gateway"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PAYSTREAM_WEB_HOST=0.0.0.0 \
    PAYSTREAM_SINK_METRICS_HOST=0.0.0.0 \
    PAYSTREAM_DATADIR=/var/lib/paystream
RUN groupadd --system --gid 10001 paystream \
 && useradd --system --uid 10001 --gid paystream --home-dir /app --shell /usr/sbin/nologin paystream \
 && mkdir -p /var/lib/paystream \
 && chown paystream:paystream /var/lib/paystream
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
WORKDIR /app
USER 10001:10001
# 6066: worker web (faust: /metrics, /health, /ready, webhooks); 6067: event sink, 6070: vault sink, 6071: audit
# sink (/metrics, /health, /ready); 8090: simulated gateway
EXPOSE 6066 6067 6070 6071 8090
VOLUME ["/var/lib/paystream"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["paystream"]
CMD ["worker"]
