"""``python -m benchmarks [engine|client|e2e|naive|frames|hotpath|all] [--quick]``."""

from benchmarks.cli import bench_app

bench_app(prog_name="python -m benchmarks")
