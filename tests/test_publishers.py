"""The publisher contract suite against the real NATS JetStream, RabbitMQ and Redis on this
machine and the local webhook receiver (see ``shared/services.md`` for the addresses)."""

from gateway.testing.publisher_contract import *  # noqa: F403
