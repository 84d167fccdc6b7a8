"""Benchmarks behind ``python -m benchmarks`` (from the repository root; they are not part of the installed package): one module per benchmark, each with a ``main()``.

``engine``   predictions/s vs batch, carried state vs recompute, GFLOP/s vs the matmul peak
``client``   the Kafka clients' own produce-only and consume-only ceilings on the broker
``e2e``      the real service through the real broker: max events/s, latency at fractions of it
``naive``    the one-message-at-a-time baseline (consumer -> torch -> producer)
``frames``   64x64 JPEG video frames end to end through the frame model

Every run prints a table of medians over repeats (and ratios measured in the same run) and writes
``docs/benchmarks/<name>.json`` with the machine, the versions and the settings, plus PNG plots.
Speed targets live here, not in the test suite.
"""
