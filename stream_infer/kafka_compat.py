"""Everything stream-infer needs from kafka-python's internals, behind small public functions.

``apply()`` patches the client once, before any consumer is made: the group join fix and the
last stable offset tracking below. Both are guarded on the attributes they use: with another
kafka-python a patch is skipped with a warning rather than breaking the consumer.

**The group join.** kafka-python 3.0 runs a JoinGroup/SyncGroup round as a task on its IO
thread and waits for it at most the ``poll`` timeout. When a rebalance is triggered by a metadata
change (the input topic appearing, or gaining partitions), nothing keeps the "rejoin needed" flag
set: the leader computes the assignment inside the task, which makes the metadata and assignment
snapshots equal again. If the poll gave up waiting just before the SyncGroup answer arrived,
the next poll sees no rejoin to do, the finished task is never collected, and the consumer keeps
its old (often empty) assignment for good: a member of the group that consumes nothing, silently.

The fix has two parts, both small:

* while a join task exists, a rejoin is needed (the Java client's KAFKA-9815 fix is the same
  idea: a rebalance once started is seen through);
* a join task that finished while nobody waited is applied, not thrown away for a fresh join
  (which would only lead to the same race again on a loaded host).

**The last stable offset.** A ``read_committed`` consumer reads up to the last stable offset
(LSO): the first offset of the oldest transaction still open. A producer that dies inside a
transaction holds it there until the broker aborts the transaction (the producer's
``transaction_timeout_ms`` plus the broker's abort check), and every reader of the partition
waits. Fetch responses carry the LSO, but kafka-python keeps only the high watermark; the patch
keeps the LSO too, and ``stable_offset()`` reports it with how long it has been stuck.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import MemberState

logger = logging.getLogger(__name__)

_PATCHED = "_stream_infer_join_fix"
_LSO_PATCHED = "_stream_infer_lso_tracked"
_LSO = "_stream_infer_lso"  # on kafka-python's per-partition state: (hw, lso, stuck since)


def apply() -> bool:
    """Patch kafka-python (idempotent); False when a patch does not fit this kafka-python."""
    join_fixed = _fix_group_join()
    lso_tracked = _track_last_stable_offset()
    return join_fixed and lso_tracked


def _fix_group_join() -> bool:
    """Patch ``ConsumerCoordinator``; False when this kafka-python does not fit."""
    cls: Any = ConsumerCoordinator
    if getattr(cls, _PATCHED, False):
        return True
    needed = ("need_rejoin", "join_group_async", "_on_join_complete_async", "_enable_heartbeat")
    if not all(hasattr(cls, name) for name in needed):
        logger.warning("kafka-python's coordinator has changed; the group join fix is not applied")
        return False
    need_rejoin = cls.need_rejoin
    join_group_async = cls.join_group_async

    def patched_need_rejoin(self: Any) -> bool:
        if getattr(self, "_join_task", None) is not None:
            return True  # a join is in flight (or finished, unread): see it through
        if need_rejoin(self):
            self.rejoin_needed = True  # stays set until a join completes
            return True
        return False

    async def patched_join_group_async(self: Any, timeout_ms: Any = None) -> Any:
        task = getattr(self, "_join_task", None)
        if task is not None and task.is_done and task.exception is None:
            # The assignment arrived after the last poll stopped waiting: apply it now,
            # exactly as join_group_async would have.
            self._join_task = None
            with self._lock:
                self.rejoining = False
                self.rejoin_needed = False
                self.state = MemberState.STABLE
                self._enable_heartbeat()
            gen = self._generation
            logger.info("applying a group assignment that arrived after the poll timed out")
            await self._on_join_complete_async(gen.generation_id, gen.member_id, gen.protocol, task.value)
        return await join_group_async(self, timeout_ms)

    cls.need_rejoin = patched_need_rejoin
    cls.join_group_async = patched_join_group_async
    setattr(cls, _PATCHED, True)
    return True


class StableOffset(NamedTuple):
    """A partition's offsets from the latest fetch response that carried them."""

    high_watermark: int  # the offset the next record written gets
    last_stable_offset: int  # first offset of the oldest open transaction; the HW when none is
    stuck_s: float  # how long the LSO has stayed behind the HW without moving; 0 when it is not

    @property
    def unstable_records(self) -> int:
        """Records written past the LSO: invisible to ``read_committed`` readers until the
        transactions holding them end."""
        return max(0, self.high_watermark - self.last_stable_offset)


def stable_offset(consumer: KafkaConsumer, tp: TopicPartition) -> StableOffset | None:
    """The LSO of an assigned partition as ``consumer``'s fetches saw it (``apply()`` first).

    None until a fetch response for ``tp`` arrived, when ``tp`` is not assigned, or when this
    kafka-python does not fit the patch. The broker leaves a partition out of a fetch response
    (incremental fetch sessions) while nothing about it changes, so ``stuck_s`` runs on the
    local clock from the response that showed the LSO last move (or the gap open), not from the
    latest response. Call it from the thread that polls.
    """
    seen = getattr(_partition_state(getattr(consumer, "_subscription", None), tp), _LSO, None)
    if seen is None:
        return None
    hw, lso, since = seen
    return StableOffset(hw, lso, time.monotonic() - since if lso < hw else 0.0)


def _track_last_stable_offset() -> bool:
    """Patch ``Fetcher`` to keep each fetch response's LSO on the partition's state."""
    cls: Any = Fetcher
    if getattr(cls, _LSO_PATCHED, False):
        return True
    if not hasattr(cls, "_parse_fetched_data"):
        logger.warning("kafka-python's fetcher has changed; the last stable offset is not tracked")
        return False
    parse_fetched_data = cls._parse_fetched_data

    def patched_parse_fetched_data(self: Any, completed_fetch: Any) -> Any:
        _note_stable_offset(self, completed_fetch)
        return parse_fetched_data(self, completed_fetch)

    cls._parse_fetched_data = patched_parse_fetched_data
    setattr(cls, _LSO_PATCHED, True)
    return True


def _note_stable_offset(fetcher: Any, completed_fetch: Any) -> None:
    data = getattr(completed_fetch, "partition_data", None)
    hw = getattr(data, "high_watermark", None)
    lso = getattr(data, "last_stable_offset", None)
    if getattr(data, "error_code", None) != 0 or not isinstance(hw, int) or not isinstance(lso, int):
        return
    if hw < 0 or lso < 0:
        return  # not known to the broker (or fetch v3 and below, which has no LSO)
    tp = getattr(completed_fetch, "topic_partition", None)
    state = _partition_state(getattr(fetcher, "_subscriptions", None), tp)
    if state is None:
        return
    # Stuck since the response that showed the LSO move, or the first records appear past it.
    since = time.monotonic()
    prev: tuple[int, int, float] | None = getattr(state, _LSO, None)
    if prev is not None and prev[1] == lso and prev[1] < prev[0]:
        since = prev[2]  # records were already waiting past this same LSO
    setattr(state, _LSO, (hw, lso, since))


def _partition_state(subscriptions: Any, tp: Any) -> Any:
    """kafka-python's ``TopicPartitionState`` of an assigned partition, or None."""
    assignment = getattr(subscriptions, "assignment", None)
    return assignment.get(tp) if isinstance(assignment, dict) else None
