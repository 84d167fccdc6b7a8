"""The client layer's pure parts: which client ``kafka.client`` makes, librdkafka's settings
from the service's, and librdkafka's errors as the project's ``errors`` classes the commit path and
the access checks handle. (Both clients against the real broker: the integration suites, run
once per client by the test command.)"""

from __future__ import annotations

import confluent_kafka as ck
import pytest

from stream_infer.config import load_settings
from stream_infer.errors import ConfigError
from stream_infer.kafka import errors as kerr
from stream_infer.kafka import make_producer
from stream_infer.kafka.confluent import ConfluentProducer, base_config, translate


@pytest.mark.parametrize(
    "code,cls",
    [
        (29, kerr.TopicAuthorizationFailedError),
        (30, kerr.GroupAuthorizationFailedError),
        (53, kerr.TransactionalIdAuthorizationFailedError),
        (27, kerr.RebalanceInProgressError),
        (25, kerr.UnknownMemberIdError),
        (90, kerr.ProducerFencedError),
        (47, kerr.ProducerFencedError),
        (ck.KafkaError._FENCED, kerr.ProducerFencedError),
        (ck.KafkaError._TIMED_OUT, kerr.KafkaTimeoutError),
        (ck.KafkaError._AUTHENTICATION, kerr.SaslAuthenticationFailedError),
        (ck.KafkaError._TRANSPORT, kerr.KafkaConnectionError),
        (ck.KafkaError._STATE, kerr.KafkaError),
    ],
)
def test_librdkafka_errors_become_the_kafka_errors_classes(code, cls):
    exc = translate(ck.KafkaError(code), "topic t")
    assert type(exc) is cls and "(topic t)" in str(exc)


def test_an_authorization_error_is_named_by_the_access_checks():
    from stream_infer.kafka.access import denied

    s = load_settings(None, topics={"input": "in"})
    refusal = denied(translate(ck.KafkaError(29), "topic in"), s)
    assert refusal is not None and "READ" in str(refusal) and "in" in str(refusal)


def _kafka(**kw):
    return load_settings(None, kafka=kw).kafka


def test_librdkafka_settings_for_mtls_and_scram(tmp_path):
    k = _kafka(
        security_protocol="SSL",
        ssl_cafile=str(tmp_path / "ca.pem"),
        ssl_certfile=str(tmp_path / "c.pem"),
        ssl_keyfile=str(tmp_path / "c.key"),
        ssl_check_hostname=False,
    )
    c = base_config(k, "consumer")
    assert c["security.protocol"] == "ssl"
    assert c["ssl.ca.location"].endswith("ca.pem") and c["ssl.key.location"].endswith("c.key")
    assert c["ssl.endpoint.identification.algorithm"] == "none"
    assert c["client.id"] == "stream-infer-consumer"
    k = _kafka(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p"
    )
    c = base_config(k, "producer")
    assert (c["sasl.mechanism"], c["sasl.username"], c["sasl.password"]) == ("SCRAM-SHA-512", "u", "p")
    assert c["ssl.endpoint.identification.algorithm"] == "https"


def test_kafka_client_picks_the_implementation_and_librdkafka_properties_pass_through():
    s = load_settings(
        None,
        kafka={"client": "confluent-kafka", "librdkafka_properties": {"queue.buffering.max.kbytes": 65536}},
        delivery={"guarantee": "exactly-once", "transaction_timeout_ms": 20_000},
    )
    p = make_producer(s, "txn-1")  # librdkafka connects in the background: no broker needed
    try:
        assert isinstance(p, ConfluentProducer)
        assert p.key_partitions("out", [b"a", b"b"]) == [None, None]  # murmur2 in C
    finally:
        p.abandon()
    assert load_settings(None).kafka.client == "confluent-kafka"


def test_settings_librdkafka_refuses_end_in_one_line():
    s = load_settings(
        None, kafka={"client": "confluent-kafka", "librdkafka_properties": {"no.such.property": 1}}
    )
    with pytest.raises(ConfigError, match="kafka.client confluent-kafka: .*no.such.property"):
        make_producer(s)
