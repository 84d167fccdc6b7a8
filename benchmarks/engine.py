"""Engine only: predictions/s vs batch for torch and ONNX Runtime on the BasicMotions model; the
carried-state step vs recomputing the last T windows from zero state; achieved GFLOP/s vs the
machine's fp32 matmul peak measured in the same run.

    python -m benchmarks.engine [--quick]

FLOPs are counted analytically from the module's layers (convolutions, LSTM gates, head: 2 per
multiply-add) and cross-checked with ``torch.utils.flop_counter`` (which counts the
convolutions and the head but not the CPU LSTM kernel). Both engines use every core here
(``--threads``); the service itself gives ONNX Runtime half the cores (the rest poll and decode),
which the ``onnxruntime (service threads)`` row shows.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ARTIFACTS, OUT_DIR, Report, Stat, figure, interleaved, save, timed

BATCHES = (1, 4, 16, 64, 256, 1024, 4096)
QUICK_BATCHES = (1, 16, 256)
RECOMPUTE_HOPS = 9  # T: hops a stateless design would re-run per prediction


def model_flops(model: Any, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one prediction (batch 1, one LSTM step): 2 per multiply-add of every conv, the
    LSTM's four gates (input and recurrent matmuls) and the head; element-wise ops excluded."""
    import torch
    from torch import nn

    total = 0
    hooks = []

    def conv(mod: Any, inp: Any, out: Any) -> None:
        nonlocal total
        k = int(np.prod(mod.kernel_size)) * (mod.in_channels // mod.groups)
        total += 2 * k * out[0].numel()

    def linear(mod: Any, inp: Any, out: Any) -> None:
        nonlocal total
        total += 2 * mod.in_features * out.numel()

    def lstm(mod: Any, inp: Any, out: Any) -> None:
        nonlocal total
        steps_batch = inp[0].shape[0] * inp[0].shape[1]
        size_in = mod.input_size
        for _ in range(mod.num_layers):
            total += 2 * 4 * mod.hidden_size * (size_in + mod.hidden_size) * steps_batch
            size_in = mod.hidden_size

    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.LSTM):
            hooks.append(m.register_forward_hook(lstm))
    try:
        with torch.inference_mode():
            h, c = model.zero_state(1)
            model(torch.zeros(1, *input_shape), h, c)
    finally:
        for hk in hooks:
            hk.remove()
    return total


def profiler_flops(model: Any, input_shape: tuple[int, ...]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        h, c = model.zero_state(1)
        model(torch.zeros(1, *input_shape), h, c)
    return int(fc.get_total_flops())


def matmul_peak(n: int, repeats: int) -> Stat:
    """fp32 GFLOP/s of ``torch.matmul`` on two n x n matrices, all of torch's threads."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    out = torch.empty(n, n)
    t = timed(lambda: torch.matmul(a, b, out=out), repeats, warmup=2, min_time_s=0.3)
    return Stat([2 * n**3 / s / 1e9 for s in t.values])


def numpy_matmul_peak(n: int, repeats: int) -> Stat:
    """The same with numpy (OpenBLAS): the one that ``OPENBLAS_CORETYPE`` changes."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    t = timed(lambda: np.matmul(a, b, out=out), repeats, warmup=2, min_time_s=0.3)
    return Stat([2 * n**3 / s / 1e9 for s in t.values])


def run(
    quick: bool = False,
    repeats: int | None = None,
    batches: tuple[int, ...] | None = None,
    threads: int | None = None,
    out_dir: Path = OUT_DIR,
    plots: bool = True,
    artifact: Path | None = None,
) -> Report:
    import torch

    from stream_infer.backends.onnxruntime_backend import OrtEngine, default_threads
    from stream_infer.backends.parity import real_inputs
    from stream_infer.backends.torch_backend import TorchEngine
    from stream_infer.model.export import load_model
    from stream_infer.model.zoo import ensure_model

    repeats = repeats or (2 if quick else 5)
    batches = batches or (QUICK_BATCHES if quick else BATCHES)
    threads = threads or os.cpu_count() or 1
    thread_counts = sorted({threads, 1}, reverse=True)
    min_time_s = 0.05 if quick else 0.2
    n_peak = 1024 if quick else 2048
    art = artifact or ensure_model("sensor", ARTIFACTS)
    card, model = load_model(art)
    layers, hidden = card.state_shape
    flops = model_flops(model, card.input_shape)
    report = Report(
        "engine",
        {
            "model": card.model_id,
            "artifact": art.name,  # the directory name only: no machine paths in published results
            "input_shape": list(card.input_shape),
            "state_shape": list(card.state_shape),
            "batches": list(batches),
            "repeats": repeats,
            "min_time_per_repeat_s": min_time_s,
            "thread_counts": thread_counts,
            "service_ort_threads": default_threads(),
            "recompute_hops": RECOMPUTE_HOPS,
            "matmul_n": n_peak,
            "flops_per_prediction": flops,
            "flops_per_prediction_profiler": profiler_flops(model, card.input_shape),
            "quick": quick,
        },
        columns=["engine", "threads", "batch", "predictions/s", "ms/call", "GFLOP/s", "% of peak", "spread"],
    )
    report.notes.append(
        f"{flops:,} FLOPs per prediction counted analytically; torch's FlopCounterMode counts "
        f"{report.settings['flops_per_prediction_profiler']:,} (convolutions and head; it skips the CPU LSTM)"
    )
    pool = real_inputs(card, max(batches), seed=0)
    rng = np.random.default_rng(0)
    h_rand = {b: (0.5 * rng.standard_normal((layers, b, hidden))).astype(np.float32) for b in batches}
    curves: dict[str, list[tuple[int, float, float]]] = {}
    peaks: dict[int, Stat] = {}
    best: tuple[float, str] = (0.0, "")
    at = 256 if 256 in batches else max(batches)
    for nt in thread_counts:
        # One engine at a time: torch's OpenMP pool and ORT's pool both spin-wait after a call,
        # so alternating between them would measure each against the other's spinning threads.
        torch.set_num_threads(nt)
        peak_before = matmul_peak(n_peak, repeats)
        engines: list[tuple[str, Any]] = [
            ("torch", TorchEngine(art, "cpu")),
            ("onnxruntime", OrtEngine(art, "cpu", intra_op_threads=nt)),
        ]
        results: dict[str, dict[int, Stat]] = {}
        for name, eng in engines:
            time.sleep(0.2)
            calls: dict[int, Callable[[], Any]] = {
                b: partial(eng.infer, pool[:b], h_rand[b], h_rand[b]) for b in batches
            }
            results[name] = interleaved(calls, repeats, min_time_s=min_time_s)
        time.sleep(0.2)
        peak = Stat(peak_before.values + matmul_peak(n_peak, repeats).values)  # before and after
        peaks[nt] = peak
        report.rows.append(
            {
                "engine": "torch.matmul (peak)",
                "threads": nt,
                "GFLOP/s": peak.median,
                "% of peak": 100.0,
                "spread": f"{min(peak.values):.0f}..{max(peak.values):.0f}",
            }
        )
        for name, stats in results.items():
            for b, t in stats.items():
                rate = Stat([b / s for s in t.values])
                gflops = rate.median * flops / 1e9
                report.rows.append(
                    {
                        "engine": name,
                        "threads": nt,
                        "batch": b,
                        "predictions/s": rate.median,
                        "ms/call": t.median * 1000,
                        "GFLOP/s": gflops,
                        "% of peak": 100 * gflops / peak.median,
                        "spread": f"{min(rate.values):,.0f}..{max(rate.values):,.0f}",
                    }
                )
                curves.setdefault(f"{name}, {nt} thread{'s' if nt > 1 else ''}", []).append(
                    (b, rate.median, gflops)
                )
                if b == at and gflops / peak.median > best[0]:
                    best = (gflops / peak.median, f"{name}, {nt} threads")
        if nt == thread_counts[-1]:
            _carried_vs_recompute(report, model, engines, pool, card, at, repeats, min_time_s)
        for _, eng in engines:
            eng.close()
    torch.set_num_threads(threads)
    np_peak = numpy_matmul_peak(n_peak, max(1, repeats // 2))
    report.rows.append(
        {
            "engine": "numpy matmul (OpenBLAS)",
            "threads": threads,
            "GFLOP/s": np_peak.median,
            "% of peak": 100 * np_peak.median / peaks[threads].median,
            "spread": f"{min(np_peak.values):.0f}..{max(np_peak.values):.0f}",
        }
    )
    report.ratios[f"best engine GFLOP/s / matmul peak, same threads (b={at})"] = best[0]
    report.target(f"engine >= 50% of matmul peak at batch {at} ({best[1]})", best[0], 0.5)
    report.settings["matmul_peak_gflops"] = {str(k): v.as_dict() for k, v in peaks.items()}
    report.settings["numpy_matmul_peak_gflops"] = np_peak.as_dict()
    report.notes.append(
        "torch uses MKL/oneDNN here, so OPENBLAS_CORETYPE does not change its peak; it does change "
        "numpy's (OpenBLAS) matmul, shown for reference"
    )
    report.notes.append(
        "the machine is shared: spreads are min..max over repeats; an engine is compared with the "
        "matmul peak at the same thread count, measured in the same run before and after it"
    )
    if plots:
        _plot(report, curves, {k: v.median for k, v in peaks.items()}, out_dir)
    return report


def _carried_vs_recompute(
    report: Report,
    model: Any,
    engines: list[tuple[str, Any]],
    pool: np.ndarray,
    card: Any,
    b: int,
    repeats: int,
    min_time_s: float,
) -> None:
    """One carried-state step for ``b`` entities vs re-running their last T windows from zero
    state (what a stateless design does per prediction), timed in turn per engine."""
    import torch

    layers, hidden = card.state_shape
    xs = np.ascontiguousarray(
        pool[np.arange(b * RECOMPUTE_HOPS) % len(pool)].reshape(b, RECOMPUTE_HOPS, *card.input_shape)
    )
    x_last = np.ascontiguousarray(xs[:, -1])
    xs_t = [np.ascontiguousarray(xs[:, t]) for t in range(RECOMPUTE_HOPS)]
    h = np.zeros((layers, b, hidden), np.float32)
    nt = torch.get_num_threads()
    for name, eng in engines:

        def recompute(e: Any = eng) -> None:
            hh, cc = h, h
            for xt in xs_t:
                _, hh, cc = e.infer(xt, hh, cc)

        time.sleep(0.2)
        st = interleaved(
            {"step": partial(eng.infer, x_last, h, h), "recompute": recompute},
            repeats,
            min_time_s=min_time_s,
        )
        step, rec = b / st["step"].median, b / st["recompute"].median
        report.rows.append(
            {"engine": f"{name} carried step", "threads": nt, "batch": b, "predictions/s": step}
        )
        report.rows.append(
            {
                "engine": f"{name} recompute {RECOMPUTE_HOPS} hops from zero",
                "threads": nt,
                "batch": b,
                "predictions/s": rec,
            }
        )
        report.ratios[f"{name} carried step / recompute {RECOMPUTE_HOPS} hops (b={b})"] = step / rec


def _plot(
    report: Report, curves: dict[str, list[tuple[int, float, float]]], peaks: dict[int, float], out_dir: Path
) -> None:
    fig, ax, path = figure(report, "throughput", out_dir)
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("predictions / s (median)")
    ax.set_title("Engine only: BasicMotions CNN-LSTM, one LSTM step per prediction")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(report, fig, path)
    fig, ax, path = figure(report, "gflops", out_dir)
    for name, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=name)
    for nt, peak in peaks.items():
        ax.axhline(
            peak, ls="--", color="k" if nt > 1 else "grey", label=f"matmul peak, {nt} thread(s): {peak:.0f}"
        )
        ax.axhline(
            peak / 2, ls=":", color="k" if nt > 1 else "grey", label=f"50% of it (target), {nt} thread(s)"
        )
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("achieved GFLOP/s (fp32)")
    ax.set_title("Engine only: achieved GFLOP/s vs measured matmul peak")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save(report, fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 batch sizes, 2 repeats (seconds)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--artifact", type=Path, default=None, help="a model artifact (default: the BasicMotions demo model), "
        "e.g. one trained with `stream-infer train --ensemble 3`",
    )  # fmt: skip
    a = p.parse_args(argv)
    report = run(
        a.quick,
        a.repeats,
        tuple(a.batches) if a.batches else None,
        a.threads,
        a.out,
        not a.no_plots,
        a.artifact,
    )
    print(report.summary())
    print(f"wrote {report.write(a.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
