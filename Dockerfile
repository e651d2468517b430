# syntax=docker/dockerfile:1
#
# ticketlock sidecar: `ticketlock-server` as a non-root user on 0.0.0.0:50051.
#
#   docker build -t ticketlock .
#   docker run -p 50051:50051 ticketlock                        # in-memory store
#   docker run -p 50051:50051 \
#     -v "$PWD/endpoints.yml:/etc/ticketlock/endpoints.yml:ro" \
#     -e TICKETLOCK_ENDPOINTS=/etc/ticketlock/endpoints.yml \
#     -e REDIS_PASSWORD=... ticketlock                          # store from lock_store:
#
# Every server option is an environment variable TICKETLOCK_<NAME> (or an
# argument after the image name): TICKETLOCK_ENDPOINTS, TICKETLOCK_LISTEN,
# TICKETLOCK_TLS_CERT, TICKETLOCK_TLS_KEY, TICKETLOCK_TLS_CLIENT_CA,
# TICKETLOCK_AUTH_TOKEN_FILE, TICKETLOCK_METRICS_PORT, TICKETLOCK_METRICS_AUTH,
# TICKETLOCK_LOG_LEVEL, TICKETLOCK_LOG_FORMAT, TICKETLOCK_LOG_CONVERSATION_IDS,
# TICKETLOCK_TRACING, TICKETLOCK_GRACE; TICKET_LOCK_LIFETIME sets the default
# lock lifetime. Leave TICKETLOCK_ENDPOINTS unset for the in-memory store.
# Metrics are off unless TICKETLOCK_METRICS_PORT is set: set it to 9100, the
# port EXPOSEd below, to serve Prometheus metrics at http://<pod>:9100/metrics.
# The HEALTHCHECK probes the gRPC health service on the TICKETLOCK_LISTEN port
# via loopback (TICKETLOCK_HEALTH_ADDR overrides the address). It follows the
# server's TLS settings: with TICKETLOCK_TLS_CERT it speaks TLS (trusting that
# certificate, or TICKETLOCK_HEALTH_CA), and with TICKETLOCK_TLS_CLIENT_CA it
# presents the server's certificate as its client certificate (or
# TICKETLOCK_HEALTH_CERT / TICKETLOCK_HEALTH_KEY).
# tests/test_container.py lints this file with hadolint and runs the same
# install, environment, entrypoint and health check outside Docker.

FROM python:3.11-slim AS build

# Bytecode is compiled here, at install time: the final image's venv is read-only
# for the server's user.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv

WORKDIR /src
COPY . .
RUN /opt/venv/bin/pip install --no-cache-dir '.[server,iam]'


FROM python:3.11-slim

LABEL org.opencontainers.image.title="ticketlock" \
      org.opencontainers.image.description="gRPC ticket-lock server (sidecar)"

RUN groupadd --system --gid 10001 ticketlock \
    && useradd --system --uid 10001 --gid ticketlock --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin ticketlock \
    && mkdir -p /etc/ticketlock

COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TICKETLOCK_LISTEN=0.0.0.0:50051 \
    TICKETLOCK_LOG_FORMAT=json

USER 10001:10001
# gRPC; Prometheus metrics when TICKETLOCK_METRICS_PORT=9100.
EXPOSE 50051 9100

HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "ticketlock_server.healthcheck", "--timeout", "3"]

ENTRYPOINT ["ticketlock-server"]
