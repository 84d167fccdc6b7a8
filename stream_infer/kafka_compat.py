"""A fix for the group join of kafka-python 3.0, applied once before any consumer is made.

kafka-python 3.0 runs a JoinGroup/SyncGroup round as a task on its IO thread and waits for it
at most the ``poll`` timeout. When a rebalance is triggered by a metadata change (the input
topic appearing, or gaining partitions), nothing keeps the "rejoin needed" flag set: the leader
computes the assignment inside the task, which makes the metadata and assignment snapshots equal
again. If the poll gave up waiting just before the SyncGroup answer arrived, the next poll sees
no rejoin to do, the finished task is never collected, and the consumer keeps its old (often
empty) assignment for good: a member of the group that consumes nothing, silently.

The fix has two parts, both small:

* while a join task exists, a rejoin is needed (the Java client's KAFKA-9815 fix is the same
  idea: a rebalance once started is seen through);
* a join task that finished while nobody waited is applied, not thrown away for a fresh join
  (which would only lead to the same race again on a loaded host).

Both are guarded on the attributes they use: with another kafka-python the patch is skipped with
a warning rather than breaking the consumer.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import MemberState

logger = logging.getLogger(__name__)

_PATCHED = "_stream_infer_join_fix"


def apply() -> bool:
    """Patch ``ConsumerCoordinator`` (idempotent); False when this kafka-python does not fit."""
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
