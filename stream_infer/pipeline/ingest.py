"""Ingest: one poll's records through decode, dead letters, admission and windows, and the
completed windows handed to the inference thread.

Data flows one way: records in, windows out to ``hand_off``, bad records out to the dead-letter
sink. Nothing here commits: the run loop marks a poll's offsets committable only once ``ingest``
has returned, so every record of it is windowed, handed on or dead-lettered by then.

Poison isolation: decode is built never to raise, and a failure of the windowing of a whole poll
is retried record by record; a record that still fails is dead-lettered as ``internal_error``
and the other records go on. Only a ``PipelineError`` (not about one record: the inference
thread failed, dead letters cannot be sent) escapes.

Control messages (``pipeline/control.py``, docs/formats.md) split a poll: the records before one
are ingested and the targeted models' inference threads drained before it is applied, so an
entity's samples before it run with the state it replaces and those after it with the new one.
A poll without any (a header scan, at C speed when no record has headers) takes the path above
unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream_infer.errors import PipelineError, SinkError
from stream_infer.kafka.errors import KafkaError
from stream_infer.kafka.types import ConsumedRecord
from stream_infer.metrics import Metrics
from stream_infer.pipeline.control import Control, Controls, has_control, is_control
from stream_infer.pipeline.decode import Decoder, DecodeResult, internal_error
from stream_infer.pipeline.sink import Sink
from stream_infer.records import InvalidMessage, SampleBatch, WindowBatch
from stream_infer.state.models import PLAIN
from stream_infer.state.store import ADMITTED, Admission, EntityStore
from stream_infer.state.windows import DROPS, SEGMENTS, PushStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One more model on the stream (``models:``): its store, its inference thread's
    ``hand_off`` and ``drain``, and which entities it runs (``runs``: a mask over a batch's
    entities; None: every entity). ``dead_letters``: records refused for want of room in its
    store are dead-lettered (a canary: it serves them) or only counted (a shadow). ``name``:
    the model's, as control messages name it."""

    store: EntityStore
    hand_off: Callable[[WindowBatch], None]
    drain: Callable[[], None]
    runs: Callable[[list[str]], np.ndarray] | None = None
    dead_letters: bool = True
    name: str = PLAIN


class Ingest:
    """The source side of the pipeline, between the consumer and the inference thread.

    ``drain`` waits until the inference thread has run every window handed to it: it is called
    before evicting (a slot is never reused under a window in flight). ``hand_off`` passes
    completed windows on (``InferenceWorker.submit``)."""

    def __init__(
        self,
        decoder: Decoder,
        store: EntityStore,
        sink: Sink,
        metrics: Metrics,
        hand_off: Callable[[WindowBatch], None],
        drain: Callable[[], None],
        dead_letter_topic: str,
        others: Sequence[Route] = (),
        model: str = PLAIN,
        control_messages: bool = False,
    ) -> None:
        """``store``, ``hand_off`` and ``drain``: the primary model's (named ``model``), which
        runs every entity; ``others``: the other models on the stream, each fed the samples of
        its entities. ``control_messages``: apply control messages (``input.control_messages``);
        when off they are dead-lettered as ``control_disabled``."""
        self.decoder = decoder
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self.hand_off = hand_off
        self.drain = drain
        self.dead_letter_topic = dead_letter_topic
        self._logged_at: dict[str, float] = {}  # reason -> when a line about it was last logged
        self._refused_this_poll: set[str] = set()  # counted once per poll, however many parts
        self.routes = (Route(store, hand_off, drain, name=model), *others)
        self._dead_this_poll: set[tuple[int, int]] = set()  # refused records already dead-lettered
        self._by_name = {r.name: r for r in self.routes}
        self.controls = Controls(
            control_messages, {r.name: r.store.model.states for r in self.routes}, decoder.max_message_bytes
        )

    def __call__(self, records: Sequence[ConsumedRecord]) -> None:
        """Decode, dead-letter the bad, window the good and hand completed windows on; control
        messages apply in their place among the samples (``_with_controls``)."""
        self.metrics.messages.inc(len(records))
        if has_control(records):
            self._with_controls(records)
        else:
            self._ingest(records)

    def _ingest(self, records: Sequence[ConsumedRecord]) -> None:
        res = self._decode(records)
        if res.invalid:
            self._dead_letter(res.invalid)
        try:
            self._window(res.samples, records)
        except PipelineError:
            raise
        except Exception as exc:
            logger.warning(
                "windowing a poll of %d records failed (%s: %s); retrying record by record",
                len(records),
                type(exc).__name__,
                exc,
            )
            dead = {(m.partition, m.offset) for m in res.invalid}
            for rec in records:
                if (rec.partition, rec.offset) not in dead:
                    self._one(rec)

    # --- control messages ---

    def _with_controls(self, records: Sequence[ConsumedRecord]) -> None:
        """A poll holding control messages, split at them, in order: the records before a
        control are ingested (their windows handed on), then the control applies (``_control``:
        after draining the targeted models' inference threads), then the rest goes on. Records
        of other entities in between are only split into smaller runs, which changes nothing
        of what they produce."""
        lo = 0
        for i, rec in enumerate(records):
            if not is_control(rec):
                continue
            if i > lo:
                self._ingest(records[lo:i])
            self._control(rec)
            lo = i + 1
        if lo < len(records):
            self._ingest(records[lo:])

    def _control(self, rec: ConsumedRecord) -> None:
        """Check and apply one control message; one that cannot be applied is dead-lettered
        (``control_disabled``, ``bad_control``; ``over_capacity`` when no tier has room for
        a new entity) and changes nothing."""
        got = self.controls.parse(rec)
        if isinstance(got, InvalidMessage):
            self._dead_letter([got])
            return
        try:
            self._apply(got, rec)
        except PipelineError:
            raise
        except Exception as exc:
            self._dead_letter([internal_error(rec, exc)])

    def _apply(self, control: Control, rec: ConsumedRecord) -> None:
        routes = [self._by_name[name] for name, _ in control.targets]
        for route in routes:
            route.drain()  # the windows handed on so far run with the state the control replaces
        now = time.monotonic()
        applied: list[str] = []
        refused: list[str] = []
        for route, (name, tensors) in zip(routes, control.targets, strict=True):
            done = route.store.steer(
                control.entity, control.partition, tensors, now, control.offset, before_free=route.drain
            )
            self._count_admission(done.admission)
            if done.applied:
                applied.append(name)
            elif done.admission.refused:
                refused.append(name)
        self.metrics.entities(len(self.store), self.store.on_disk)
        if applied:
            self.metrics.control_messages.labels(control.kind).inc()
            if self._first_this_second(f"control {control.kind}"):
                logger.info(
                    "control %s applied to entity %s (models %s) from %s[%d]@%d (similar ones this "
                    "second are counted, not logged)",
                    control.kind,
                    control.entity,
                    ", ".join(applied),
                    rec.topic,
                    rec.partition,
                    rec.offset,
                    extra={"entity": control.entity, "partition": rec.partition, "offset": rec.offset},
                )
        if refused:
            self._dead_letter(
                [
                    InvalidMessage(
                        rec.topic,
                        rec.partition,
                        rec.offset,
                        rec.key,
                        rec.value,
                        list(rec.headers or ()),
                        "over_capacity",
                        f"control {control.kind} for entity {control.entity} not applied to model(s) "
                        f"{', '.join(refused)}: no tier has room for a new entity",
                    )
                ]
            )

    def _decode(self, records: Sequence[ConsumedRecord]) -> DecodeResult:
        try:
            return self.decoder.decode(records)
        except PipelineError:
            raise
        except Exception as exc:  # decode is built never to raise; if it does, one record at a time
            logger.warning(
                "decoding a poll failed (%s: %s); decoding record by record", type(exc).__name__, exc
            )
            parts = [self._decode_one(r) for r in records]
            invalid = [m for p in parts for m in p.invalid]
            good = [p.samples for p in parts if len(p.samples)]
            batch = SampleBatch.concat(good) if good else self.decoder.decode([]).samples
            return DecodeResult(batch, invalid, len(records))

    def _decode_one(self, rec: ConsumedRecord) -> DecodeResult:
        try:
            return self.decoder.decode([rec])
        except PipelineError:
            raise
        except Exception as exc:
            return DecodeResult(self.decoder.decode([]).samples, [internal_error(rec, exc)], 1)

    def _one(self, rec: ConsumedRecord) -> None:
        """One record through decode and windowing; any failure dead-letters it."""
        try:
            res = self.decoder.decode([rec])
            if res.invalid:
                self._dead_letter(res.invalid)
            self._window(res.samples, [rec])
        except PipelineError:
            raise
        except Exception as exc:
            self._dead_letter([internal_error(rec, exc)])

    def _window(self, batch: SampleBatch, records: Sequence[ConsumedRecord]) -> None:
        """Each model's samples (every entity's for the primary and shadows, a canary's own)
        into its windows (``_window_one``)."""
        if not len(batch):
            return
        self._refused_this_poll.clear()
        self._dead_this_poll.clear()
        for route in self.routes:
            part = batch
            if route.runs is not None:
                part = batch.where(route.runs(batch.entities))
            if len(part):
                self._window_one(route, part, records)
        self.metrics.entities(len(self.store), self.store.on_disk)

    def _window_one(self, route: Route, batch: SampleBatch, records: Sequence[ConsumedRecord]) -> None:
        """Admit the samples' entities (``EntityStore.admit``: in parts when one poll holds
        more entities than there are slots) and push them into their windows; completed
        windows go to the model's inference thread. The samples of entities refused for want
        of room are dead-lettered (``over_capacity``)."""
        m = self.metrics
        store = route.store
        primary = route is self.routes[0]
        parts = store.parts(batch.entities)
        if len(parts) > 1:
            m.split_polls.inc()
        for lo, hi in parts:
            part = batch.part(lo, hi)
            adm = store.admit(part.entities, part.partition, time.monotonic(), before_free=route.drain)
            if adm is not ADMITTED:
                part = self._admitted(part, adm, records, route.dead_letters)
            wb, st = store.push(part, time.monotonic())
            if primary:
                # Counted once pushed: a poll retried record by record is not counted twice.
                m.events.inc(len(part))
                if st.duplicates or st.resets:
                    self._count_seq_rules(st)
            try:
                route.hand_off(wb)
            except Exception as exc:
                raise PipelineError(f"handing windows to the inference thread failed: {exc}") from exc

    def _admitted(
        self, part: SampleBatch, adm: Admission, records: Sequence[ConsumedRecord], dead_letters: bool = True
    ) -> SampleBatch:
        """Count what admission did; dead-letter the refused entities' records and return the
        samples of the others."""
        m = self.metrics
        self._count_admission(adm)
        if not adm.refused:
            return part
        refused = adm.refused
        m.refused.inc(len(refused - self._refused_this_poll))
        self._refused_this_poll |= refused
        why = (
            "the disk tier is full (entities.disk_max_bytes)"
            if adm.disk_full
            else "memory is full (entities.max_entities) and entities.on_full is refuse_new"
        )
        gone = np.fromiter((e in refused for e in part.entities), bool, len(part))
        if part.offset is not None:  # this part's records of the refused, not the whole poll's
            at = set(zip(part.partition[gone].tolist(), part.offset[gone].tolist(), strict=True))
        else:
            keys = {e.encode() for e in refused}
            at = {(r.partition, r.offset) for r in records if r.key in keys}
        gone_part = part.where(~gone)
        at -= self._dead_this_poll
        if not dead_letters or not at:
            return gone_part
        self._dead_this_poll |= at
        self._dead_letter(
            [
                InvalidMessage(
                    r.topic,
                    r.partition,
                    r.offset,
                    r.key,
                    r.value,
                    list(r.headers or ()),
                    "over_capacity",
                    f"entity {r.key.decode('utf-8', 'replace')} refused: {why}",  # type: ignore[union-attr]
                )
                for r in records
                if (r.partition, r.offset) in at
            ]
        )
        return gone_part

    def _count_admission(self, adm: Admission) -> None:
        m = self.metrics
        if adm.paged_out:
            m.paged_out.inc(adm.paged_out)
        if adm.paged_in:
            m.paged_in.inc(adm.paged_in)
        if adm.thrash:
            m.thrash.inc(adm.thrash)

    def _count_seq_rules(self, st: PushStats) -> None:
        """Count the sequence rules' drops and new segments per reason; log restarts and
        outliers naming the entity (one line per reason and second; the rest are counted)."""
        m = self.metrics
        for reason, n in zip(DROPS, st.dropped, strict=True):
            if n:
                m.dropped.labels(reason).inc(n)
        for reason, n in zip(SEGMENTS, st.segments, strict=True):
            if n:
                m.resets.labels(reason).inc(n)
        for entity, reason, last, seq in st.events:
            if self._first_this_second(reason):
                what = "restarted its seq" if reason == "seq_restart" else "sent an outlier seq before"
                logger.warning(
                    "entity %s %s (seq %d after %d): a new segment from zero state (similar ones "
                    "this second are counted, not logged)",
                    entity,
                    what,
                    seq,
                    last,
                    extra={"entity": entity, "reason": reason},
                )

    def _dead_letter(self, invalid: list[InvalidMessage]) -> None:
        """Send to the dead-letter topic, count, and log once per reason and second. The sink
        truncates what would not fit; a send that still fails is the pipeline's failure."""
        try:
            self.sink.dead_letter(invalid)
        except (SinkError, KafkaError) as exc:
            raise PipelineError(f"dead letters cannot be sent: {type(exc).__name__}: {exc}") from exc
        self.metrics.dead_letters.inc(len(invalid))
        for msg in invalid:
            self.metrics.invalid.labels(msg.reason).inc()
            # One line per bad message, rate-limited per reason; never a stack trace.
            if self._first_this_second(msg.reason):
                logger.warning(
                    "invalid message %s[%d]@%d: %s %s (to %s; similar ones this second "
                    "are counted, not logged)",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    msg.reason,
                    msg.detail[:200],
                    self.dead_letter_topic,
                    extra=_about(msg),
                )

    def _first_this_second(self, reason: str) -> bool:
        now = time.monotonic()
        if now - self._logged_at.get(reason, 0.0) > 1.0:
            self._logged_at[reason] = now
            return True
        return False


def _about(msg: InvalidMessage) -> dict[str, object]:
    """The log fields of a line about one message (``logging.format: json`` shows them)."""
    entity = msg.key.decode("utf-8", "replace") if msg.key is not None else None
    return {
        "entity": entity,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "reason": msg.reason,
    }
