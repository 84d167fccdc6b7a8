"""The Kafka errors the service handles (kafka-python's classes, for now)."""

from kafka.errors import AuthorizationError, KafkaError

__all__ = ["AuthorizationError", "KafkaError"]
