"""Per-entity state, owned in one place: the entity store (admission under the slot cap, LRU and
idle-TTL eviction, reset, rewind, snapshot and restore), the slot map, the window tails and their
sequence rules, the ``[L, S, Hd]`` state slab (numpy, or torch on a CUDA device) and the
changelog codec. Nothing here talks to Kafka: restores get the changelog's latest records from
the Kafka layer (``stream_infer.kafka.compacted``)."""
