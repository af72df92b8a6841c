# Outbox worker / webhook server image. RabbitMQ and Redis run elsewhere (OUTBOX_AMQP_URL,
# OUTBOX_REDIS_URL); the command is chosen at run time: `outbox worker`, `outbox webhooks`.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY suppression ./suppression
COPY sender ./sender
COPY webhooks ./webhooks
COPY outbox ./outbox
RUN pip install --no-cache-dir . && useradd --system --uid 10001 outbox
USER outbox
EXPOSE 8080 2626
STOPSIGNAL SIGTERM
ENTRYPOINT ["outbox"]
CMD ["worker"]
