"""``python -m benchmarks``: one command per benchmark, plus ``all``. Logic lives in the modules.

The benchmarks live in the repository, not in the installed package: they need the broker
script, the training extras and the committed figures they compare with."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from benchmarks.common import out_dir

bench_app = typer.Typer(
    no_args_is_help=True,
    help="Benchmarks: tables of medians, JSON and PNG plots under docs/benchmarks/ "
    "(--quick runs under .local/bench-quick/, never over the committed figures).",
)

_QUICK = typer.Option(False, "--quick", help="Smallest sizes and one repeat (seconds, not minutes).")
_OUT = typer.Option(
    None, "--out", help="Where the JSON and PNG files go (default: docs/benchmarks; --quick: .local)."
)
NAMES = ("engine", "client", "e2e", "models", "checkpoint", "naive", "frames", "hotpath")


def _run(name: str, quick: bool, out: Path | None) -> Any:
    import importlib

    out = out_dir(out, quick)
    mod = importlib.import_module(f"benchmarks.{name}")
    t0 = time.monotonic()
    report = mod.run(quick=quick, out_dir=out)
    typer.echo(report.summary())
    typer.echo(f"wrote {report.write(out)} ({time.monotonic() - t0:.0f} s)\n")
    return report


@bench_app.command()
def engine(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """Engine only: predictions/s vs batch (torch, ONNX Runtime), carried state vs recompute,
    GFLOP/s vs the measured matmul peak."""
    _run("engine", quick, out)


@bench_app.command()
def checkpoint(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """Checkpoint cost vs entities touched (1k, 10k, 100k): snapshot, changelog per client."""
    _run("checkpoint", quick, out)


@bench_app.command()
def client(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """Kafka clients' produce-only and consume-only ceilings (kafka-python, confluent-kafka)."""
    _run("client", quick, out)


@bench_app.command()
def e2e(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """The service end to end: max events/s vs consume-only, latency at 25/50/75% of it."""
    _run("e2e", quick, out)


@bench_app.command()
def models(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """Several models on one stream: a canary's and a shadow's cost end to end; two engines on
    one inference thread vs one each."""
    _run("models", quick, out)


@bench_app.command()
def naive(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """The service vs a one-message-at-a-time consumer -> torch -> producer loop."""
    _run("naive", quick, out)


@bench_app.command()
def frames(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """64x64 JPEG video frames end to end through the frame model."""
    _run("frames", quick, out)


@bench_app.command()
def hotpath(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """Before/after of the hot-path changes, each switched off in turn, in one run."""
    _run("hotpath", quick, out)


@bench_app.command("all")
def run_all(quick: bool = _QUICK, out: Path | None = _OUT) -> None:
    """Every benchmark in turn (a few minutes; about one with --quick)."""
    t0 = time.monotonic()
    failed = []
    for name in NAMES:
        try:
            _run(name, quick, out)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            typer.echo(f"bench {name} failed: {exc!r}", err=True)
            failed.append(name)
    typer.echo(f"all benchmarks in {time.monotonic() - t0:.0f} s" + (f"; failed: {failed}" if failed else ""))
    if failed:
        raise typer.Exit(1)
