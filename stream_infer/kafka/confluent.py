"""The confluent-kafka (librdkafka) implementation of the client layer.

librdkafka fetches, checks CRCs, decompresses, batches and sends in C threads, without the GIL, so
the Python side of a record costs a few attribute reads on the way in and one ``produce`` call on
the way out. Rebalance callbacks run inside ``poll`` on the calling thread (as with kafka-python,
where they run while the poll waits), followed by the incremental assign or unassign of the
cooperative-sticky protocol. Errors come back as the project's ``errors`` classes
(``translate``). The admin calls (``ConfluentAdmin``, on ``confluent_kafka.admin.AdminClient``)
and the readers outside the group (``ConfluentReader``: the changelog restore, the metadata
probe) are librdkafka's too, with the same connection and security settings (``base_config``).

librdkafka reports some failures out of band (``error_cb``): refused credentials and fatal
errors are raised at the next ``poll`` or ``produce``; transport errors, which it retries on
its own, are counted and logged at most once a second.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import confluent_kafka as ck

from stream_infer.errors import ConfigError
from stream_infer.kafka import errors as kerr
from stream_infer.kafka.sizing import heartbeat_interval_ms, max_request_bytes, producer_batch_bytes
from stream_infer.kafka.types import (
    AclSpec,
    ConsumedRecord,
    ErrorCallback,
    OffsetAndMetadata,
    StableOffset,
    TopicPartition,
    unhandled,
)

if TYPE_CHECKING:
    from stream_infer.config import KafkaSettings, Settings

logger = logging.getLogger(__name__)

_E = ck.KafkaError
# librdkafka's local errors that refuse this client for good (a retry cannot help).
_REFUSALS = {_E._AUTHENTICATION: kerr.SaslAuthenticationFailedError}
_LOCAL = {
    _E._TIMED_OUT: kerr.KafkaTimeoutError,
    _E._MSG_TIMED_OUT: kerr.KafkaTimeoutError,
    _E._TRANSPORT: kerr.KafkaConnectionError,
    _E._ALL_BROKERS_DOWN: kerr.KafkaConnectionError,
    _E._RESOLVE: kerr.KafkaConnectionError,
    _E._SSL: kerr.KafkaConnectionError,
    _E._FENCED: kerr.ProducerFencedError,
    _E._ASSIGNMENT_LOST: kerr.CommitFailedError,
    _E._MAX_POLL_EXCEEDED: kerr.CommitFailedError,
    _E._UNKNOWN_TOPIC: kerr.UnknownTopicOrPartitionError,
    _E._UNKNOWN_PARTITION: kerr.UnknownTopicOrPartitionError,
    **_REFUSALS,
}
_FENCED_CODES = {_E._FENCED, 90, 47}  # PRODUCER_FENCED, INVALID_PRODUCER_EPOCH


def translate(err: ck.KafkaError, about: str = "") -> kerr.KafkaError:
    """librdkafka's error as the project's ``errors`` class of the same broker error code (or the
    nearest for a local one), its message naming ``about`` (e.g. the topic) when given."""
    code = err.code()
    text = f"{err.str()}{f' ({about})' if about else ''}"
    cls: type[kerr.KafkaError]
    if code in _FENCED_CODES:
        cls = kerr.ProducerFencedError
    elif code >= 0:
        cls = kerr.for_code(code)
    else:
        cls = _LOCAL.get(code, kerr.KafkaError)
    exc = cls(text)
    exc.origin = err
    return exc


def _raise(exc: ck.KafkaException, about: str = "") -> kerr.KafkaError:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], ck.KafkaError) else None
    if err is None:
        return kerr.KafkaError(str(exc))
    return translate(err, about)


def base_config(k: KafkaSettings, role: str) -> dict[str, Any]:
    """Connection and security settings of one client, in librdkafka's names."""
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "client.id": f"{k.client_id}-{role}",
        "socket.timeout.ms": k.request_timeout_ms,
        "reconnect.backoff.max.ms": k.reconnect_backoff_max_ms,
        "security.protocol": k.security_protocol.lower(),
    }
    if k.security_protocol.startswith("SASL"):
        conf["sasl.mechanism"] = k.sasl_mechanism
        if k.sasl_mechanism == "OAUTHBEARER":
            from stream_infer.kafka.oauth import shared_provider

            assert k.sasl_oauth_token_endpoint_url and k.sasl_oauth_client_id
            provider = shared_provider(
                k.sasl_oauth_token_endpoint_url, k.sasl_oauth_client_id, k.oauth_secret, k.sasl_oauth_scope
            )

            def oauth_cb(_config: str) -> tuple[str, float]:
                token = provider.token()
                return token, time.time() + provider.seconds_left()

            conf["oauth_cb"] = oauth_cb
        else:
            conf["sasl.username"] = k.sasl_username
            conf["sasl.password"] = k.password()
    if k.security_protocol.endswith("SSL"):
        for key, value in (
            ("ssl.ca.location", k.ssl_cafile),
            ("ssl.certificate.location", k.ssl_certfile),
            ("ssl.key.location", k.ssl_keyfile),
        ):
            if value is not None:
                conf[key] = str(value)
        if k.ssl_password is not None:
            conf["ssl.key.password"] = k.ssl_password.get_secret_value()
        conf["ssl.endpoint.identification.algorithm"] = "https" if k.ssl_check_hostname else "none"
    conf["logger"] = _LIBRDKAFKA_LOG
    conf.update(k.librdkafka_properties)
    return conf


class _OncePerWhile(logging.Filter):
    """librdkafka logs every reconnect attempt: one line per kind of message and 10 s."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        kind = text.split("|", 3)[2] if text.count("|") >= 3 else text[:40]
        now = time.monotonic()
        if now - self._last.get(kind, -1e9) < self.every_s:
            return False
        self._last[kind] = now
        return True


_LIBRDKAFKA_LOG = logging.getLogger("stream_infer.kafka.librdkafka")
_LIBRDKAFKA_LOG.addFilter(_OncePerWhile())


class _OutOfBand:
    """librdkafka's ``error_cb``: refusals and fatal errors are kept for the next call to raise;
    the rest (librdkafka retries them) are logged at most once every 5 s."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.pending: kerr.KafkaError | None = None
        self._logged = 0.0

    def __call__(self, err: ck.KafkaError) -> None:
        if err.code() in _REFUSALS or err.fatal():
            self.pending = self.pending or translate(err)
            return
        now = time.monotonic()
        if now - self._logged > 5.0:
            self._logged = now
            logger.warning("kafka %s: %s (retried by the client)", self.what, err.str())

    def raise_pending(self) -> None:
        if self.pending is not None:
            exc, self.pending = self.pending, None
            raise exc


def _fatal(exc: BaseException) -> bool:
    err = getattr(exc, "origin", None)
    if not isinstance(err, ck.KafkaError) or err.code() in _REFUSALS:
        return False
    return bool(err.fatal() or err.code() == _E._FATAL)


class ConfluentConsumer:
    """The group consumer on librdkafka, with kafka-python's calling conventions."""

    client = "confluent-kafka"

    def __init__(self, settings: Settings) -> None:
        k = settings.kafka
        self._errors = _OutOfBand("consumer")
        self._max = k.max_poll_records
        self._lso: dict[TopicPartition, tuple[int, int, float]] = {}
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._tps: dict[tuple[str, int], TopicPartition] = {}
        self._commit_callback: Callable[[Any, Any], None] | None = None
        self._stats_lock = threading.Lock()
        conf = base_config(k, "consumer")
        conf.update(
            {
                "group.id": k.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": k.auto_offset_reset,
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                "max.poll.interval.ms": k.max_poll_interval_ms,
                "session.timeout.ms": k.session_timeout_ms,
                "heartbeat.interval.ms": heartbeat_interval_ms(settings),
                "fetch.max.bytes": k.fetch_max_bytes,
                "max.partition.fetch.bytes": k.max_partition_fetch_bytes,
                "enable.partition.eof": False,
                # The last stable offsets come with librdkafka's statistics.
                "statistics.interval.ms": max(1000, int(settings.metrics.lag_interval_s * 1000)),
                "stats_cb": self._stats,
                "error_cb": self._errors,
                "on_commit": self._on_commit,
                **({"group.instance.id": k.group_instance_id} if k.group_instance_id else {}),
            }
        )
        conf.update({key: v for key, v in k.librdkafka_properties.items() if key not in conf})
        self._conf = conf
        self._topics: list[str] = []
        self._listener: Any = None
        self._c = _make(ck.Consumer, conf)
        self.replaced = 0  # consumers replaced after a fatal error
        self._silenced = False

    def _tp(self, topic: str, partition: int) -> TopicPartition:
        key = (topic, partition)
        tp = self._tps.get(key)
        if tp is None:
            tp = self._tps[key] = TopicPartition(topic, partition)
        return tp

    # --- the group ---

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        def call_back(event: str, assigned: bool) -> Callable[[Any, list[ck.TopicPartition]], None]:
            """Keep the assignment (and paused set) up to date, then tell the listener."""

            def cb(_c: Any, parts: list[ck.TopicPartition]) -> None:
                tps = {self._tp(p.topic, p.partition) for p in parts}
                if assigned:
                    self._assigned |= tps
                else:
                    self._assigned -= tps
                    self._paused -= tps
                if listener is not None and not self._silenced:
                    getattr(listener, f"on_partitions_{event}")(tps)

            return cb

        self._topics, self._listener = list(topics), listener
        self._callbacks = {
            "on_assign": call_back("assigned", True),
            "on_revoke": call_back("revoked", False),
            "on_lost": call_back("lost", False),
        }
        self._c.subscribe(topics, **self._callbacks)

    def _replace(self, why: BaseException) -> None:
        """After a fatal error (e.g. the broker fenced this static member when its session ended
        across an outage and a stale request came back), librdkafka's consumer is unusable: its
        partitions are lost (the listener drops their state, uncommitted input replays) and a
        new consumer joins the group in its place."""
        logger.warning("the consumer hit a fatal error (%s); a new consumer replaces it", why)
        lost, self._assigned, self._paused = self._assigned, set(), set()
        if lost and self._listener is not None:
            self._listener.on_partitions_lost(lost)
        self._silenced = True  # its partitions are already handed back as lost
        try:
            self._c.close()
        except Exception as exc:
            logger.info("closing the failed consumer: %s", exc)
        finally:
            self._silenced = False
        self._errors.pending = None
        self._c = _make(ck.Consumer, self._conf)
        self.replaced += 1
        if self._topics:
            self._c.subscribe(self._topics, **self._callbacks)

    def group_settled(self) -> bool:
        """librdkafka runs the group protocol in C and does not say; always True."""
        return True

    def group_metadata(self) -> Any:
        return self._c.consumer_group_metadata()

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    # --- records ---

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        """Up to ``max_poll_records`` records, by partition, in offset order. An error that
        comes among the records is raised at the next call, after the records before it were
        returned (librdkafka's position is already past them: they must not be dropped)."""
        try:
            msgs = self._take(timeout_ms / 1000.0)
            self._errors.raise_pending()
        except ck.KafkaException as exc:
            err = _raise(exc)
            if not _fatal(err):
                raise err from None
            self._replace(err)
            return {}
        except kerr.KafkaError as exc:
            if not _fatal(exc):
                raise
            self._replace(exc)
            return {}
        out: dict[TopicPartition, list[Any]] = {}
        tp_of = self._tp
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() != _E._PARTITION_EOF and self._errors.pending is None:
                    self._errors.pending = translate(err, f"topic {m.topic()}" if m.topic() else "")
                continue
            tp = tp_of(m.topic(), m.partition())  # type: ignore[arg-type]
            recs = out.get(tp)
            if recs is None:
                recs = out[tp] = []
            recs.append(
                ConsumedRecord(
                    tp.topic,
                    tp.partition,
                    m.offset(),  # type: ignore[arg-type]
                    m.timestamp()[1],
                    m.key(),
                    m.value(),
                    m.headers() or (),  # type: ignore[arg-type]
                )
            )
        return out

    def _take(self, timeout_s: float) -> list[Any]:
        """What is already fetched (up to ``max_poll_records``), without waiting; when nothing
        is, wait up to ``timeout_s`` for the first record only. (``consume(n, timeout)`` waits
        until ``n`` records or the timeout: at moderate rates every poll would wait it out.)"""
        c = self._c
        msgs = c.consume(self._max, 0)
        if msgs:
            return msgs
        first = c.poll(timeout_s)
        if first is None:
            return []
        return [first, *c.consume(self._max - 1, 0)] if self._max > 1 else [first]

    def pause(self, *partitions: TopicPartition) -> None:
        self._c.pause([ck.TopicPartition(tp.topic, tp.partition) for tp in partitions])
        self._paused |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._c.resume([ck.TopicPartition(tp.topic, tp.partition) for tp in partitions])
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return self._paused & self._assigned

    # --- offsets ---

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            result = self._c.commit(offsets=_offsets(offsets), asynchronous=False)
        except ck.KafkaException as exc:
            raise _raise(exc) from None
        for p in result or ():
            if p.error is not None:
                raise translate(p.error, f"{p.topic}[{p.partition}]")

    def commit_async(
        self,
        offsets: dict[TopicPartition, OffsetAndMetadata],
        callback: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self._commit_callback = callback
        try:
            self._c.commit(offsets=_offsets(offsets), asynchronous=True)
        except ck.KafkaException as exc:
            raise _raise(exc) from None

    def _on_commit(self, err: ck.KafkaError | None, parts: list[ck.TopicPartition]) -> None:
        cb = self._commit_callback
        if cb is None:
            return
        failed = [p for p in parts if p.error is not None]
        if err is not None or failed:
            why = translate(err if err is not None else failed[0].error)  # type: ignore[arg-type]
            cb([self._tp(p.topic, p.partition) for p in (parts if err is not None else failed)], why)

    def committed(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        timeout = -1 if timeout_ms is None else timeout_ms / 1000.0
        try:
            (p,) = self._c.committed(
                [ck.TopicPartition(partition.topic, partition.partition)], timeout=timeout
            )
        except ck.KafkaException as exc:
            raise _raise(exc) from None
        if p.error is not None:
            raise translate(p.error)
        return None if p.offset < 0 else int(p.offset)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._seek(partition, offset)

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._seek(tp, ck.OFFSET_BEGINNING)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._seek(tp, ck.OFFSET_END)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._c.seek(ck.TopicPartition(tp.topic, tp.partition, offset))
        except ck.KafkaException as exc:
            raise _raise(exc, f"{tp.topic}[{tp.partition}]") from None

    def position(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        (p,) = self._c.position([ck.TopicPartition(partition.topic, partition.partition)])
        return None if p.offset < 0 else int(p.offset)

    def highwater(self, partition: TopicPartition) -> int | None:
        try:
            _, hi = self._c.get_watermark_offsets(
                ck.TopicPartition(partition.topic, partition.partition), cached=True
            )
        except ck.KafkaException:
            return None
        return None if hi is None or hi < 0 else int(hi)

    def stable_offset(self, tp: TopicPartition) -> StableOffset | None:
        """The LSO from librdkafka's latest statistics (``ls_offset``)."""
        with self._stats_lock:
            seen = self._lso.get(tp)
        if seen is None or tp not in self._assigned:
            return None
        hw, lso, since = seen
        return StableOffset(hw, lso, time.monotonic() - since if lso < hw else 0.0)

    def _stats(self, stats_json: str) -> None:
        try:
            topics = json.loads(stats_json).get("topics", {})
        except ValueError:
            return
        now = time.monotonic()
        with self._stats_lock:
            for topic, t in topics.items():
                for part, p in t.get("partitions", {}).items():
                    hw, lso = p.get("hi_offset", -1), p.get("ls_offset", -1)
                    if int(part) < 0 or hw < 0 or lso < 0:
                        continue
                    tp = self._tp(topic, int(part))
                    prev = self._lso.get(tp)
                    since = prev[2] if prev is not None and prev[1] == lso and prev[1] < prev[0] else now
                    self._lso[tp] = (hw, lso, since)

    def close(self, autocommit: bool = False) -> None:
        """Leave the group (revocation callbacks run here); nothing is committed."""
        self._c.close()


class _Abandoned:
    """What an abandoned producer holds instead of its librdkafka instance: any use is a bug."""

    def __getattr__(self, name: str) -> Any:
        raise kerr.IllegalStateError(f"producer.{name}: this producer was abandoned")


def _make(cls: Any, conf: dict[str, Any]) -> Any:
    """A librdkafka client; settings it refuses end the start with one line, as does a token
    endpoint that refuses or cannot be reached (asked here first: librdkafka would wait 10 s
    for a token and then report only that none came)."""
    oauth_cb = conf.get("oauth_cb")
    if oauth_cb is not None:
        oauth_cb(conf.get("sasl.oauthbearer.config", ""))  # the provider keeps the token
    try:
        return cls(conf)
    except ck.KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        text = err.str() if isinstance(err, ck.KafkaError) else str(err)
        raise ConfigError(f"kafka.client confluent-kafka: {text}") from None


def _offsets(offsets: dict[TopicPartition, OffsetAndMetadata]) -> list[ck.TopicPartition]:
    return [ck.TopicPartition(tp.topic, tp.partition, om.offset) for tp, om in offsets.items()]


class ConfluentProducer:
    """The instance's producer on librdkafka: idempotent, acks=all, keys partitioned by
    murmur2 as the Java client does (``murmur2_random``), and only failed deliveries reported
    (``delivery.report.only.error``), so a successful record costs no Python callback."""

    client = "confluent-kafka"

    def __init__(
        self,
        settings: Settings,
        transactional_id: str | None = None,
        role: str = "producer",
        dead_letter_max_bytes: int | None = None,
    ) -> None:
        k = settings.kafka
        self.on_error: ErrorCallback = unhandled
        self._errors = _OutOfBand("producer")
        self._timeout_s = k.request_timeout_ms / 1000.0
        self._unserved = 0
        self._transactions_ready = False
        conf = base_config(k, role)
        conf.update(
            {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": k.linger_ms,
                "batch.size": producer_batch_bytes(settings, dead_letter_max_bytes),
                "message.max.bytes": max_request_bytes(settings),
                "message.timeout.ms": 300_000,
                "compression.type": k.compression_type,
                "partitioner": "murmur2_random",
                "queue.buffering.max.messages": 1_000_000,
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
                "error_cb": self._errors,
            }
        )
        if transactional_id:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = settings.delivery.transaction_timeout_ms
            # librdkafka: a record or request may not outlive the transaction it belongs to.
            conf["message.timeout.ms"] = settings.delivery.transaction_timeout_ms
            conf["socket.timeout.ms"] = min(
                k.request_timeout_ms, settings.delivery.transaction_timeout_ms + 100
            )
        conf.update({key: v for key, v in k.librdkafka_properties.items() if key not in conf})
        self.config = conf
        self._p = _make(ck.Producer, conf)

    def _delivered(self, err: ck.KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.on_error(translate(err, f"topic {msg.topic()}"))

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        p = self._p
        part = -1 if partition is None else partition
        while True:
            try:
                p.produce(topic, value, key, part, headers=headers)  # type: ignore[arg-type]
                break
            except BufferError:  # the local queue is full: serve callbacks while it drains
                p.poll(0.05)
            except ck.KafkaException as exc:
                raise _raise(exc, f"topic {topic}") from None
        self._unserved += 1
        if self._unserved >= 10_000:  # delivery reports (failures only) are served by poll
            self._unserved = 0
            p.poll(0)
            self._errors.raise_pending()

    def key_partitions(self, topic: str, keys: list[bytes]) -> list[int | None]:
        """librdkafka partitions keys itself, in C (``murmur2_random``)."""
        return [None] * len(keys)

    def flush_within(self, timeout_s: float | None = None) -> None:
        left = self._p.flush(-1 if timeout_s is None else timeout_s)
        self._errors.raise_pending()
        if left:
            raise kerr.KafkaTimeoutError(f"{left} records not delivered within {timeout_s} s")

    def flush(self, timeout: float | None = None) -> None:
        self.flush_within(timeout)

    def init_transactions(self) -> None:
        """Idempotent once it succeeded (as kafka-python's; librdkafka refuses a second call)."""
        if self._transactions_ready:
            return
        try:
            self._p.init_transactions(self._timeout_s)
        except ck.KafkaException as exc:
            raise _raise(exc) from None
        self._transactions_ready = True

    def begin_transaction(self) -> None:
        try:
            self._p.begin_transaction()
        except ck.KafkaException as exc:
            raise _raise(exc) from None

    def commit_transaction_with(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], group_metadata: Any, timeout_ms: int
    ) -> None:
        """Add ``offsets`` to the open transaction and commit it (librdkafka flushes the
        transaction's records first), each step bounded by ``timeout_ms``."""
        timeout = timeout_ms / 1000.0
        try:
            if offsets:
                self._p.send_offsets_to_transaction(_offsets(offsets), group_metadata, timeout)
            self._p.commit_transaction(timeout)
        except ck.KafkaException as exc:
            raise _raise(exc) from None

    def partitions_for(self, topic: str) -> set[int]:
        md = self._p.list_topics(topic, timeout=self._timeout_s)
        t = md.topics.get(topic)
        return set() if t is None or t.error is not None else set(t.partitions)

    def abandon(self) -> None:
        """Drop what is queued or in flight without delivering it, serve those records'
        callbacks (their errors belong to an aborted transaction), and destroy the librdkafka
        instance. Destroyed, not left to the garbage collector: an instance whose
        ``init_transactions`` timed out goes on in the background, and when it gets its epoch
        later it fences the producer that replaced it."""
        handle, self._p = self._p, _Abandoned()
        try:
            handle.purge(in_queue=True, in_flight=True, blocking=False)
            handle.poll(0)
        except Exception as exc:
            logger.info("purging the abandoned producer: %s", exc)
        del handle  # the last reference: rd_kafka_destroy runs now

    def close(self, timeout: float | None = None) -> None:
        self.flush_within(timeout)


# --- outside the group: the admin client and the readers --------------------------------------


class _Faults:
    """``error_cb`` of an admin client or a reader: until the first connection every distinct
    error is kept (the start names the cause from them); after it, refusals and fatal errors
    are kept for the next call to raise and the rest logged at most once every 5 s."""

    def __init__(self, what: str) -> None:
        self.seen: dict[str, None] = {}
        self.connected = False
        self._out_of_band = _OutOfBand(what)
        # librdkafka's log lines of this client: held back until it connects (the start's
        # one line names the cause from ``seen``), then those of every client.
        self.logger = logging.Logger(_LIBRDKAFKA_LOG.name)
        self.logger.parent = _LIBRDKAFKA_LOG
        self.logger.addFilter(lambda _record: self.connected)
        self.logger.addFilter(_OncePerWhile())

    def __call__(self, err: ck.KafkaError) -> None:
        if not self.connected:
            if err.code() != _E._ALL_BROKERS_DOWN or not self.seen:
                self.seen[err.str()] = None
            return
        self._out_of_band(err)

    def last(self) -> str | None:
        return next(reversed(self.seen), None)

    def raise_pending(self) -> None:
        self._out_of_band.raise_pending()


_ATTEMPT_S = 2.0  # one metadata request at start, before the faults seen are checked


def connect_admin(settings: Settings, timeout_s: float) -> ConfluentAdmin:
    """An admin client that reached the brokers within ``timeout_s``; else a ``ConfigError`` in
    one line: the refusal (credentials, certificates, protocol) as soon as librdkafka reports
    it, or the last connection error when the time is up."""
    from confluent_kafka.admin import AdminClient

    from stream_infer.kafka.access import closed_during_sasl, explain_refusal

    k = settings.kafka
    faults = _Faults("admin")
    conf = base_config(k, "admin")
    conf["error_cb"] = faults
    conf["logger"] = faults.logger
    # librdkafka's admin client is a producer inside, which asks the broker to create a topic
    # it asks about: a topic looked up must stay missing (ensure_topics creates it as it needs).
    conf["allow.auto.create.topics"] = False
    admin = _make(AdminClient, conf)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.1, min(_ATTEMPT_S, left)))
        except ck.KafkaException as exc:
            failed = _raise(exc)
        else:
            faults.connected = True
            faults.seen.clear()
            return ConfluentAdmin(admin, k.request_timeout_ms / 1000.0, faults)
        admin.poll(0)  # serve error_cb
        seen = [_with_tls_detail(f, k) for f in faults.seen]
        refused = next(filter(None, (explain_refusal(f, settings) for f in seen)), None)
        if refused:
            raise ConfigError(f"Kafka at {k.bootstrap_servers} refused the connection: {refused}") from failed
        if time.monotonic() >= deadline:
            cause = faults.last() or str(failed)
            raise ConfigError(
                f"cannot reach Kafka at {k.bootstrap_servers} within {timeout_s:g} s: {cause}"
                + closed_during_sasl(k.security_protocol, list(faults.seen))
            ) from failed


def _with_tls_detail(fault: str, k: KafkaSettings) -> str:
    """librdkafka says "certificate verify failed" both for a CA that did not sign the broker's
    certificate and for a host name the certificate does not name: the reason is asked of a
    TLS handshake of Python's own with the same CA and host (OpenSSL's verify message)."""
    if "certificate verify failed" not in fault.lower():
        return fault
    import socket
    import ssl

    host, _, port = k.bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        ctx = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
        ctx.check_hostname = k.ssl_check_hostname
        with (
            socket.create_connection((host, int(port)), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=host),
        ):
            return fault
    except ssl.SSLCertVerificationError as exc:
        return f"{fault} ({exc.verify_message})"
    except (OSError, ValueError):
        return fault


def _result(future: Any, about: str = "") -> Any:
    """A future's result; librdkafka's error as the project's."""
    try:
        return future.result()
    except ck.KafkaException as exc:
        raise _raise(exc, about) from None


class ConfluentAdmin:
    """``types.Admin`` on ``confluent_kafka.admin.AdminClient``."""

    client = "confluent-kafka"

    def __init__(self, admin: Any, timeout_s: float, faults: _Faults) -> None:
        self._a = admin
        self._timeout_s = timeout_s
        self._faults = faults

    def partitions(self, topic: str) -> int | None:
        try:
            md = self._a.list_topics(topic, timeout=self._timeout_s)
        except ck.KafkaException:
            return None
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return None
        return len(t.partitions) or None

    def create_topic(self, name: str, partitions: int, configs: dict[str, str] | None = None) -> None:
        from confluent_kafka.admin import NewTopic

        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(configs or {}))
        futures = self._a.create_topics([new], request_timeout=self._timeout_s)
        _result(futures[name], f"topic {name}")

    def topic_operations(self, topics: list[str]) -> dict[str, set[str] | None]:
        allowed: dict[str, set[str] | None] = {}
        if not topics:
            return allowed
        futures = self._a.describe_topics(
            ck.TopicCollection(list(topics)),
            include_authorized_operations=True,
            request_timeout=self._timeout_s,
        )
        for name, future in futures.items():
            try:
                desc = _result(future, f"topic {name}")
            except kerr.UnknownTopicOrPartitionError:
                continue
            except kerr.TopicAuthorizationFailedError:
                allowed[name] = set()
                continue
            ops = getattr(desc, "authorized_operations", None)
            allowed[name] = None if ops is None else {str(getattr(o, "name", o)) for o in ops}
        return allowed

    def group_operations(self, group: str) -> set[str] | None:
        futures = self._a.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=self._timeout_s
        )
        desc = _result(futures[group], f"group {group}")
        ops = getattr(desc, "authorized_operations", None)
        return None if ops is None else {str(getattr(o, "name", o)) for o in ops}

    def _config(self, kind: str, name: str, key: str) -> str | None:
        from confluent_kafka.admin import ConfigResource

        resource = ConfigResource(kind, name)
        try:
            futures = self._a.describe_configs([resource], request_timeout=self._timeout_s)
            entries = _result(next(iter(futures.values())))
        except (kerr.KafkaError, StopIteration):
            return None
        entry = entries.get(key)
        return None if entry is None or entry.value is None else str(entry.value)

    def topic_config(self, topic: str, name: str) -> str | None:
        return self._config("topic", topic, name)

    def broker_config(self, name: str) -> str | None:
        try:
            cluster = _result(self._a.describe_cluster(request_timeout=self._timeout_s))
            broker = str(cluster.nodes[0].id)
        except (kerr.KafkaError, IndexError, AttributeError):
            return None
        return self._config("broker", broker, name)

    def create_acls(self, acls: list[AclSpec], principal: str) -> None:
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            ResourcePatternType,
            ResourceType,
        )

        bindings = [
            AclBinding(
                ResourceType["BROKER" if a.resource == "CLUSTER" else a.resource],
                "kafka-cluster" if a.resource == "CLUSTER" else a.name,
                ResourcePatternType[a.pattern],
                principal,
                "*",
                AclOperation[a.operation],
                AclPermissionType.ALLOW,
            )
            for a in acls
        ]
        if not bindings:
            return
        for binding, future in self._a.create_acls(bindings, request_timeout=self._timeout_s).items():
            try:
                _result(future)
            except kerr.KafkaError as exc:
                raise type(exc)(f"could not create ACL {binding}: {exc}") from exc

    def close(self) -> None:
        """librdkafka's admin client ends when the last reference goes."""
        self._a = _Abandoned()


# Errors about the consumer group alone (its coordinator's lookup): not a reader's concern.
_GROUP_ONLY = {
    30,
    15,
    14,
    16,
}  # GROUP_AUTHORIZATION_FAILED, COORDINATOR_NOT_AVAILABLE, ..._LOAD_IN_PROGRESS, NOT_COORDINATOR


class ConfluentReader:
    """``stream_infer.kafka.Reader`` on a librdkafka consumer that only assigns (no group is
    joined, nothing committed), ``read_committed``. End offsets are the last stable offsets
    (``list_offsets`` of an admin client, ``read_committed``), as kafka-python's ``end_offsets``
    of a ``read_committed`` consumer; a partition whose end librdkafka reports (partition EOF,
    past any transaction markers) counts as read to there."""

    def __init__(self, settings: Settings, role: str) -> None:
        k = settings.kafka
        self._settings = settings
        self._role = role
        self._timeout_s = k.request_timeout_ms / 1000.0
        self._errors = _Faults(role)
        self._errors.connected = True
        conf = base_config(k, role)
        conf.update(
            {
                # librdkafka needs a group id, and looks up its coordinator even for a
                # consumer that only assigns (never joins, never commits): the service's own
                # group, on which this principal has READ (and so DESCRIBE) already.
                "group.id": k.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "error_cb": self._errors,
            }
        )
        self._c = _make(ck.Consumer, conf)
        self._eof: dict[TopicPartition, int] = {}
        self._next: dict[TopicPartition, int] = {}

    def partitions_for(self, topic: str) -> set[int] | None:
        try:
            md = self._c.list_topics(topic, timeout=self._timeout_s)
        except ck.KafkaException as exc:
            raise _raise(exc, f"topic {topic}") from None
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            return None
        return set(t.partitions)

    def assign_from_beginning(self, partitions: list[TopicPartition]) -> None:
        try:
            self._c.assign(
                [ck.TopicPartition(tp.topic, tp.partition, ck.OFFSET_BEGINNING) for tp in partitions]
            )
        except ck.KafkaException as exc:
            raise _raise(exc) from None

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import AdminClient, OffsetSpec

        conf = base_config(self._settings.kafka, f"{self._role}-offsets")
        conf["error_cb"] = self._errors
        conf["allow.auto.create.topics"] = False
        admin = _make(AdminClient, conf)
        futures = admin.list_offsets(
            {ck.TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in partitions},
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self._timeout_s,
        )
        return {
            TopicPartition(p.topic, p.partition): int(_result(f, f"{p.topic}[{p.partition}]").offset)
            for p, f in futures.items()
        }

    def position(self, partition: TopicPartition) -> int:
        (p,) = self._c.position([ck.TopicPartition(partition.topic, partition.partition)])
        known = max(self._next.get(partition, 0), self._eof.get(partition, 0))
        return max(known, int(p.offset)) if p.offset is not None and p.offset >= 0 else known

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumedRecord]]:
        try:
            msgs = self._c.consume(50_000, timeout_ms / 1000.0)
        except ck.KafkaException as exc:
            raise _raise(exc) from None
        self._errors.raise_pending()
        out: dict[TopicPartition, list[ConsumedRecord]] = {}
        for m in msgs:
            err = m.error()
            tp = TopicPartition(m.topic(), m.partition())  # type: ignore[arg-type]
            if err is not None:
                if err.code() == _E._PARTITION_EOF:
                    self._eof[tp] = max(self._eof.get(tp, 0), int(m.offset()))  # type: ignore[arg-type]
                    continue
                if m.topic() is None and err.code() in _GROUP_ONLY:
                    continue  # about the group, which this reader never uses
                raise translate(err, f"topic {m.topic()}")
            offset = int(m.offset())  # type: ignore[arg-type]
            self._next[tp] = offset + 1
            out.setdefault(tp, []).append(
                ConsumedRecord(
                    tp.topic,
                    tp.partition,
                    offset,
                    m.timestamp()[1],
                    m.key(),
                    m.value(),
                    m.headers() or (),  # type: ignore[arg-type]
                )
            )
        return out

    def close(self) -> None:
        self._c.close()
