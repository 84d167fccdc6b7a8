"""The stand-in for upstream producers: replay real recordings or video into a topic.

Each recording (or video clip) becomes one entity; N entities are interleaved round-robin, one
message (of ``samples_per_message`` samples) per entity per turn, at a target rate or as fast as
possible. Event time is the wall-clock time a message is produced, so the service's
event -> publish latency is measured end to end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from stream_infer.formats import FORMATS
from stream_infer.formats.image import encode_jpeg

Format = str  # a format of ``stream_infer.formats.FORMATS`` that has an ``encode``

__all__ = [
    "Format",
    "Replayer",
    "Stream",
    "encode_jpeg",
    "frame_streams",
    "messages",
    "payload",
    "sensor_streams",
]


@dataclass(frozen=True, slots=True)
class Stream:
    entity: str
    values: np.ndarray  # [T, F] float32 for sensors; [T, H, W] or [T, H, W, 3] uint8 for frames
    label: str | None = None


def sensor_streams(
    values: Sequence[np.ndarray], labels: Sequence[str] | None, n_entities: int, prefix: str = "sensor"
) -> list[Stream]:
    """``n_entities`` streams cycling over the recordings (entity i replays recording i % R)."""
    r = len(values)
    return [
        Stream(
            f"{prefix}-{i:05d}",
            np.asarray(values[i % r], dtype=np.float32),
            labels[i % r] if labels is not None else None,
        )
        for i in range(n_entities)
    ]


def frame_streams(clips: Sequence[np.ndarray], n_cameras: int, prefix: str = "camera") -> list[Stream]:
    """``n_cameras`` cameras, each showing one of the clips, starting at a different frame."""
    out = []
    for i in range(n_cameras):
        clip = clips[i % len(clips)]
        shift = (i // len(clips)) * 7 % max(1, len(clip))
        out.append(Stream(f"{prefix}-{i:03d}", np.roll(clip, -shift, axis=0)))
    return out


def messages(
    streams: Sequence[Stream], fmt: Format, samples_per_message: int = 1, first_seq: int = 0
) -> Iterator[tuple[bytes, int, Any]]:
    """(key, seq of the first sample, samples) in interleaved order; payloads built at send time.

    ``first_seq`` offsets every seq, so a later replay of the same entities continues their
    sequences instead of looking like duplicates."""
    longest = max(len(s.values) for s in streams)
    step = FORMATS[fmt].samples_per_message or samples_per_message
    keys = [s.entity.encode() for s in streams]
    for start in range(0, longest, step):
        for key, s in zip(keys, streams, strict=True):
            if start < len(s.values):
                yield key, first_seq + start, s.values[start : start + step]


def payload(
    fmt: Format, seq: int, chunk: np.ndarray, ts_ms: int
) -> tuple[bytes, list[tuple[str, bytes]] | None]:
    """(value, headers) of one message holding ``chunk`` (samples from ``seq`` on) in ``fmt``."""
    encode = FORMATS[fmt].encode
    if encode is None:
        raise ValueError(f"format {fmt!r} has no encoder: the stand-in producer cannot write it")
    return encode(seq, chunk, ts_ms)


class Replayer:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        fmt: Format = "json",
        samples_per_message: int = 1,
        rate_events_s: float | None = None,
        kafka: dict[str, Any] | None = None,
    ) -> None:
        """``kafka``: more of the ``kafka`` settings (e.g. ``client``) of the producer, which is
        the service's own (``stream_infer.kafka.make_producer``)."""
        from stream_infer.config import load_settings
        from stream_infer.kafka import make_producer

        self.topic = topic
        self.fmt = fmt
        self.samples_per_message = samples_per_message
        self.rate = rate_events_s
        settings = load_settings(
            kafka={
                "bootstrap_servers": bootstrap,
                "client_id": "stream-infer-replay",
                "linger_ms": 5,
                **(kafka or {}),
            },
            topics={"input": topic},
        )
        self.producer = make_producer(settings, role="replay")

    def run(self, streams: Sequence[Stream], progress: bool = True, first_seq: int = 0) -> int:
        """Send everything; returns the number of samples (events) sent. Event time (``ts``) is
        the wall-clock time of the send; with a rate, sends are paced against a monotonic clock
        (sleeping only when more than 5 ms ahead)."""
        total = sum(len(s.values) for s in streams)
        bar = tqdm(total=total, unit="ev", disable=not progress, desc=f"replay -> {self.topic}")
        sent = 0
        t0 = time.monotonic()
        send = self.producer.produce
        topic, fmt = self.topic, self.fmt
        for key, seq, chunk in messages(streams, fmt, self.samples_per_message, first_seq):
            value, headers = payload(fmt, seq, chunk, time.time_ns() // 1_000_000)
            send(topic, key, value, headers=headers)
            sent += len(chunk)
            if progress:
                bar.update(len(chunk))
            if self.rate:
                ahead = sent / self.rate - (time.monotonic() - t0)
                if ahead > 0.005:
                    time.sleep(ahead)
        self.producer.flush_within()
        bar.close()
        return sent

    def close(self) -> None:
        self.producer.close()
