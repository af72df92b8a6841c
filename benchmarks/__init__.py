"""End-to-end benchmarks of Outbox against real RabbitMQ, Redis and an SMTP sink, with two
baselines beside it (``benchmarks.baselines``). Run ``python -m benchmarks --help``."""
