"""W3C trace context: a ``traceparent`` header on an input message reaches the prediction of
every window that the message's sample completed (the window's last sample), through decode,
the window store, the batcher and the sink; a malformed one is ignored, never a reason to drop
a sample."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import orjson

from stream_infer.pipeline.batcher import Batcher
from stream_infer.pipeline.decode import Decoder, message_traces
from stream_infer.pipeline.sink import Sink
from stream_infer.state.slab import NumpyStateSlab
from stream_infer.state.store import EntityStore, ModelShape
from stream_infer.testing import ListProducer

W, K, F = 4, 2, 3
TP = b"00-%032x-%016x-01"


def tp(i: int) -> bytes:
    return TP % (i + 1, i + 1)


def rec(entity: str, seq: int | list[int], offset: int, trace: bytes | None = None, fmt: str = "json"):
    seqs = seq if isinstance(seq, list) else [seq]
    headers = [("traceparent", trace)] if trace is not None else []
    if fmt == "json":
        docs = [{"seq": s, "ts": 1_700_000_000_000 + s, "values": [float(s)] * F} for s in seqs]
        value = orjson.dumps(docs if isinstance(seq, list) else docs[0])
    else:
        value = np.full((len(seqs), F), 1.0, "<f4").tobytes()
        headers += [("seq", b"%d" % seqs[0]), ("ts", b"1700000000000")]
    return SimpleNamespace(
        topic="in", partition=0, offset=offset, timestamp=0, key=entity.encode(), value=value, headers=headers
    )


def test_only_well_formed_traceparents_are_kept() -> None:
    good = tp(0)
    recs = [
        rec("a", 0, 0, good),
        rec("a", 1, 1, b"00-" + b"0" * 32 + b"-" + b"1" * 16 + b"-01"),  # all-zero trace id
        rec("a", 2, 2, b"ff" + good[2:]),  # version ff is forbidden
        rec("a", 3, 3, b"garbage"),
        rec("a", 4, 4, good.upper()),
        rec("a", 5, 5),
    ]
    assert message_traces(recs) == [good, None, None, None, good, None]
    assert message_traces([rec("a", 0, 0), rec("a", 1, 1, b"nope")]) is None


def _run(records, fmt: str = "json") -> list:
    """decode -> entity store -> batcher -> sink, as the service chains them."""
    res = Decoder(fmt, (F,)).decode(records)
    assert not res.invalid, res.invalid
    store = EntityStore(16, ModelShape("m@1", W, K, (F,), (1, 4)), NumpyStateSlab(16, 1, 4), 100)
    wb, _ = store.push(res.samples, 0.0)
    batcher = Batcher(max_batch=3, max_wait_ms=0)
    batcher.add(wb)
    producer = ListProducer()
    sink = Sink(producer, "out", "dlq", "cl", "m@1", ["x", "y"])  # type: ignore[arg-type]
    while (chunk := batcher.take()) is not None:
        sink.publish(chunk, np.zeros((len(chunk), 2), np.float32))
    return producer.on("out")


def test_a_prediction_carries_the_traceparent_of_its_windows_last_sample() -> None:
    # Two entities interleaved; hops complete at seq 3, 5, 7 (W=4, K=2). Entity a's messages
    # are traced at odd offsets only, b's all; a list message holds several samples.
    records, off = [], 0
    for s in range(8):
        for e, traced in (("a", s % 2 == 1), ("b", True)):
            records.append(rec(e, s, off, tp(off) if traced else None))
            off += 1
    records.append(rec("c", list(range(8)), off, tp(off)))  # one message, three windows
    sent = _run(records)
    got = {(orjson.loads(r.value)["entity"], orjson.loads(r.value)["seq"]): dict(r.headers) for r in sent}
    assert len(got) == 9
    for (e, s), headers in got.items():
        if e == "c":
            assert headers == {"traceparent": tp(off)}
        else:
            i = 2 * s + (e == "b")  # the offset of the window's last sample
            assert headers == {"traceparent": tp(i)}, (e, s, headers)


def test_untraced_input_publishes_no_headers_and_f32_is_traced_too() -> None:
    sent = _run([rec("a", s, s) for s in range(6)])
    assert len(sent) == 2 and all(r.headers == [] for r in sent)
    sent = _run([rec("a", [0, 1, 2, 3], 0, tp(0), "f32"), rec("a", [4, 5], 1, None, "f32")], "f32")
    assert [dict(r.headers) for r in sent] == [{"traceparent": tp(0)}, {}]
