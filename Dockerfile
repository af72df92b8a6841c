# Outbox worker / webhook server / bounce listener image. RabbitMQ and Redis run elsewhere
# (OUTBOX_AMQP_URL, OUTBOX_REDIS_URL); the command is chosen at run time: `outbox worker`,
# `outbox webhooks`, `outbox bounces` (deploy/docker-compose.yml runs all three).
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 OUTBOX_METRICS_PORT=9100
WORKDIR /app
# Dependencies first (this layer changes only with the lock): every package pinned, every file
# checked against its hash, the build backend (setuptools) included, so the project itself is
# built without fetching anything (--no-build-isolation) and installed without resolving
# anything (--no-deps). Regenerate the lock as README "Deployment and monitoring" says.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY config ./config
COPY suppression ./suppression
COPY sender ./sender
COPY webhooks ./webhooks
COPY outbox ./outbox
COPY deploy/healthcheck.py /usr/local/bin/outbox-healthcheck
RUN pip install --no-deps --no-build-isolation . && pip check \
    && chmod 0755 /usr/local/bin/outbox-healthcheck \
    && useradd --system --uid 10001 outbox
USER outbox
EXPOSE 8080 2626 9100
STOPSIGNAL SIGTERM
# What the command serves: /healthz (webhooks, run), /metrics on OUTBOX_METRICS_PORT (worker;
# bounces, with its SMTP port); or the targets given: outbox-healthcheck http://... tcp://h:p
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["outbox-healthcheck"]
ENTRYPOINT ["outbox"]
CMD ["worker"]
